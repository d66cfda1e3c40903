"""Measure the local device into a device profile (``attnsched-profile/1``).

``attnsched calibrate`` runs :func:`build_profile`; ``python -m workers.calibrate``
is kept as an alias of that command. Every figure comes from a timed run
here, nothing is assumed: the SDPA grid and the batching curve (this module),
then the live path's own costs through Ray and the controller
(:mod:`workers.calibrate_live`).

What is measured is a :class:`Plan`, so tests can run a grid of a few points
in seconds while a real calibration sweeps the full one.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from scheduler.profiles import (
    FORMAT,
    SCHEMA,
    DeviceProfile,
    load_profile,
    profile_from_dict,
    shipped_profiles,
)
from workers import kernels

Tick = Callable[[str], None]  # told the name of each measurement as it starts


def _no_tick(label: str) -> None:
    return None


def cores() -> int:
    """CPUs this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Plan:
    """What one calibration measures.

    ``threads`` is the torch thread count of the grid: 1 by default because a
    live run's emulated GPU workers (and CPU workers on a 2-core node split
    by ``--cpu-workers``) compute with one thread each, and the simulator
    prices them with this profile's rates. ``point_flops`` sizes each SDPA
    call so it runs well above the host floor; ``min_time`` is the seconds
    spent timing each figure.
    """

    device: str = "cpu"
    threads: int = 1
    lengths: tuple[int, ...] = (128, 512, 2048, 8192)
    head_dims: tuple[int, ...] = (16, 64, 128)
    dtypes: tuple[str, ...] = ("fp32", "bf16")
    backends: tuple[str, ...] = ("flash", "math")
    causal: tuple[bool, ...] = (False, True)
    point_flops: float = 2.0**27
    min_time: float = 0.2
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)  # the batching curve
    packing_lengths: tuple[int, ...] = (128, 512, 2048)
    worker_batches: tuple[int, ...] = (1, 4, 16, 32, 64)  # jobs per batch in the per-job fit
    worker_repeats: int = 9
    sharing_workers: int = 2  # node sharing is measured for k = 1..this busy workers
    sharing_batch_s: float = 0.1
    sharing_batches: int = 6
    decision_devices: int = 4
    decision_queue: int = 32
    decision_rounds: int = 200
    ray: bool = True
    replay_jobs: int = 600  # a live replay's jobs (0: none); see calibrate_live.replay_fit
    replay_rounds: int = 3  # replays back to back; each figure is their median

    def __post_init__(self) -> None:
        if not (self.lengths and self.head_dims and self.dtypes and self.backends
                and self.causal and self.batch_sizes and self.packing_lengths):
            raise ValueError("a plan needs at least one of each grid axis")
        if len(set(self.worker_batches)) < 2:
            raise ValueError("the per-job fit needs at least two batch sizes")

    @property
    def reference_dtype(self) -> str:
        """The dtype of the batching curve and the live-path jobs: the grid's first."""
        return self.dtypes[0]

    def grid(self) -> list[tuple[str, int, bool, int, str]]:
        """(dtype, head_dim, causal, length, backend) of every SDPA point."""
        return [(dt, d, c, length, b) for dt in self.dtypes for d in self.head_dims
                for c in self.causal for length in self.lengths for b in self.backends]


def full_plan(device: str = "cpu", threads: int = 1) -> Plan:
    if device == "cuda":
        return Plan(device="cuda", threads=threads, lengths=(128, 512, 2048, 8192, 16384),
                    head_dims=(64, 128), dtypes=("bf16", "fp16", "fp32"),
                    backends=kernels.PREFERENCE["cuda"], point_flops=2.0**36,
                    packing_lengths=(128, 512, 2048), sharing_workers=1)
    return Plan(device="cpu", threads=threads, sharing_workers=max(2, cores()))


def quick_plan(device: str = "cpu", threads: int = 1) -> Plan:
    """Under two minutes on the 2-core development machine, Ray's start included."""
    return replace(full_plan(device, threads), lengths=(128, 1024) if device == "cpu" else
                   (512, 4096), head_dims=(16, 64) if device == "cpu" else (64, 128),
                   point_flops=full_plan(device).point_flops / 4, min_time=0.1,
                   packing_lengths=(128, 512), worker_repeats=5, sharing_batch_s=0.05,
                   sharing_batches=4, decision_rounds=60, replay_jobs=300,
                   replay_rounds=1)


def count_steps(plan: Plan) -> int:
    """How many times :func:`build_profile` calls its ``tick``: the progress bar's total."""
    from workers.calibrate_live import live_steps

    # host cost, decode step, decode mask, the grid, matmul and bandwidth, the batching
    # curve, packing
    device = 3 + len(plan.grid()) + 1 + len(plan.batch_sizes) + len(plan.packing_lengths)
    return device + live_steps(plan)


# -- timing ---------------------------------------------------------------------------------


def seconds_per_call(fn: Callable[[], object], min_time: float,
                     sync: Callable[[], None] | None = None) -> float:
    """Median seconds per call over chunks of calls, after one warm-up call.

    Another process on a shared machine only ever slows a call down, so one
    disturbed chunk must not move the figure: hence a median, not a mean.
    Chunks group fast calls (about ten chunks fill ``min_time``); ``sync``
    waits for queued device work (CUDA) before a chunk's clock stops.
    """
    wait = sync or (lambda: None)
    fn()
    wait()
    samples: list[float] = []
    chunk, start = 1, time.perf_counter()
    while True:
        t = time.perf_counter()
        for _ in range(chunk):
            fn()
        wait()
        samples.append((time.perf_counter() - t) / chunk)
        if len(samples) >= 3 and time.perf_counter() - start >= min_time:
            return statistics.median(samples)
        chunk = max(1, int(min_time / 10 / max(statistics.median(samples), 1e-9)))


def paired_difference(base: Callable[[], object], other: Callable[[], object], min_time: float,
                      sync: Callable[[], None] | None = None, pairs: int = 15) -> float:
    """Median over back-to-back pairs of ``other``'s seconds minus ``base``'s.

    Two medians timed apart each carry the machine's drift; a pair shares it,
    so a difference of a few percent of a call still comes out steady.
    """
    wait = sync or (lambda: None)

    def timed(fn: Callable[[], object]) -> float:
        t = time.perf_counter()
        fn()
        wait()
        return time.perf_counter() - t

    timed(base)
    timed(other)
    diffs: list[float] = []
    start = time.perf_counter()
    while len(diffs) < pairs or time.perf_counter() - start < min_time:
        diffs.append(-timed(base) + timed(other))
    return statistics.median(diffs)


def _sync(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device == "cuda" else None


def attention_flops(b: int, h: int, q: int, kv: int, d: int, causal: bool) -> float:
    f = 4.0 * b * h * q * kv * d
    return f / 2 if causal else f


def _sdpa(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
          causal: bool) -> torch.Tensor:
    with sdpa_kernel(kernels.BACKENDS[backend]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


# -- the device: SDPA grid, batching curve, matmul, bandwidth ---------------------------------


def measure_point(plan: Plan, dtype: str, head_dim: int, causal: bool, length: int,
                  backend: str) -> dict[str, Any] | None:
    """One SDPA point, or None where the backend refuses these inputs (e.g. CUDA flash fp32)."""
    rows = int(max(1, min(1 << 14, plan.point_flops
                          // attention_flops(1, 1, length, length, head_dim, causal))))
    heads = min(rows, 8)
    batch = max(1, rows // heads)
    q = torch.randn(batch, heads, length, head_dim, dtype=kernels.DTYPES[dtype],
                    device=plan.device)
    k, v = torch.randn_like(q), torch.randn_like(q)
    try:
        with warnings.catch_warnings():  # a refusing backend warns why before raising
            warnings.simplefilter("ignore")
            t = seconds_per_call(partial(_sdpa, backend, q, k, v, causal), plan.min_time,
                                 _sync(plan.device))
    except RuntimeError:  # "no available kernel": this backend does not run these inputs
        return None
    tflops = attention_flops(batch, heads, length, length, head_dim, causal) / t / 1e12
    return {"backend": backend, "dtype": dtype, "head_dim": head_dim, "causal": causal,
            "batch": batch, "heads": heads, "q_len": length, "kv_len": length,
            "tflops": round(tflops, 6)}


def measure_sdpa(plan: Plan, tick: Tick = _no_tick) -> list[dict[str, Any]]:
    points = []
    for dtype, head_dim, causal, length, backend in plan.grid():
        tick(f"SDPA {backend} {dtype} d={head_dim} L={length}{' causal' if causal else ''}")
        point = measure_point(plan, dtype, head_dim, causal, length, backend)
        if point is not None:
            points.append(point)
    if not points:
        raise RuntimeError(f"no SDPA backend of {', '.join(plan.backends)} ran on {plan.device}")
    return points


def measure_host(plan: Plan) -> tuple[float, float]:
    """Host floor of one SDPA call, and host cost per job of a Python loop of calls.

    Timed on jobs too small to compute (one head, one token), so they measure
    the launch path alone.
    """
    tiny = torch.randn(64, 1, 1, 16, device=plan.device)
    sync = _sync(plan.device)
    # The floor of a call as the worker makes it (backend choice included), and of a
    # step of its packed decode (slicing included; caches of one length, so no mask:
    # the mask is measured apart, measure_decode_mask): the larger is the floor.
    call = seconds_per_call(lambda: kernels.attention(tiny[:1], tiny[:1], tiny[:1], False),
                            plan.min_time, sync)
    rows = torch.randn(2, 1, 16, 16, device=plan.device)
    cache = torch.randn(2, 1, 32, 16, device=plan.device)
    step = seconds_per_call(lambda: kernels.decode_many(rows, cache, cache, [2, 2], [16, 16]),
                            plan.min_time, sync) / 16
    call = max(call, step)

    def loop() -> None:
        for i in range(64):
            F.scaled_dot_product_attention(tiny[i:i + 1], tiny[i:i + 1], tiny[i:i + 1])

    return call, seconds_per_call(loop, plan.min_time, sync) / 64


MASK_LENGTHS = (256, 4096)  # cache lengths of the two masked-decode timings
MASK_STEPS = 32
MASK_LAYOUT = (2, 2, 1)  # (rows, query heads, KV heads): the tiny preset's, two requests
# (rows, query heads, KV heads) of the decode-step timing: the tiny preset's layout on a
# CPU; on a GPU enough rows and heads that the per-element cost shows above the launch.
STEP_LAYOUT = {"cpu": MASK_LAYOUT, "cuda": (16, 32, 8)}
STEP_LENGTHS = {"cpu": (256, 4096), "cuda": (1024, 16384)}


def measure_decode_step(plan: Plan) -> tuple[float, float]:
    """One unmasked step of the worker's packed decode loop: seconds per call (a step of one
    layer), and per element read (row × query head × key × head-dim).

    The SDPA grid times square shapes that saturate the device; a decode step
    is one query per row against a cache, where the fixed cost of the step
    (slicing, the kernel's set-up) and reading the cache dominate, and the
    grid's rate at such shapes missed by 2–5× on a CPU. So the loop itself
    (``kernels.decode_many``, caches of one length) is timed at a short and a
    long cache and the per-step times fit a line.
    """
    layout = STEP_LAYOUT.get(plan.device, STEP_LAYOUT["cpu"])
    rows, heads, _ = layout
    sync = _sync(plan.device)
    points = []
    for length in STEP_LENGTHS.get(plan.device, STEP_LENGTHS["cpu"]):
        q, k, v = _decode_inputs(plan, layout, length)
        seconds = seconds_per_call(partial(kernels.decode_many, q, k, v, [length] * rows,
                                           [MASK_STEPS] * rows), 2 * plan.min_time, sync)
        elements = rows * heads * (length + (MASK_STEPS - 1) / 2) * plan.head_dims[0]
        points.append((elements, seconds / MASK_STEPS))  # per step, at the mean keys
    return _line_through(points)


def measure_decode_mask(plan: Plan) -> tuple[float, float]:
    """What the mask of a packed decode costs: seconds per call, and per masked score.

    A worker masks a decode batch only when its caches differ in length
    (``kernels.decode_many``); building the mask each step and the masked
    kernel cost more than the padding's own scores, which the cost model
    already counts. Two requests of 2 heads (one KV head) decode 32 steps,
    caches of equal shape, once with equal lengths and once with lengths one
    apart, at a short and a long cache: the differences per step fit
    ``call + score · rows · heads · keys``. The difference is a small share
    of each call, so it is timed in pairs (:func:`paired_difference`).
    """
    sync = _sync(plan.device)
    extra = []
    for length in MASK_LENGTHS:
        q, k, v = _decode_inputs(plan, MASK_LAYOUT, length)
        steps = [MASK_STEPS, MASK_STEPS]
        added = paired_difference(
            partial(kernels.decode_many, q, k, v, [length, length], steps),
            partial(kernels.decode_many, q, k, v, [length, length - 1], steps),
            2 * plan.min_time, sync)
        scores = 2 * 2 * (length + (MASK_STEPS - 1) / 2)  # rows × heads × mean keys, per step
        extra.append((scores, max(0.0, added) / MASK_STEPS))
    return _line_through(extra)


def _decode_inputs(plan: Plan, layout: tuple[int, int, int], length: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries for ``MASK_STEPS`` steps and caches of ``length`` keys plus those steps, for
    (rows, query heads, KV heads) ``layout`` at the plan's first head size and dtype."""
    rows, heads, kv_heads = layout
    dtype = kernels.DTYPES[plan.reference_dtype]
    d = plan.head_dims[0]
    q = torch.randn(rows, heads, MASK_STEPS, d, dtype=dtype, device=plan.device)
    k = torch.randn(rows, kv_heads, length + MASK_STEPS, d, dtype=dtype, device=plan.device)
    return q, k, torch.randn_like(k)


def _line_through(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(intercept, slope) of the line through two points, each floored at 0: a cost."""
    (x0, y0), (x1, y1) = points
    slope = max(0.0, (y1 - y0) / (x1 - x0))
    return max(0.0, y0 - slope * x0), slope


def _packed_vs_alone(plan: Plan, n: int, length: int) -> dict[str, float]:
    """Per-job seconds of ``n`` jobs (8 heads of 64) in one call, and one call each."""
    q = torch.randn(n, 8, length, 64, dtype=kernels.DTYPES[plan.reference_dtype],
                    device=plan.device)
    k, v = torch.randn_like(q), torch.randn_like(q)

    def one_by_one() -> None:
        for i in range(n):
            F.scaled_dot_product_attention(q[i:i + 1], k[i:i + 1], v[i:i + 1])

    sync = _sync(plan.device)
    alone = seconds_per_call(one_by_one, plan.min_time, sync) / n
    packed = seconds_per_call(lambda: F.scaled_dot_product_attention(q, k, v), plan.min_time,
                              sync) / n
    return {"jobs": n, "seq_len": length, "one_by_one_us_per_job": round(alone * 1e6, 3),
            "packed_us_per_job": round(packed * 1e6, 3), "gain": round(alone / packed, 3)}


def measure_batching(plan: Plan, tick: Tick = _no_tick
                     ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """The batching curve (N packed jobs vs one by one, at the shortest packing length)
    and, per length, the packing reference at the largest N.
    """
    length = min(plan.packing_lengths)
    curve = []
    for n in plan.batch_sizes:
        tick(f"batching N={n} L={length}")
        curve.append(_packed_vs_alone(plan, n, length))
    reference = []
    flops_per_job = attention_flops(1, 8, 1, 1, 64, False)
    for length in plan.packing_lengths:
        tick(f"packing reference L={length}")
        n = max(plan.batch_sizes) if length < 2048 else min(16, max(plan.batch_sizes))
        r = _packed_vs_alone(plan, n, length)
        f = flops_per_job * length * length
        reference.append({"seq_len": length, "jobs": n,
                          "one_by_one_tflops": f / r["one_by_one_us_per_job"] / 1e6,
                          "one_packed_call_tflops": f / r["packed_us_per_job"] / 1e6})
    return curve, reference


def measure_matmul_and_bandwidth(plan: Plan) -> tuple[dict[str, float], float]:
    side = 1024 if plan.device == "cpu" else 8192
    sync = _sync(plan.device)
    rates = {}
    for name in plan.dtypes:
        a = torch.randn(side, side, dtype=kernels.DTYPES[name], device=plan.device)
        t = seconds_per_call(partial(torch.matmul, a, a), plan.min_time, sync)
        rates[name] = round(2 * side**3 / t / 1e12, 6)
    src = torch.empty((64 if plan.device == "cpu" else 1024) << 20, dtype=torch.uint8,
                      device=plan.device)
    dst = torch.empty_like(src)
    t = seconds_per_call(lambda: dst.copy_(src), plan.min_time, sync)
    return rates, 2 * src.numel() / t / 1e9  # read + write, GB/s


def _shipped_match(device_name: str) -> DeviceProfile | None:
    """The shipped GPU profile whose models name this GPU (``H100`` in ``NVIDIA H100 ...``)."""
    for shipped in shipped_profiles():
        profile = load_profile(shipped)
        if profile.kind == "gpu" and any(m.upper() in device_name.upper()
                                         for m in profile.matches):
            return profile
    return None


def default_name(device: str) -> str:
    """``cpu``; on a GPU, the shipped profile's name for its model (so ``--profile PATH``
    replaces that one in a run), else the model as a profile name.
    """
    if device == "cpu":
        return "cpu"
    gpu = torch.cuda.get_device_name()
    shipped = _shipped_match(gpu)
    if shipped is not None:
        return shipped.name
    slug = re.sub(r"[^a-z0-9_.-]+", "-", gpu.lower()).strip("-")
    return slug if re.fullmatch(SCHEMA["properties"]["name"]["pattern"], slug) else "gpu"


def _describe_device(device: str) -> tuple[str, list[str], int]:
    """(device as the driver or OS names it, models it matches, memory bytes)."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        shipped = _shipped_match(name)
        matches = [*(shipped.matches if shipped else ()), name]
        return name, matches, int(torch.cuda.get_device_properties(0).total_memory)
    import psutil

    return (f"{platform.processor() or platform.machine()} ({cores()} cores)", ["cpu"],
            int(psutil.virtual_memory().total))


def measure_device(plan: Plan, name: str, tick: Tick = _no_tick) -> dict[str, Any]:
    """The profile's device figures: everything but the live path's costs."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(plan.threads)
    try:
        tick("host cost per call")
        call_host, job_host = measure_host(plan)
        tick("decode step cost")
        step, element = measure_decode_step(plan)
        tick("mask cost of a packed decode")
        mask_call, mask_score = measure_decode_mask(plan)
        sdpa = measure_sdpa(plan, tick)
        tick("matmul and bandwidth")
        matmul, bandwidth = measure_matmul_and_bandwidth(plan)
        curve, packing = measure_batching(plan, tick)
    finally:
        torch.set_num_threads(old_threads)
    described, matches, memory = _describe_device(plan.device)
    return {
        "format": FORMAT, "name": name, "kind": "cpu" if plan.device == "cpu" else "gpu",
        "device": described, "matches": matches,
        "source": (f"measured by attnsched calibrate on {time.strftime('%Y-%m-%d')}, torch "
                   f"{torch.__version__}, {plan.threads} torch thread(s)"),
        "memory_bytes": memory, "bandwidth_gb_s": round(bandwidth, 3), "matmul_tflops": matmul,
        # CPU fp16 runs at bf16's rate (both are converted to fp32 per tile).
        "dtype_aliases": ({"fp16": "bf16"} if "bf16" in plan.dtypes and "fp16" not in plan.dtypes
                          else {}),
        "call_host_us": round(call_host * 1e6, 3),
        "unpacked_job_host_us": [[1, round(job_host * 1e6, 3)]],
        "decode_step_us": round(step * 1e6, 3),
        "decode_element_ns": round(element * 1e9, 6),
        "decode_dtype": plan.reference_dtype,
        "decode_mask_call_us": round(mask_call * 1e6, 3),
        "decode_mask_score_ns": round(mask_score * 1e9, 4),
        "sharing": [[1, 1.0]], "backward_factor": 2.5, "sdpa": sdpa,
        "reference": {"threads": plan.threads, "batching_heads8_headdim64": curve,
                      "packing_batch1_heads8_headdim64": packing},
    }


def build_profile(plan: Plan, name: str, tick: Tick = _no_tick) -> dict[str, Any]:
    """Measure everything ``plan`` asks for; returns a profile that validates."""
    from workers import calibrate_live

    data = measure_device(plan, name, tick)
    partial_profile: DeviceProfile = profile_from_dict(data)  # the live fits predict with it
    data.update(calibrate_live.measure_live(plan, partial_profile, tick))
    data["reference"].update(data.pop("live_reference"))
    profile = profile_from_dict(data)
    if plan.ray and plan.device == "cpu" and plan.replay_jobs:
        updates, data["reference"]["live_replay"] = calibrate_live.replay_fit(
            plan, data, profile, tick)
        # what the replay replaces is kept: the lone-job curve, the looped sharing, the fit
        data["reference"]["worker_scale_lone"] = data.get("worker_scale", {})
        data["reference"]["node_sharing_looped"] = data.get("node_sharing", [[1, 1.0]])
        data["reference"]["batch_call_fit_us"] = data.get("batch_call_us", 0.0)
        data.update(updates)
        profile_from_dict(data)
    return data


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m workers.calibrate ARGS`` is ``attnsched calibrate ARGS``."""
    from scheduler.cli.main import main as cli

    return cli(["calibrate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
