"""Simulator scale: 10^6 jobs on 1,024 simulated H100s, and a 20,000-job deep queue.

    python bench/sim_scale.py [--jobs 1000000] [--nodes 128] [--policy adaptive]

Prints wall seconds, events per second, peak RSS and the policy's decision
latency (p50/p99). Targets (issue 4, on the 2-core dev machine): <= 60 s wall,
<= 2 GiB RSS, decision p99 <= 1 ms; deep queue >= 10,000 jobs/s. The trace is
generated and streamed, never stored: memory follows the jobs in flight.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import resource
import time
from collections.abc import Iterator

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from policies.base import load_policy
from scheduler.cluster import make_cluster
from scheduler.jobs import Job
from scheduler.presets import get_preset
from scheduler.pricing import ClusterCost, load_profiles
from scheduler.sim.runner import SimConfig, simulate
from scheduler.traces.synth import SynthSpec, generate


def offered_rate(spec: SynthSpec, devices: int, load: float, cost: ClusterCost,
                 device: str, sample: int = 20_000) -> float:
    """Arrival rate that makes the offered load ``load`` on ``devices`` H100s."""
    preset = get_preset("llama3-8b")
    probe = dataclasses.replace(spec, jobs=min(sample, spec.jobs))
    work = sum(cost.seconds([j], device) for j in generate(probe, preset))
    return load * devices * probe.jobs / work


def jobs_at_rate(spec: SynthSpec) -> Iterator[Job]:
    return generate(spec, get_preset("llama3-8b"))


def run(label: str, jobs: Iterator[Job], n: int, nodes: int, policy: str,
        tick: float, quantum: float) -> None:
    cluster = make_cluster(gpu_nodes=nodes, gpus_per_node=8)
    profiles = load_profiles(cluster)
    t0 = time.perf_counter()
    result = simulate(jobs, cluster, profiles, load_policy(policy), policy, None,
                      SimConfig(telemetry_interval=tick, decision_interval=quantum))
    wall = time.perf_counter() - t0
    info, s = result.run_info, result.summary
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{label}: {n:,} jobs on {cluster.gpus:,} H100s with {policy}, scheduling "
          f"quantum {quantum * 1e3:g} ms")
    print(f"  wall {wall:.1f} s, {n / wall:,.0f} jobs/s, {info['decide_calls']:,} decisions, "
          f"{info['decide_calls'] / wall:,.0f} decisions/s")
    print(f"  decision latency p50 {info['decide_ms_p50']:.3f} ms, "
          f"p99 {info['decide_ms_p99']:.3f} ms; peak RSS {rss:,.0f} MiB")
    print(f"  completed {s['jobs_completed']:,}, failed {s['jobs_failed']:,}, "
          f"mean JCT {s['jct_mean']:.4g} s, util {s['device_util_mean']:.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--nodes", type=int, default=128)
    parser.add_argument("--policy", default="adaptive")
    parser.add_argument("--load", type=float, default=0.7)
    parser.add_argument("--deep", type=int, default=20_000)
    parser.add_argument("--tick", type=float, default=1.0)
    parser.add_argument("--quanta", default="0,0.001",
                        help="scheduling quanta (s) to run the big trace with; 0 = every event")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    cluster = make_cluster(gpu_nodes=args.nodes, gpus_per_node=8)
    cost = ClusterCost(cluster, load_profiles(cluster))
    base = SynthSpec(jobs=args.jobs, seed=0, rate=1.0)
    rate = offered_rate(base, cluster.gpus, args.load, cost, cluster.devices[0].id)
    spec = dataclasses.replace(base, rate=rate)
    for quantum in (float(q) for q in args.quanta.split(",")):
        run(f"streamed trace at load {args.load} ({rate:,.0f} jobs/s offered)",
            jobs_at_rate(spec), args.jobs, args.nodes, args.policy, args.tick, quantum)
    if args.deep:
        deep = (dataclasses.replace(j, submit_time=0.0)
                for j in generate(SynthSpec(jobs=args.deep, seed=1), get_preset("llama3-8b")))
        t0 = time.perf_counter()
        run(f"deep queue: {args.deep:,} jobs arriving at once", deep, args.deep, 1,
            args.policy, args.tick, 0.0)
        print(f"  deep queue throughput {args.deep / (time.perf_counter() - t0):,.0f} jobs/s")


if __name__ == "__main__":
    main()
