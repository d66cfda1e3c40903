"""Peak memory of `attnsched simulate --out` (run, outputs and report) at 10^5 and 10^6 jobs.

    python bench/memory_scale.py [--jobs 100000 1000000] [--keep DIR]

Each size runs in a fresh subprocess through the CLI's own entry point
(``scheduler.cli.main.main``, what ``attnsched`` calls), so the figure includes
the trace pass that counts jobs, the ``--load`` scan, the run, the output files
and report.md with its plots. Printed per size: wall seconds, the process's
peak RSS (``ru_maxrss``), the peak before the report (``peak_rss_mib`` in
run.json) and the ratio of each size's peak to the first size's. Target (issue
20): the 10^6 run within 1.5x of the 10^5 run.

The workload: ``attnsched trace generate --jobs N --seed 1 --model llama3-8b``
(the default mix of prefill, decode and training, 4 tenants; lengths drawn
per job, so almost every job has a shape of its own and no memo can hide
growth), replayed with ``--policy fifo --load 0.5`` on the repository's
``cluster.yaml`` (9 devices). fifo and a half-loaded cluster keep the queue
short, so what is in flight stays the same at both sizes and any growth is the
trace's; fifo's decisions are cheap, so 10^6 jobs finish in a few minutes on a
2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

REPO = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys
from scheduler.cli.main import main
code = main(sys.argv[1:])
print("PEAK_KIB=" + json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
sys.exit(code)
"""


def attnsched(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh interpreter; fails loudly on a non-zero exit."""
    result = subprocess.run([sys.executable, "-c", CHILD, *args], check=False, cwd=REPO,
                            text=True, capture_output=True, env=os.environ.copy())
    if result.returncode != 0:
        raise SystemExit(f"attnsched {' '.join(args)} exited {result.returncode}:\n"
                         f"{result.stderr[-2000:]}")
    return result


def measure(jobs: int, work: Path) -> dict[str, float]:
    trace, out = work / f"trace_{jobs}.jsonl", work / f"run_{jobs}"
    attnsched("trace", "generate", "-o", str(trace), "--jobs", str(jobs), "--seed", "1",
              "--model", "llama3-8b")
    t0 = time.perf_counter()
    result = attnsched("simulate", str(trace), "--policy", "fifo", "--load", "0.5",
                       "--cluster", str(REPO / "cluster.yaml"), "--out", str(out))
    wall = time.perf_counter() - t0
    peak = next(int(line.split("=", 1)[1]) for line in result.stdout.splitlines()
                if line.startswith("PEAK_KIB="))
    run = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["jobs_completed"] == jobs, summary
    return {"jobs": jobs, "wall_s": wall, "peak_mib": peak / 1024,
            "run_peak_mib": run["peak_rss_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--keep", type=Path, default=None,
                        help="Write traces and runs here (default: a temporary folder).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = [measure(n, work) for n in args.jobs]
    base = rows[0]["peak_mib"]
    print("| jobs | wall | peak RSS, run + report | peak RSS before the report | vs first |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['jobs']:,} | {r['wall_s']:.0f} s | {r['peak_mib']:,.0f} MiB | "
              f"{r['run_peak_mib']:,.0f} MiB | {r['peak_mib'] / base:.2f}x |")


if __name__ == "__main__":
    main()
