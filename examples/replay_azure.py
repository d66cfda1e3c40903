"""Replay the Azure LLM conversation trace in the simulator, then live on Ray workers.

    python examples/replay_azure.py                          # 200 jobs live, ~1 min on 2 CPUs
    python examples/replay_azure.py --limit 1000 --speed 8   # a longer live slice
    python examples/replay_azure.py --sim-limit 0 --out runs/azure   # whole trace simulated

The simulator replays the trace on the cluster of ``cluster.yaml`` (one 8×H100
node and a CPU node) in seconds; the live part runs the first ``--limit`` jobs
as real PyTorch attention on two emulated GPUs of a local Ray (127.0.0.1),
with ``--model tiny`` shapes so a CPU keeps up. Each request of the trace is
two jobs: its prefill and its decode. The same ``adaptive`` policy object
decides in both.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from scheduler import load_trace, run, simulate
from scheduler.report_html import write_html_report

REPO = Path(__file__).resolve().parents[1]
AZURE = REPO.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--trace", type=Path, default=AZURE, help="the Azure conv trace CSV")
parser.add_argument("--model", default="tiny", help="model preset that shapes the requests")
parser.add_argument("--policy", default="adaptive")
parser.add_argument("--sim-limit", type=int, default=20000,
                    help="jobs to simulate (0: the whole trace)")
parser.add_argument("--limit", type=int, default=200, help="jobs to replay live")
parser.add_argument("--speed", type=float, default=4.0,
                    help="replay the live part this many times faster than the trace")
parser.add_argument("--out", type=Path, help="keep the runs and the report here")
args = parser.parse_args()
out = args.out or Path(tempfile.mkdtemp(prefix="attnsched-azure-"))

trace = load_trace(args.trace, model=args.model, limit=args.sim_limit or None)
print(f"{trace}: {trace.summary['requests']:,} requests, {trace.summary['span_s']:,.0f} s")

sim = simulate(trace, args.policy, cluster=REPO / "cluster.yaml", limit=args.sim_limit or None,
               out=out / "sim")
live = run(args.trace, args.policy, model=args.model, limit=args.limit, emulate_gpus=2,
           speed=args.speed, num_cpus=2, out=out / "live")
for label, result in (("simulated", sim), ("live", live)):
    s = result.summary
    print(f"{label:9}: {s['jobs_completed']:,}/{s['jobs_total']:,} jobs, mean JCT "
          f"{s['jct_mean']:.3g}s, p99 {s['jct_p99']:.3g}s, queue delay "
          f"{s['queue_delay_mean']:.3g}s, devices {s['device_util_mean']:.0%} busy")

page, _ = write_html_report([out / "sim", out / "live"], out / "report")
print(f"report: {page}")
