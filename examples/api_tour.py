"""A tour of the Python API, cell by cell (``# %%`` cells open as a notebook in VS Code/Jupytext).

    python examples/api_tour.py                   # a generated trace, simulated
    python examples/api_tour.py --live            # ... and replayed live on a local Ray
    python examples/api_tour.py --trace ../shared/traces/azure_llm_2023_conv.csv --model tiny

Everything here is what the CLI does (``simulate``, ``compare``, ``run``,
``report``); the functions return the figures and the per-job tables instead
of printing them, so the next cell can work on them.
"""

# %%
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from scheduler import compare, load_trace, run, simulate
from scheduler.presets import get_preset
from scheduler.report_html import write_html_report
from scheduler.traces import write_trace
from scheduler.traces.synth import SynthSpec, generate

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--trace", type=Path, help="replay this trace (default: generate one)")
parser.add_argument("--model", default="tiny", help="model preset for token traces")
parser.add_argument("--jobs", type=int, default=300, help="jobs to replay")
parser.add_argument("--live", action="store_true", help="also replay 30 jobs live on Ray")
parser.add_argument("--out", type=Path, help="keep the runs and the report here")
args = parser.parse_args()
out = args.out or Path(tempfile.mkdtemp(prefix="attnsched-tour-"))

# %% A trace: generated (same seed, same jobs) unless one was given.
trace_path = args.trace
if trace_path is None:
    trace_path = out / "trace.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    write_trace(generate(SynthSpec(jobs=args.jobs, seed=1, rate=20.0), get_preset("tiny")),
                trace_path)
trace = load_trace(trace_path, model=args.model, limit=args.jobs)
print(f"{trace}: {trace.summary['kinds']}, tenants {sorted(trace.summary['tenants'])}")

# %% One policy in the simulator; .summary is summary.json, .jobs is jobs.parquet.
# load=0.8 rescales arrivals so the cluster is 80% busy: policies differ under load.
adaptive = simulate(trace, "adaptive", limit=args.jobs, load=0.8, out=out / "adaptive")
s = adaptive.summary
print(f"adaptive: {s['jobs_completed']}/{s['jobs_total']} jobs, mean JCT {s['jct_mean']:.3g}s, "
      f"p99 {s['jct_p99']:.3g}s, devices {s['device_util_mean']:.0%} busy")

# %% The per-job table: pyarrow here; adaptive.jobs.to_pandas() where pandas is installed.
import pyarrow.compute as pc  # noqa: E402  (a notebook imports where it needs)

by_kind = adaptive.jobs.group_by("kind").aggregate([("jct", "mean"), ("id", "count")])
for row in by_kind.sort_by("kind").to_pylist():
    print(f"  {row['kind']:8} {row['id_count']:5} jobs, mean JCT {row['jct_mean']:.3g}s")
print(f"  slowest job: {pc.max(adaptive.jobs['jct']).as_py():.3g}s")

# %% Three policies on the same jobs, in parallel processes.
policies = compare(trace, ["static", "greedy", "adaptive"], limit=args.jobs, load=0.8,
                   out=out / "compare")
for name, result in policies.items():  # a mapping: policy -> its result
    summary = result.summary
    print(f"{name:9} mean JCT {summary['jct_mean']:.3g}s  p99 {summary['jct_p99']:.3g}s  "
          f"makespan {summary['makespan']:.3g}s")
# .summary is a table, a row per policy (.to_pandas() where pandas is installed).
table = policies.summary.select(["policy", "jct_mean"]).sort_by("jct_mean")
print(f"lowest mean JCT: {table['policy'][0].as_py()}")

# %% Live: the same policy code on Ray workers running real PyTorch attention.
runs = [out / "compare"]
if args.live:
    live = run(trace, "adaptive", limit=30, emulate_gpus=2, speed=4, num_cpus=2,
               out=out / "live")
    print(f"live: {live.summary['jobs_completed']} jobs, mean JCT "
          f"{live.summary['jct_mean']:.3g}s")
    runs.append(out / "live")

# %% One HTML page comparing them (what `attnsched report` writes).
page, markdown = write_html_report(runs, out / "report")
print(f"report: {page}")
