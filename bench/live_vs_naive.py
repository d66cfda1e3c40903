"""Live throughput: attnsched's worker actors against one Ray task per job.

    python bench/live_vs_naive.py [--jobs 2000]

The same small-job trace (tiny prefill and decode requests, all submitted at
once) runs (a) as one ``@ray.remote`` task per job, the way a user would write
it by hand, and (b) through ``attnsched run --policy adaptive`` with two
emulated GPU slots, on one local Ray (loopback). Prints jobs/s, mean and p99
JCT for both and the ratios. Target on the 2-core dev machine: >= 3x jobs/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray

from policies.base import load_policy
from scheduler.jobs import AttentionJob
from scheduler.presets import get_preset
from scheduler.traces.synth import SynthSpec, generate
from workers.executor import LiveConfig, open_session, run_live


@ray.remote(num_cpus=1)
def one_job(job: AttentionJob, submitted: float) -> float:
    """What a user writes by hand: build the tensors, run SDPA, return."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
    steps = job.steps if job.kind.value == "decode" else 1
    for _ in range(job.layers):
        for s in range(steps):
            q = torch.randn(job.batch, job.heads, job.q_len, job.head_dim)
            k = torch.randn(job.batch, job.kv_heads, job.kv_len + s, job.head_dim)
            v = torch.randn_like(k)
            F.scaled_dot_product_attention(q, k, v, is_causal=job.causal and s == 0,
                                           enable_gqa=True)
    return time.time() - submitted


def p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000)
    args = parser.parse_args()
    spec = SynthSpec(jobs=args.jobs, seed=3, rate=1e6, mix={"prefill": 0.5, "decode": 0.5})
    jobs = [dataclasses.replace(j, submit_time=0.0)
            for j in generate(spec, get_preset("tiny", token_scale=0.25))]
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    ray.get([one_job.remote(jobs[0], time.time()) for _ in range(2)])  # warm the workers
    t0 = time.time()
    naive_jct = ray.get([one_job.remote(j, t0) for j in jobs])
    naive_s = time.time() - t0
    config = LiveConfig(emulate_gpus=2, speed=1.0, telemetry_interval=0.5)
    session = open_session(config)  # warm workers, as the naive path's are warm
    t0 = time.time()
    result = run_live(jobs, load_policy("adaptive"), "adaptive", None, config,
                      session=session)
    ours_s = time.time() - t0
    s = result.summary
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.jobs} tiny jobs "
          f"(token scale 0.25) submitted at once; Ray {ray.__version__}")
    print(f"one Ray task per job : {args.jobs / naive_s:8.1f} jobs/s, mean JCT "
          f"{statistics.mean(naive_jct):.3f} s, p99 {p99(naive_jct):.3f} s")
    print(f"attnsched adaptive   : {args.jobs / ours_s:8.1f} jobs/s, mean JCT "
          f"{s['jct_mean']:.3f} s, p99 {s['jct_p99']:.3f} s")
    print(f"ratio: {naive_s / ours_s:.2f}x jobs/s (target >= 3x), mean JCT "
          f"{statistics.mean(naive_jct) / s['jct_mean']:.2f}x lower")


if __name__ == "__main__":
    main()
