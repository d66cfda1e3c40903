"""Policy quality in the simulator: static, greedy and adaptive on the Azure conv trace.

    python bench/sim_policies.py [--trace ../shared/traces/azure_llm_2023_conv.csv]

One 8×H100 node (cluster.yaml with the CPU node type at 0), llama3-8b, loads
0.5, 0.7 and 0.9; prints mean and p99 JCT, makespan, utilization and Jain
fairness per policy, and the ratios the issue sets as targets: at load 0.9
adaptive's mean JCT >= 30% lower and p99 >= 2x lower than the better of
static and greedy, with fairness >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import platform
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from scheduler.runs import RunSpec, run_sim
from scheduler.sim.runner import RunResult

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("static", "greedy", "adaptive")


def one(spec: RunSpec) -> RunResult:
    return run_sim(spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trace", type=Path,
                        default=ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv")
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--loads", default="0.5,0.7,0.9")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    loads = [float(x) for x in args.loads.split(",")]
    specs = [RunSpec(trace=args.trace, policy=p, model=args.model, load=load,
                     limit=args.limit, cluster=ROOT / "cluster.yaml", nodes={"cpu": 0},
                     report=False)
             for load in loads for p in POLICIES]
    with ProcessPoolExecutor(min(len(specs), os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, specs))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; trace {args.trace.name}, "
          f"model {args.model}, 1 node x 8 H100 (simulated)")
    header = f"{'load':>5} {'policy':>9} {'mean JCT':>10} {'p99 JCT':>10} {'makespan':>9} " \
             f"{'util':>6} {'Jain':>6}"
    print(header)
    by_load: dict[float, dict[str, dict[str, float]]] = {}
    for spec, result in zip(specs, results, strict=True):
        s = result.summary
        by_load.setdefault(spec.load or 0.0, {})[spec.policy] = s
        print(f"{spec.load:>5} {spec.policy:>9} {s['jct_mean']:>9.4f}s {s['jct_p99']:>9.4f}s "
              f"{s['makespan']:>8.1f}s {s['device_util_mean']:>6.1%} {s['jain_fairness']:>6.3f}")
    for load, row in by_load.items():
        base_mean = min(row["static"]["jct_mean"], row["greedy"]["jct_mean"])
        base_p99 = min(row["static"]["jct_p99"], row["greedy"]["jct_p99"])
        a = row["adaptive"]
        print(f"load {load}: adaptive mean JCT {1 - a['jct_mean'] / base_mean:.0%} lower than "
              f"the better baseline (target >= 30%), p99 {base_p99 / a['jct_p99']:.1f}x lower "
              f"(target >= 2x), Jain {a['jain_fairness']:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
