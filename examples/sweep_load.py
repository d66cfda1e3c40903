"""Sweep the offered load and plot each policy's mean JCT: where does a policy break?

    python examples/sweep_load.py                                    # Azure conv, 2,000 jobs
    python examples/sweep_load.py --loads 0.3,0.6,0.9,1.2 --limit 0 --out runs/sweep

``--load X`` rescales the trace's arrivals so the cluster of ``cluster.yaml``
would be X busy (1.0: every device busy all the time), so the same jobs are
replayed from relaxed to overloaded. Everything runs in the simulator; the
result is ``sweep.csv`` and ``mean_jct.png`` (log scale: JCTs grow by orders of
magnitude past saturation).
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # after choosing the backend

from scheduler import load_trace, simulate

REPO = Path(__file__).resolve().parents[1]
AZURE = REPO.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--trace", type=Path, default=AZURE)
parser.add_argument("--model", default="llama3-8b", help="model preset for token traces")
parser.add_argument("--policies", default="static,greedy,adaptive")
parser.add_argument("--loads", default="0.3,0.5,0.7,0.9,1.1", help="offered loads to replay")
parser.add_argument("--limit", type=int, default=2000, help="jobs per run (0: the whole trace)")
parser.add_argument("--out", type=Path, help="write sweep.csv and mean_jct.png here")
args = parser.parse_args()
out = args.out or Path(tempfile.mkdtemp(prefix="attnsched-sweep-"))
out.mkdir(parents=True, exist_ok=True)
policies = [p.strip() for p in args.policies.split(",") if p.strip()]
loads = [float(x) for x in args.loads.split(",")]

trace = load_trace(args.trace, model=args.model, limit=args.limit or None)
rows = []
for policy in policies:
    for load in loads:
        s = simulate(trace, policy, cluster=REPO / "cluster.yaml", load=load,
                     limit=args.limit or None).summary
        rows.append({"policy": policy, "load": load, "jct_mean": s["jct_mean"],
                     "jct_p99": s["jct_p99"], "jobs_completed": s["jobs_completed"],
                     "jobs_total": s["jobs_total"]})
        print(f"{policy:9} load {load:4.2f}: mean JCT {s['jct_mean']:.4g}s, "
              f"p99 {s['jct_p99']:.4g}s")

with (out / "sweep.csv").open("w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)

fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
for policy in policies:
    mine = [r for r in rows if r["policy"] == policy]
    ax.plot([r["load"] for r in mine], [r["jct_mean"] for r in mine], marker="o", label=policy)
ax.set(xlabel="offered load", ylabel="mean JCT (s)", yscale="log",
       title=f"{trace.path.name}: {trace.summary['jobs']:,} jobs, {args.model}")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(out / "mean_jct.png")
print(f"plot: {out / 'mean_jct.png'} (table: {out / 'sweep.csv'})")
