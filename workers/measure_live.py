"""What the live path costs beyond the attention, timed on the real pieces.

A live run pays for more than its SDPA calls: each batch is a Ray actor
call, each job in it is built and bookkept by the worker, every decision
round runs the policy, telemetry takes a round trip, and workers sharing a
node's cores slow each other down. The simulator models each of these from
the figures timed here (``DeviceProfile.worker_job_s`` and friends):
:class:`~workers.worker.AttentionWorker` actors created as the executor
creates them, and the real :class:`~scheduler.controller.Controller` with the
built-in adaptive policy (:mod:`workers.measure_decision`). What is timed
comes back as :class:`~scheduler.calibration.figures.LiveFigures`;
:func:`scheduler.calibration.fit.live_profile` makes profile fields of it.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch

from scheduler import costmodel
from scheduler.calibration.figures import (
    JobFitTiming,
    LiveFigures,
    RayFigures,
    ScaleTiming,
    SharingTiming,
)
from scheduler.calibration.fit import JobFit, job_fit
from scheduler.calibration.plan import SHARING_ROUNDS, Plan, Tick
from scheduler.jobs import AttentionJob, DType, JobKind
from scheduler.profiles import DeviceProfile
from workers.measure import cores, seconds_per_call
from workers.measure_decision import time_decisions
from workers.worker import AttentionWorker, BatchResult

Runner = Callable[[str, list[AttentionJob], float, float], BatchResult]
SHARING_LENGTH = 1024  # the tiny preset's median prompt: what local runs compute most
SCALE_SIZES = {  # (prompt, KV or sequence length; batch) the worker scale is measured at
    "prefill": ((32, 1), (128, 1), (512, 1), (2048, 1), (4096, 1)),
    "decode": ((64, 1), (512, 1), (4096, 1)),
    # The tiny preset's training steps run up to 8 sequences of 4,096 and hold most of a
    # local run's work; a batch of 8 calls the kernel with 8× the heads, nearer the grid's
    # saturating calls. Without it the curve ended at one sequence of 2,048 (30 ms here)
    # and the longest quarter of steps (0.2–2.6 s) was priced 3–11% too dear.
    "train": ((64, 1), (512, 1), (2048, 1), (2048, 8)),
}
DECODE_STEPS = 64


def tiny_jobs(n: int, dtype: DType, tag: str = "cal") -> list[AttentionJob]:
    """``n`` one-head-group prefill jobs of distinct lengths, too small to compute.

    Distinct lengths because a live batch rarely holds two jobs of one shape,
    and the worker runs each shape in its own call: that per-shape call is
    part of the per-job cost being measured.
    """
    return [AttentionJob(id=f"{tag}{i}", submit_time=0.0, kind=JobKind.PREFILL, batch=1,
                         heads=2, kv_heads=1, q_len=16 + i, kv_len=16 + i, head_dim=16,
                         layers=1, dtype=dtype, causal=True) for i in range(n)]


def time_worker_jobs(run: Runner, plan: Plan, profile: DeviceProfile) -> JobFitTiming:
    """Per batch size, ``measured(n) − predicted attention(n)``.

    ``measured`` is the median wall time of one ``run`` of an ``n``-job batch
    (repeats interleaved across sizes, so a burst of load elsewhere hits all
    sizes alike); ``predicted`` is what the cost model says the attention
    alone takes, so the slope of a line through them is what the worker path
    adds per job.
    """
    dtype = DType(plan.reference_dtype)
    batches = {n: tiny_jobs(n, dtype) for n in plan.worker_batches}
    estimates = {n: costmodel.batch_estimate(jobs, profile) for n, jobs in batches.items()}
    biggest = max(batches)
    _checked(run("warm-up", batches[biggest], estimates[biggest].seconds,
                 estimates[biggest].flops))
    times: dict[int, list[float]] = {n: [] for n in batches}
    for rep in range(plan.worker_repeats):
        for n, jobs in batches.items():
            start = time.perf_counter()
            _checked(run(f"cal-{n}-{rep}", jobs, estimates[n].seconds, estimates[n].flops))
            times[n].append(time.perf_counter() - start)
    return JobFitTiming(tuple((n, statistics.median(times[n]) - estimates[n].seconds)
                              for n in batches))


def fit_worker_jobs(run: Runner, plan: Plan, profile: DeviceProfile) -> JobFit:
    """``measured(n) − predicted attention(n) = per_call + n·per_job`` over batch sizes."""
    return job_fit(time_worker_jobs(run, plan, profile))


def layout_job(kind: str, size: int, dtype: DType, batch: int = 1) -> AttentionJob:
    """One job of ``kind`` with the ``tiny`` preset's head layout (2 heads, 1 KV head of 16):
    the job mix a CPU worker is given."""
    decode = kind == "decode"
    return AttentionJob(id=f"scale-{kind}-{size}x{batch}", submit_time=0.0,
                        kind=JobKind(kind), batch=batch, heads=2, kv_heads=1,
                        q_len=1 if decode else size, kv_len=size,
                        head_dim=16, layers=1, dtype=dtype, causal=not decode,
                        steps=DECODE_STEPS if decode else 1)


def time_worker_scale(run: Runner, plan: Plan, profile: DeviceProfile
                      ) -> tuple[ScaleTiming, ...]:
    """Lone prefill, decode and training jobs of the job mix run by the worker, against the
    grid's device time for them (:func:`scheduler.calibration.fit.worker_scale` fits it)."""
    profile = replace(profile, worker_scale={})  # predictions of the grid alone
    dtype = DType(plan.reference_dtype)
    jobs = [layout_job(kind, size, dtype, batch) for kind, sizes in SCALE_SIZES.items()
            for size, batch in sizes]
    predicted = {j.id: costmodel.estimate(j, profile) for j in jobs}
    for j in jobs:  # warm each shape once
        _checked(run("warm-up", [j], predicted[j.id].seconds, 0.0))
    times: dict[str, list[float]] = {j.id: [] for j in jobs}
    for rep in range(plan.worker_repeats):
        for j in jobs:  # interleaved, so a burst of load elsewhere hits every size alike
            start = time.perf_counter()
            _checked(run(f"scale-{rep}", [j], predicted[j.id].seconds, 0.0))
            times[j.id].append(time.perf_counter() - start)
    return tuple(ScaleTiming(j.kind.value, costmodel.device_seconds(j, profile),
                             predicted[j.id].calls, statistics.median(times[j.id]))
                 for j in jobs)


def _checked(result: BatchResult) -> BatchResult:
    if result.error:
        raise RuntimeError(f"a calibration batch failed on the worker: {result.error}")
    return result


def time_in_process(plan: Plan, profile: DeviceProfile
                    ) -> tuple[JobFitTiming, tuple[ScaleTiming, ...]]:
    """The per-job timings and the worker scale's, on a worker in this process made as the
    executor makes an emulated GPU (or a real one)."""
    old_threads = torch.get_num_threads()  # the worker sets this process's thread count
    try:
        worker = AttentionWorker("calibrate/gpu0", "gpu", cpus=float(plan.threads),
                                 emulate=plan.device == "cpu")
        return (time_worker_jobs(worker.run, plan, profile),
                time_worker_scale(worker.run, plan, profile))
    finally:
        torch.set_num_threads(old_threads)


# -- through Ray ----------------------------------------------------------------------------


def start_ray() -> bool:
    """A local Ray bound to loopback; returns whether this call started it."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    ray.init(address="local", num_cpus=max(2, cores()),
             include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    return True


def start_workers(plan: Plan) -> list[Any]:
    """Worker actors with the executor's options: two threads each (telemetry is answered
    while a batch runs), one torch thread per emulated GPU. ``num_cpus=0`` so the
    node-sharing workers all start whatever CPUs Ray was told about.
    """
    import ray

    remote = ray.remote(AttentionWorker)
    if plan.device == "cuda":
        return _ready([remote.options(num_gpus=1, num_cpus=0, max_concurrency=2).remote(
            "calibrate/gpu0", "gpu", 1.0)])
    count = max(1, plan.sharing_workers)
    return _ready([remote.options(num_cpus=0, max_concurrency=2).remote(
        f"calibrate/gpu{i}", "gpu", 1.0, emulate=True, seed=i) for i in range(count)])


def _ready(handles: list[Any]) -> list[Any]:
    import ray

    ray.get([h.ping.remote() for h in handles], timeout=300)
    return handles


def round_trips(worker: Any, min_time: float) -> tuple[float, float]:
    """Seconds of one empty actor call (a worker's ``ping``) and of one empty task."""
    import ray

    @ray.remote(num_cpus=1)
    def task() -> int:
        return 1

    actor_s = seconds_per_call(lambda: ray.get(worker.ping.remote()), min_time)
    ray.get([task.remote() for _ in range(4)])  # start the task workers first
    task_s = seconds_per_call(lambda: ray.get(task.remote()), min_time)
    return actor_s, task_s


def through_ray(worker: Any) -> Runner:
    import ray

    def run(batch_id: str, jobs: list[AttentionJob], predicted: float,
            flops: float) -> BatchResult:
        result: BatchResult = ray.get(worker.run.remote(batch_id, jobs, predicted, flops))
        return result

    return run


@contextmanager
def peers_busy(peers: Sequence[Any], jobs: list[AttentionJob]) -> Iterator[None]:
    """Keep ``peers`` computing ``jobs`` back to back while the block runs.

    Live, a batch's round trip is taken while the node's other workers compute,
    so the driver and Ray wait for a core; measured alone it looks cheaper.
    """
    import ray

    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            ray.get([p.run.remote("peer", jobs, 0.0, 0.0) for p in peers])

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def telemetry_round_trip(worker: Any, min_time: float) -> float:
    import ray

    return seconds_per_call(lambda: ray.get(worker.telemetry.remote(0.0, 0)), min_time)


def sharing_jobs(plan: Plan, profile: DeviceProfile) -> list[AttentionJob]:
    """A batch like a local run's: tiny-preset prompts and decodes, sized to fill
    ``plan.sharing_batch_s`` alone. Python-heavy decode steps contend differently
    from one long kernel, so the mix matters."""
    dtype = DType(plan.reference_dtype)

    def prompt(i: int, length: int) -> AttentionJob:
        return AttentionJob(id=f"share-p{i}", submit_time=0.0, kind=JobKind.PREFILL, batch=1,
                            heads=2, kv_heads=1, q_len=length, kv_len=length, head_dim=16,
                            layers=1, dtype=dtype, causal=False)  # one batch: as decode

    def decode(i: int) -> AttentionJob:
        return AttentionJob(id=f"share-d{i}", submit_time=0.0, kind=JobKind.DECODE, batch=1,
                            heads=2, kv_heads=1, q_len=1, kv_len=SHARING_LENGTH // 2 + i,
                            head_dim=16, layers=1, dtype=dtype, causal=False, steps=64)

    unit = [prompt(i, SHARING_LENGTH // 4 * (i + 1)) for i in range(4)] + \
        [decode(i) for i in range(4)]
    alone = costmodel.batch_estimate(unit, profile).seconds
    copies = max(1, min(64, round(plan.sharing_batch_s / alone)))
    return [replace(j, id=f"{j.id}-{c}") for c in range(copies) for j in unit]


def busy_together(workers: Sequence[Any], jobs: list[AttentionJob], batches: int,
                  estimate: costmodel.Estimate) -> list[float]:
    """Each worker runs ``batches`` batches back to back, all at once; returns the
    worker-timed seconds of the batches that ran while every peer was busy.

    A worker's first batch starts while the others are still being sent, and its
    last may end after a peer has finished, so both are dropped (when there are
    more than two).
    """
    import ray

    sent = [0] * len(workers)
    seconds: list[list[float]] = [[] for _ in workers]
    pending: dict[Any, int] = {}

    def send(i: int) -> None:
        ref = workers[i].run.remote(f"share-{len(workers)}-{i}-{sent[i]}", jobs,
                                    estimate.seconds, estimate.flops)
        pending[ref] = i
        sent[i] += 1

    for i in range(len(workers)):
        send(i)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            i = pending.pop(ref)
            seconds[i].append(_checked(ray.get(ref)).seconds)
            if sent[i] < batches:
                send(i)
    return [s for run in seconds for s in (run[1:-1] if len(run) > 2 else run)]


def time_node_sharing(workers: Sequence[Any], plan: Plan, profile: DeviceProfile,
                      tick: Tick) -> SharingTiming:
    """k = 1, 2, ... of ``workers`` busy at once, in interleaved rounds: a shared machine's
    speed drifts, and a drift that hits every k alike cancels out of the ratio."""
    jobs = sharing_jobs(plan, profile)
    estimate = costmodel.batch_estimate(jobs, profile)
    times: dict[int, list[float]] = {k: [] for k in range(1, len(workers) + 1)}
    for _ in range(SHARING_ROUNDS):
        for k in times:
            tick(f"node sharing, {k} busy worker(s)")
            times[k] += busy_together(workers[:k], jobs, plan.sharing_batches, estimate)
    return SharingTiming(tuple((k, tuple(seconds)) for k, seconds in times.items()))


def time_ray(plan: Plan, profile: DeviceProfile, tick: Tick) -> RayFigures:
    """Round trips, the per-job fit through a worker actor (with its peers busy too, on a
    CPU), telemetry and node sharing, on a local Ray (started here unless one runs)."""
    import ray

    tick("start Ray and workers")
    started = start_ray()
    workers: list[Any] = []
    try:
        workers = start_workers(plan)
        tick("Ray round trips")
        actor_s, task_s = round_trips(workers[0], plan.min_time)
        tick("worker per-job cost, through Ray")
        via_ray = time_worker_jobs(through_ray(workers[0]), plan, profile)
        busy = None
        if plan.device == "cpu" and len(workers) > 1:
            # The round trip as live runs pay it: with the node's other workers busy.
            with peers_busy(workers[1:], sharing_jobs(plan, profile)):
                busy = time_worker_jobs(through_ray(workers[0]), plan, profile)
        tick("telemetry round trip")
        telemetry_s = telemetry_round_trip(workers[0], plan.min_time)
        sharing = (time_node_sharing(workers, plan, profile, tick) if plan.device == "cpu"
                   else None)
    finally:
        for worker in workers:
            ray.kill(worker)
        if started:
            ray.shutdown()
    return RayFigures(actor_s, task_s, telemetry_s, via_ray, busy, sharing)


def measure_live(plan: Plan, profile: DeviceProfile, tick: Tick) -> LiveFigures:
    """The live path's figures, predicted with ``profile`` (the device's figures alone)."""
    tick("decision time")
    decision = time_decisions(plan, profile)
    tick("worker per-job cost, in process")
    in_process, scale = time_in_process(plan, profile)
    ray = time_ray(plan, profile, tick) if plan.ray else None
    return LiveFigures(decision, in_process, scale, ray)
