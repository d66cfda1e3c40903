"""Achieved TFLOP/s on one device: the worker path vs the best SDPA calls vs naive Ray.

    python bench/gpu_efficiency.py [--device cpu|cuda] [--jobs N] [--cpus 2]

One mixed trace (prefill jobs, causal and not, lengths from a few buckets,
GQA heads) runs four ways on one device:

* best: one SDPA call per shape group, inputs made beforehand, no Ray: the
  upper bound for these shapes;
* worker: an ``AttentionWorker`` called directly with packed batches (jobs
  sharing head size, dtype and causality, as the packing rule allows); it
  makes its inputs and lets the kernels choose how lengths share a call;
* worker through Ray: the same actor behind ``ray.remote``, as the executor
  creates it (but holding half the GPU, so naive tasks fit beside it between
  rounds), batches submitted back to back;
* naive: one Ray task per job (a sample of the trace on a GPU, where such
  tasks start slowly).

Each path runs ``--rounds`` times, interleaved, and its fastest round counts:
on a shared machine other work only adds time.

FLOPs come from ``scheduler.costmodel.total_flops``, the scheduler's own
count, so these rates agree with its reports. Targets on an H100: worker
>= 85% of best and >= 20x naive. Sizes follow the device: a CPU run takes
a minute or two on two cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray
import torch

from scheduler.costmodel import total_flops
from scheduler.jobs import AttentionJob, DType, JobKind
from workers import kernels
from workers.worker import AttentionWorker


@dataclass(frozen=True)
class Sizes:
    """The trace for one device type: shapes, lengths and how many jobs."""

    jobs: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype: str
    lengths: tuple[int, ...]
    weights: tuple[float, ...]  # share of jobs per length: short prompts are common
    batch: int  # jobs per worker batch
    naive_jobs: int  # jobs the naive path runs (a sample of the trace)


SIZES = {
    "cpu": Sizes(1200, 8, 2, 64, "fp32", (32, 64, 128, 256, 512),
                 (0.3, 0.25, 0.2, 0.15, 0.1), 64, 1200),
    "cuda": Sizes(2048, 32, 8, 128, "bf16", (128, 256, 512, 1024, 2048, 4096),
                  (0.25, 0.25, 0.2, 0.15, 0.1, 0.05), 256, 48),
}


def mixed_trace(sizes: Sizes, seed: int = 0) -> list[AttentionJob]:
    rng = random.Random(seed)
    jobs = []
    for i in range(sizes.jobs):
        length = rng.choices(sizes.lengths, sizes.weights)[0]
        jobs.append(AttentionJob(id=f"j{i}", submit_time=0.0, kind=JobKind.PREFILL, batch=1,
                                 heads=sizes.heads, kv_heads=sizes.kv_heads, q_len=length,
                                 kv_len=length, head_dim=sizes.head_dim, dtype=DType(sizes.dtype),
                                 causal=rng.random() < 0.5))
    return jobs


def batches(jobs: Sequence[AttentionJob], size: int) -> list[list[AttentionJob]]:
    """Packable batches: the packing rule keeps causal and non-causal jobs apart."""
    out: list[list[AttentionJob]] = []
    for causal in (False, True):
        same = [j for j in jobs if j.causal is causal]
        out += [same[i:i + size] for i in range(0, len(same), size)]
    return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_calls(jobs: Sequence[AttentionJob], device: str, repeats: int = 1) -> float:
    """Seconds of one SDPA call per shape group, inputs made outside the clock."""
    groups: dict[tuple[int, int, bool], int] = {}
    for j in jobs:
        key = (j.q_len, j.kv_len, j.causal)
        groups[key] = groups.get(key, 0) + j.batch
    head, total = jobs[0], 0.0
    dtype = kernels.DTYPES[head.dtype.value]
    for (q_len, kv_len, causal), rows in groups.items():
        q = torch.randn(rows, head.heads, q_len, head.head_dim, device=device, dtype=dtype)
        k = torch.randn(rows, head.kv_heads, kv_len, head.head_dim, device=device, dtype=dtype)
        v = torch.randn_like(k)
        kernels.attention(q, k, v, causal)  # warm-up: picks the backend, loads kernels
        best = float("inf")
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            kernels.attention(q, k, v, causal)
            sync(device)
            best = min(best, time.perf_counter() - start)
        total += best
        del q, k, v
    return total


def run_worker(submit: Callable[[str, list[AttentionJob], float], Any],
               work: Sequence[list[AttentionJob]], through_ray: bool = False
               ) -> tuple[float, set[str]]:
    """Seconds for every batch back to back, and the backends the worker reported."""
    start = time.perf_counter()
    results = [submit(f"b{i}", batch, sum(map(total_flops, batch)))
               for i, batch in enumerate(work)]
    if through_ray:
        results = ray.get(results)
    seconds = time.perf_counter() - start
    failed = [r for r in results if r.error]
    if failed:
        raise SystemExit(f"worker batches failed: {failed[0]}")
    return seconds, {r.backend for r in results}


@ray.remote
def one_job(job: AttentionJob, device: str) -> str:
    """What a user writes by hand: make the tensors, run SDPA, return."""
    import torch.nn.functional as F

    if device == "cpu":
        torch.set_num_threads(1)
    dtype = kernels.DTYPES[job.dtype.value]
    q = torch.randn(job.batch, job.heads, job.q_len, job.head_dim, device=device, dtype=dtype)
    k = torch.randn(job.batch, job.kv_heads, job.kv_len, job.head_dim, device=device,
                    dtype=dtype)
    v = torch.randn_like(k)
    F.scaled_dot_product_attention(q, k, v, is_causal=job.causal, enable_gqa=True)
    sync(device)
    return job.id


def tflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12


def load() -> str:
    return "n/a" if not hasattr(os, "getloadavg") else f"{os.getloadavg()[0]:.1f}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--jobs", type=int, help="trace length (default by device)")
    parser.add_argument("--naive-jobs", type=int, help="jobs the naive path runs")
    parser.add_argument("--cpus", type=int, default=2,
                        help="CPU cores every path may use (threads, Ray CPUs)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="each path runs this many times, interleaved; the fastest counts")
    return parser.parse_args()


def start_paths(device: str, cpus: int, warm: list[AttentionJob]
                ) -> tuple[AttentionWorker, Any, Any]:
    """The direct worker, the worker actor and the naive task, each run once on ``warm``."""
    kind = "gpu" if device == "cuda" else "cpu"
    worker = AttentionWorker("dev0", kind, cpus=cpus)
    # The actor and the naive tasks share the device but never run at once:
    # half the GPU (Ray hands out fractions of one GPU id) or the CPUs twice
    # over, so neither waits for the other's reservation.
    ray.init(address="local", num_cpus=2 * cpus, num_gpus=1 if device == "cuda" else 0,
             include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    options = {"num_gpus": 0.5, "num_cpus": 0} if device == "cuda" else {"num_cpus": cpus}
    actor: Any = ray.remote(AttentionWorker).options(**options).remote("dev0", kind, cpus)
    task = one_job.options(num_gpus=0.125, num_cpus=0) if device == "cuda" else \
        one_job.options(num_cpus=1)
    worker.run("warm", warm, 0.0, 0.0)
    ray.get(actor.run.remote("warm", warm, 0.0, 0.0))
    ray.get([task.remote(j, device) for j in warm])
    return worker, actor, task


def fastest_rounds(rounds: int, device: str, jobs: Sequence[AttentionJob],
                   work: Sequence[list[AttentionJob]], sample: Sequence[AttentionJob],
                   paths: tuple[AttentionWorker, Any, Any]
                   ) -> tuple[tuple[float, float, float, float], set[str]]:
    """Each path's fastest seconds over ``rounds`` interleaved rounds (best, worker direct,
    worker through Ray, naive), and the backends the direct worker reported last."""
    worker, actor, task = paths
    best_s = direct_s = ray_s = naive_s = float("inf")
    backends: set[str] = set()
    for _ in range(rounds):
        best_s = min(best_s, best_calls(jobs, device, repeats=1))
        took, backends = run_worker(lambda b, js, f: worker.run(b, js, 0.0, f), work)
        direct_s = min(direct_s, took)
        took, _ = run_worker(lambda b, js, f: actor.run.remote(b, js, 0.0, f), work,
                             through_ray=True)
        ray_s = min(ray_s, took)
        start = time.perf_counter()
        ray.get([task.remote(j, device) for j in sample])
        naive_s = min(naive_s, time.perf_counter() - start)
    return (best_s, direct_s, ray_s, naive_s), backends


def print_rates(rounds: int, flops: float, naive_flops: float, samples: int,
                seconds: tuple[float, float, float, float], backends: set[str]) -> None:
    """Each path's TFLOP/s and the worker's ratios to best and naive, against the targets."""
    best_s, direct_s, ray_s, naive_s = seconds
    best, direct = tflops(flops, best_s), tflops(flops, direct_s)
    via_ray, naive = tflops(flops, ray_s), tflops(naive_flops, naive_s)
    print(f"fastest of {rounds} interleaved rounds; load average now {load()}")
    for name, rate, took in (
            ("best SDPA calls (one per shape group, no Ray)", best, best_s),
            ("worker, called directly", direct, direct_s),
            ("worker actor through Ray", via_ray, ray_s),
            (f"one Ray task per job ({samples} jobs)", naive, naive_s)):
        print(f"{name:48} {rate:9.4f} TFLOP/s  ({took:6.2f} s)")
    print(f"worker backends: {', '.join(sorted(backends))} (inputs: views of a pool drawn "
          "once per worker, as best's are made before its clock starts)")
    print(f"worker/best: direct {direct / best:.0%}, through Ray {via_ray / best:.0%} "
          f"(target >= 85% on an H100)")
    print(f"worker/naive: direct {direct / naive:.1f}x, through Ray {via_ray / naive:.1f}x "
          f"(target >= 20x on an H100)")


def main() -> None:
    args = parse_args()
    device = args.device
    sizes = SIZES[device]
    if args.jobs:
        sizes = dataclasses.replace(sizes, jobs=args.jobs,
                                    naive_jobs=min(sizes.naive_jobs, args.jobs))
    jobs = mixed_trace(sizes)
    work = batches(jobs, sizes.batch)
    flops = sum(map(total_flops, jobs))
    sample = jobs[::max(1, len(jobs) // (args.naive_jobs or sizes.naive_jobs))]
    naive_flops = sum(map(total_flops, sample))
    torch.set_num_threads(args.cpus)
    where = torch.cuda.get_device_name() if device == "cuda" else \
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {args.cpus} used"
    print(f"device: {where}; torch {torch.__version__}, Ray {ray.__version__}; "
          f"load average {load()}")
    print(f"trace: {len(jobs)} prefill jobs, lengths {sizes.lengths}, half causal, heads "
          f"{sizes.heads}/{sizes.kv_heads}, head_dim {sizes.head_dim}, {sizes.dtype}; "
          f"{flops / 1e12:.3f} TFLOP (costmodel); {len(work)} batches of <= {sizes.batch}",
          flush=True)

    paths = start_paths(device, args.cpus, work[0][:8])
    seconds, backends = fastest_rounds(args.rounds, device, jobs, work, sample, paths)
    ray.shutdown()
    print_rates(args.rounds, flops, naive_flops, len(sample), seconds, backends)


if __name__ == "__main__":
    main()
