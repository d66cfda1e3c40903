"""Live throughput on a user's path: ``attnsched run`` beside one Ray task per job and beside
no scheduler at all, in one run on one machine.

    python bench/live_vs_naive.py [--jobs 2000] [--speeds 1000,10] [--repeats 1]
        [--policy adaptive] [--emulate-gpus 0]

The trace is what ``attnsched trace generate --model tiny`` makes by default
(prefill, decode and training steps of the tiny preset). Three ways to run
its jobs, each timed from the first submission to the last result, warm:

- **ceiling**: no scheduler. The jobs are dealt to one process per core
  (longest first to the least loaded, by FLOPs, all at once), each a bare
  torch loop with one thread doing the work by hand.
- **naive**: one ``@ray.remote(num_cpus=1)`` task per job doing the same work
  by hand, submitted at the job's arrival (the trace's time / ``--speed``), on
  a local Ray with one CPU per core.
- **attnsched**: ``attnsched run TRACE --policy P --speed S`` as a user types
  it (default options: one single-threaded CPU worker per core), its figures
  read from run.json and summary.json (the replay's wall time, not Ray's start).

"By hand" is what a user writes without attnsched: a prompt is one causal
SDPA call per layer, a decode request one call per generated token over a
growing cache, a training step a forward and a backward pass per layer.
Prints jobs per wall second, mean JCT in wall seconds and the ratios. Issue 26's
targets at --speed 1000 on the 2-core machine: >= 3x the naive jobs/s and
>= 50% of the ceiling (next: >= 5x and >= 70%).
"""

from __future__ import annotations

import argparse
import heapq
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from scheduler.flops import total_flops as job_flops
from scheduler.jobs import AttentionJob, JobKind
from scheduler.traces import open_trace

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def by_hand(job: AttentionJob) -> None:
    """One job's attention as a user writes it: plain SDPA calls, one thread."""
    import torch
    import torch.nn.functional as F

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        job.dtype.value]
    shape = (job.batch, job.heads, job.q_len, job.head_dim)
    kv = (job.batch, job.kv_heads, job.kv_len, job.head_dim)
    if job.kind is JobKind.DECODE:
        for _ in range(job.layers):
            k = torch.randn(job.batch, job.kv_heads, job.kv_len + job.steps - 1, job.head_dim,
                            dtype=dtype)
            v = torch.randn_like(k)
            for s in range(job.steps):  # token s sees the prompt and the s tokens before it
                q = torch.randn(job.batch, job.heads, 1, job.head_dim, dtype=dtype)
                n = job.kv_len + s
                F.scaled_dot_product_attention(q, k[:, :, :n], v[:, :, :n], enable_gqa=True)
        return
    train = job.kind is JobKind.TRAIN
    for _ in range(job.layers * (job.steps if train else 1)):
        q = torch.randn(shape, dtype=dtype, requires_grad=train)
        k, v = torch.randn(kv, dtype=dtype), torch.randn(kv, dtype=dtype)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=job.causal, enable_gqa=True)
        if train:
            out.float().sum().backward()  # type: ignore[no-untyped-call]


def _share(jobs: list[AttentionJob]) -> float:
    import torch

    torch.set_num_threads(1)
    for job in jobs:
        by_hand(job)
    return time.time()


def _warm(_: int) -> int:
    import torch

    torch.set_num_threads(1)
    torch.nn.functional.scaled_dot_product_attention(*(torch.randn(1, 2, 8, 16),) * 3)
    return os.getpid()


def ceiling(jobs: list[AttentionJob]) -> dict[str, float]:
    """No scheduler: longest-first to the least-loaded core, each core a bare loop."""
    shares: list[list[AttentionJob]] = [[] for _ in range(CORES)]
    load = [(0.0, i) for i in range(CORES)]
    for job in sorted(jobs, key=job_flops, reverse=True):
        work, i = heapq.heappop(load)
        shares[i].append(job)
        heapq.heappush(load, (work + job_flops(job), i))
    with multiprocessing.get_context("spawn").Pool(CORES) as pool:
        pool.map(_warm, range(CORES), chunksize=1)
        t0 = time.time()
        ends = pool.map(_share, shares, chunksize=1)
    return {"jobs_per_s": len(jobs) / (max(ends) - t0), "jct_mean": float("nan")}


def naive(jobs: list[AttentionJob], speed: float) -> dict[str, float]:
    """One Ray task per job, each submitted at its arrival."""
    import ray

    ray.init(address="local", num_cpus=CORES, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        task = ray.remote(num_cpus=1)(_task)
        ray.get([task.remote(jobs[0]) for _ in range(CORES)])  # warm the task workers
        first = min(j.submit_time for j in jobs)
        refs, arrivals = [], []
        t0 = time.time()
        for job in sorted(jobs, key=lambda j: j.submit_time):
            at = t0 + (job.submit_time - first) / speed
            time.sleep(max(0.0, at - time.time()))
            refs.append(task.remote(job))
            arrivals.append(at)
        ends = ray.get(refs)
    finally:
        ray.shutdown()
    return {"jobs_per_s": len(jobs) / (max(ends) - t0),
            "jct_mean": statistics.mean(e - a for e, a in zip(ends, arrivals, strict=True))}


def _task(job: AttentionJob) -> float:
    import torch

    torch.set_num_threads(1)
    by_hand(job)
    return time.time()


def attnsched(trace: Path, out: Path, speed: float, policy: str, emulate: int
              ) -> dict[str, float]:
    """``attnsched run`` as a user types it; the replay's own wall time."""
    exe = Path(sys.executable).with_name("attnsched")
    cmd = [str(exe), "run", str(trace), "--policy", policy, "--speed", f"{speed:g}",
           "--out", str(out), "--emulate-gpus", str(emulate)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    info = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["jobs_completed"] == summary["jobs_total"], summary
    return {"jobs_per_s": summary["jobs_total"] / info["wall_seconds"],
            "jct_mean": summary["jct_mean"] / speed, "driver_cpu": info["driver_cpu_share"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--speeds", default="1000,10")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--policy", default="adaptive")
    parser.add_argument("--emulate-gpus", type=int, default=0)
    args = parser.parse_args()
    speeds = [float(s) for s in args.speeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "t.jsonl"
        exe = Path(sys.executable).with_name("attnsched")
        subprocess.run([str(exe), "trace", "generate", "-o", str(trace), "--jobs",
                        str(args.jobs), "--seed", "11", "--model", "tiny"], check=True,
                       stdout=subprocess.DEVNULL)
        jobs = [j for j in open_trace(trace, "auto", None, 1.0).jobs()
                if isinstance(j, AttentionJob)]
        kinds = {k: sum(j.kind is k for j in jobs) for k in JobKind}
        span = max(j.submit_time for j in jobs) - min(j.submit_time for j in jobs)
        print(f"machine: {platform.machine()}, {CORES} cores, {platform.python_version()}; "
              f"{len(jobs)} jobs ({', '.join(f'{k.value} {n}' for k, n in kinds.items() if n)}"
              f"), {sum(map(job_flops, jobs)) / 1e12:.2f} TFLOP")
        for r in range(args.repeats):
            top = ceiling(jobs)
            print(f"[{r + 1}] ceiling (a bare loop per core, all at once): "
                  f"{top['jobs_per_s']:7.1f} jobs/s")
            for speed in speeds:
                base = naive(jobs, speed)
                ours = attnsched(trace, Path(tmp) / f"run-{r}-{speed:g}", speed, args.policy,
                                 args.emulate_gpus)
                # Only a trace that arrives at once can run at the ceiling's rate.
                at_once = span / speed < 1.0
                print(f"[{r + 1}] --speed {speed:g}: one Ray task per job "
                      f"{base['jobs_per_s']:7.1f} jobs/s, JCT {base['jct_mean']:6.2f} s | "
                      f"attnsched {ours['jobs_per_s']:7.1f} jobs/s, JCT "
                      f"{ours['jct_mean']:6.2f} s (driver CPU {ours['driver_cpu']:.0%}) | "
                      f"{ours['jobs_per_s'] / base['jobs_per_s']:.2f}x naive"
                      + (f", {ours['jobs_per_s'] / top['jobs_per_s']:.0%} of the ceiling"
                         if at_once else "")
                      + f", JCT {base['jct_mean'] / ours['jct_mean']:.2f}x lower")


if __name__ == "__main__":
    main()
