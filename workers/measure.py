"""The device's own figures, timed with torch: the SDPA grid, the host floor of a call, the
worker's decode step and the mask of a packed decode, matmul and bandwidth, the batching
curve. Each returns what it timed (:mod:`scheduler.calibration.figures`); the fits that
make profile fields of them are :mod:`scheduler.calibration.fit`.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from scheduler.calibration.figures import (
    DecodeTiming,
    DeviceFigures,
    HostTiming,
    PackingTiming,
    SdpaTiming,
)
from scheduler.calibration.fit import attention_flops
from scheduler.calibration.plan import Plan, Tick, no_tick
from scheduler.profiles import SCHEMA, DeviceProfile, load_profile, shipped_profiles
from workers import kernels


def cores() -> int:
    """CPUs this process may run on (a container's cpuset, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


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
                      sync: Callable[[], None] | None = None, pairs: int = 15,
                      clock: Callable[[], float] = time.perf_counter) -> float:
    """Median over back-to-back pairs of ``other``'s seconds minus ``base``'s.

    Two medians timed apart each carry the machine's drift; a pair shares it,
    so a difference of a few percent of a call still comes out steady.
    """
    wait = sync or (lambda: None)

    def timed(fn: Callable[[], object]) -> float:
        t = clock()
        fn()
        wait()
        return clock() - t

    timed(base)
    timed(other)
    diffs: list[float] = []
    start = clock()
    while len(diffs) < pairs or clock() - start < min_time:
        diffs.append(-timed(base) + timed(other))
    return statistics.median(diffs)


def _sync(device: str) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device == "cuda" else None


def _sdpa(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
          causal: bool) -> torch.Tensor:
    with sdpa_kernel(kernels.BACKENDS[backend]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


# -- the SDPA grid and the host floor -------------------------------------------------------


def measure_point(plan: Plan, dtype: str, head_dim: int, causal: bool, length: int,
                  backend: str) -> SdpaTiming | None:
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
    return SdpaTiming(backend, dtype, head_dim, causal, batch, heads, length, t)


def measure_sdpa(plan: Plan, tick: Tick = no_tick) -> tuple[SdpaTiming, ...]:
    points = []
    for dtype, head_dim, causal, length, backend in plan.grid():
        tick(f"SDPA {backend} {dtype} d={head_dim} L={length}{' causal' if causal else ''}")
        point = measure_point(plan, dtype, head_dim, causal, length, backend)
        if point is not None:
            points.append(point)
    if not points:
        raise RuntimeError(f"no SDPA backend of {', '.join(plan.backends)} ran on {plan.device}")
    return tuple(points)


def measure_host(plan: Plan) -> HostTiming:
    """Host floor of one SDPA call and of a decode step, and host cost per job of a Python
    loop of calls: timed on jobs too small to compute (one head, one token), so they
    measure the launch path alone."""
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

    def loop() -> None:
        for i in range(64):
            F.scaled_dot_product_attention(tiny[i:i + 1], tiny[i:i + 1], tiny[i:i + 1])

    return HostTiming(call, step, seconds_per_call(loop, plan.min_time, sync) / 64)


# -- the worker's decode loop ---------------------------------------------------------------

MASK_LENGTHS = (256, 4096)  # cache lengths of the two masked-decode timings
MASK_STEPS = 32
MASK_LAYOUT = (2, 2, 1)  # (rows, query heads, KV heads): the tiny preset's, two requests
# (rows, query heads, KV heads) of the decode-step timing: the tiny preset's layout on a
# CPU; on a GPU enough rows and heads that the per-element cost shows above the launch.
STEP_LAYOUT = {"cpu": MASK_LAYOUT, "cuda": (16, 32, 8)}
STEP_LENGTHS = {"cpu": (256, 4096), "cuda": (1024, 16384)}


def measure_decode_step(plan: Plan) -> DecodeTiming:
    """One unmasked call of the worker's packed decode loop (``MASK_STEPS`` steps), at a
    short and a long cache (``kernels.decode_many``, caches of one length).

    The SDPA grid times square shapes that saturate the device; a decode step
    is one query per row against a cache, where the fixed cost of the step
    (slicing, the kernel's set-up) and reading the cache dominate, and the
    grid's rate at such shapes missed by 2–5× on a CPU. So the loop itself is
    timed (:func:`scheduler.calibration.fit.decode_step_line` fits the line).
    """
    layout = STEP_LAYOUT.get(plan.device, STEP_LAYOUT["cpu"])
    rows, heads, _ = layout
    sync = _sync(plan.device)
    seconds = []
    for length in STEP_LENGTHS.get(plan.device, STEP_LENGTHS["cpu"]):
        q, k, v = _decode_inputs(plan, layout, length)
        seconds.append((length, seconds_per_call(
            partial(kernels.decode_many, q, k, v, [length] * rows, [MASK_STEPS] * rows),
            2 * plan.min_time, sync)))
    return DecodeTiming(rows, heads, plan.head_dims[0], MASK_STEPS, tuple(seconds))


def measure_decode_mask(plan: Plan) -> DecodeTiming:
    """What the mask of a packed decode adds to a call, at a short and a long cache.

    A worker masks a decode batch only when its caches differ in length
    (``kernels.decode_many``); building the mask each step and the masked
    kernel cost more than the padding's own scores, which the cost model
    already counts. Two requests of 2 heads (one KV head) decode 32 steps,
    caches of equal shape, once with equal lengths and once with lengths one
    apart. The difference is a small share of each call, so it is timed in
    pairs (:func:`paired_difference`).
    """
    sync = _sync(plan.device)
    rows, heads, _ = MASK_LAYOUT
    added = []
    for length in MASK_LENGTHS:
        q, k, v = _decode_inputs(plan, MASK_LAYOUT, length)
        steps = [MASK_STEPS, MASK_STEPS]
        added.append((length, paired_difference(
            partial(kernels.decode_many, q, k, v, [length, length], steps),
            partial(kernels.decode_many, q, k, v, [length, length - 1], steps),
            2 * plan.min_time, sync)))
    return DecodeTiming(rows, heads, plan.head_dims[0], MASK_STEPS, tuple(added))


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


# -- batching, matmul, bandwidth ------------------------------------------------------------


def _packed_vs_alone(plan: Plan, n: int, length: int) -> PackingTiming:
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
    return PackingTiming(n, length, alone, packed)


def measure_batching(plan: Plan, tick: Tick = no_tick
                     ) -> tuple[tuple[PackingTiming, ...], tuple[PackingTiming, ...]]:
    """The batching curve (N packed jobs vs one by one, at the shortest packing length)
    and, per length, the packing reference at the largest N.
    """
    length = min(plan.packing_lengths)
    curve = []
    for n in plan.batch_sizes:
        tick(f"batching N={n} L={length}")
        curve.append(_packed_vs_alone(plan, n, length))
    reference = []
    for length in plan.packing_lengths:
        tick(f"packing reference L={length}")
        n = max(plan.batch_sizes) if length < 2048 else min(16, max(plan.batch_sizes))
        reference.append(_packed_vs_alone(plan, n, length))
    return tuple(curve), tuple(reference)


def measure_matmul_and_copy(plan: Plan) -> tuple[int, dict[str, float], int, float]:
    """(side, dtype -> seconds of a side² matmul, bytes copied, seconds of that copy)."""
    side = 1024 if plan.device == "cpu" else 8192
    sync = _sync(plan.device)
    matmul = {}
    for name in plan.dtypes:
        a = torch.randn(side, side, dtype=kernels.DTYPES[name], device=plan.device)
        matmul[name] = seconds_per_call(partial(torch.matmul, a, a), plan.min_time, sync)
    src = torch.empty((64 if plan.device == "cpu" else 1024) << 20, dtype=torch.uint8,
                      device=plan.device)
    dst = torch.empty_like(src)
    return side, matmul, src.numel(), seconds_per_call(lambda: dst.copy_(src), plan.min_time,
                                                       sync)


# -- the device itself ----------------------------------------------------------------------


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


def _describe_device(device: str) -> tuple[str, tuple[str, ...], int]:
    """(device as the driver or OS names it, models it matches, memory bytes)."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        shipped = _shipped_match(name)
        matches = (*(shipped.matches if shipped else ()), name)
        return name, matches, int(torch.cuda.get_device_properties(0).total_memory)
    import psutil

    return (f"{platform.processor() or platform.machine()} ({cores()} cores)", ("cpu",),
            int(psutil.virtual_memory().total))


def measure_device(plan: Plan, tick: Tick = no_tick) -> DeviceFigures:
    """The profile's device figures: everything but the live path's costs."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(plan.threads)
    try:
        tick("host cost per call")
        host = measure_host(plan)
        tick("decode step cost")
        step = measure_decode_step(plan)
        tick("mask cost of a packed decode")
        mask = measure_decode_mask(plan)
        sdpa = measure_sdpa(plan, tick)
        tick("matmul and bandwidth")
        side, matmul, copied, copy_s = measure_matmul_and_copy(plan)
        curve, packing = measure_batching(plan, tick)
    finally:
        torch.set_num_threads(old_threads)
    described, matches, memory = _describe_device(plan.device)
    return DeviceFigures(
        kind="cpu" if plan.device == "cpu" else "gpu", device=described, matches=matches,
        memory_bytes=memory,
        source=(f"measured by attnsched calibrate on {time.strftime('%Y-%m-%d')}, torch "
                f"{torch.__version__}, {plan.threads} torch thread(s)"),
        threads=plan.threads, dtypes=plan.dtypes, host=host, decode_step=step,
        decode_mask=mask, sdpa=sdpa, matmul_side=side, matmul_s=matmul, copy_bytes=copied,
        copy_s=copy_s, batching=curve, packing=packing)
