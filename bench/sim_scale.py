"""Simulator scale on the path a user takes: ``attnsched simulate``, beside a bare loop.

    python bench/sim_scale.py [--jobs 1000000] [--deep 20000] [--growth 100000,200000,400000]

Every case is a trace made by ``attnsched trace generate`` and replayed by
``attnsched simulate`` in a fresh process, from a folder outside the checkout,
on the default options (adaptive, live costs on, a decision after every
instant) unless the case names others:

- deep queues: every job within a few milliseconds (``--rate 1e7``), on the
  default cluster (8 H100s and a CPU), with the trace ``trace generate``
  makes by default and with llama3-8b;
- growth: llama3-8b streamed at load 0.7 on 1,024 H100s, doubling the jobs;
- the big run: ``--jobs`` llama3-8b jobs streamed the same way.

Each prints its jobs/s (simulation time from ``run.json``, and the whole
command), decision p50/p99 and peak RSS, and its rate over the rate of a bare
heap-and-FIFO event loop measured on the same machine in the same run: the
ratio is the figure to record, since this VM's speed drifts. Targets (issue
22): the big run in <= 30 s, linear growth (each doubling within 10% of 2x),
deep queues >= 10,000 jobs/s, decision p99 <= 1 ms with 10^4 jobs queued.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ROOT = Path(__file__).resolve().parent.parent
CLI = (sys.executable, "-m", "scheduler.cli")
BIG_CLUSTER = ("--nodes", "gpu_h100=128", "--nodes", "cpu=0")  # 1,024 H100s


def attnsched(*args: str, cwd: Path) -> float:
    """Run one ``attnsched`` command as a user would; its wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run([*CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode not in (0, 3):
        raise SystemExit(f"attnsched {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
    return time.perf_counter() - t0


def bare_loop(jobs: int, devices: int = 1024, service: float = 1.0) -> float:
    """Jobs/s of the least a discrete-event scheduler does: a heap of arrivals and
    completions and a FIFO queue onto free devices, no policy, no cost model."""
    events = [(i * service / (0.7 * devices), i, 0) for i in range(jobs)]
    heapq.heapify(events)
    queue: deque[int] = deque()
    free = devices
    seq = jobs
    t0 = time.perf_counter()
    while events:
        now, job, kind = heapq.heappop(events)
        if kind == 1:
            free += 1
        else:
            queue.append(job)
        while free and queue:
            free -= 1
            seq += 1
            heapq.heappush(events, (now + service, seq, 1))
            queue.popleft()
    return jobs / (time.perf_counter() - t0)


def case(label: str, work: Path, generate: list[str], simulate: list[str], jobs: int
         ) -> dict[str, float]:
    """Generate a trace, simulate it through the CLI, print and return its figures; the
    bare loop is timed right before, so both see the machine as it is then."""
    trace, out = work / "trace.parquet", work / "run"
    attnsched("trace", "generate", "-o", str(trace), "--jobs", str(jobs), "--seed", "8",
              *generate, cwd=work)
    bare = bare_loop(200_000)
    whole = attnsched("simulate", str(trace), "--cluster", str(ROOT / "cluster.yaml"),
                      "--out", str(out), *simulate, cwd=work)
    info = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    sim = info["wall_seconds"]
    rate = jobs / sim
    print(f"{label}: {jobs:,} jobs, `simulate {' '.join(simulate) or '(defaults)'}`")
    print(f"  simulation {sim:.2f} s = {rate:,.0f} jobs/s, {rate / bare:.4f} x the bare loop's "
          f"{bare:,.0f}; "
          f"whole command {whole:.2f} s = {jobs / whole:,.0f} jobs/s")
    print(f"  decisions {info['decide_calls']:,}, p50 {info['decide_ms_p50']:.3f} ms, "
          f"p99 {info['decide_ms_p99']:.3f} ms; peak RSS {info['peak_rss_mib']:,.0f} MiB; "
          f"completed {summary['jobs_completed']:,}, device util "
          f"{summary['device_util_mean']:.1%}")
    return {"sim": sim, "whole": whole, "rate": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000, help="the big run (0: skip)")
    parser.add_argument("--deep", type=int, default=20_000, help="deep queues (0: skip)")
    parser.add_argument("--growth", default="100000,200000,400000",
                        help="job counts of the growth runs (empty: skip)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="attnsched-scale-") as tmp:
        work = Path(tmp)
        if args.deep:
            for label, model in (("deep queue, default trace", []),
                                 ("deep queue, llama3-8b", ["--model", "llama3-8b"])):
                case(label, work, ["--rate", "1e7", *model], [], args.deep)
        streamed = (["--model", "llama3-8b"], ["--load", "0.7", *BIG_CLUSTER])
        sizes = [int(n) for n in args.growth.split(",") if n]
        seconds = [case("growth", work, *streamed, n)["sim"] for n in sizes]
        for i in range(1, len(sizes)):
            (a, ta), (b, tb) = (sizes[i - 1], seconds[i - 1]), (sizes[i], seconds[i])
            print(f"  {a:,} -> {b:,} jobs: time x{tb / ta:.2f} for jobs x{b / a:.2f}")
        if args.jobs:
            big = case("the big run", work, *streamed, args.jobs)
            print(f"  {big['sim']:.1f} s against the 30 s target")


if __name__ == "__main__":
    main()
