"""What the live path costs beyond the attention, measured for the simulator.

A live run pays for more than its SDPA calls: each batch is a Ray actor
call, each job in it is built and bookkept by the worker, every decision
round runs the policy, telemetry takes a round trip, and workers sharing a
node's cores slow each other down. The simulator models each of these from
the figures measured here (``DeviceProfile.worker_job_s`` and friends), so
they are timed on the real pieces: :class:`~workers.worker.AttentionWorker`
actors created as the executor creates them, and the real
:class:`~scheduler.controller.Controller` with the built-in adaptive policy.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from scheduler import costmodel
from scheduler.cluster import ClusterSpec, DeviceSpec, NodeSpec
from scheduler.controller import Controller
from scheduler.jobs import AttentionJob, DType, JobKind
from scheduler.pricing import ClusterCost
from scheduler.profiles import DeviceProfile, profile_from_dict
from scheduler.view import Telemetry
from workers.calibrate import Plan, Tick, cores, full_plan, seconds_per_call
from workers.worker import AttentionWorker, BatchResult

Runner = Callable[[str, list[AttentionJob], float, float], BatchResult]
SHARING_LENGTH = 1024  # the tiny preset's median prompt: what local runs compute most
SHARING_ROUNDS = 3


def live_steps(plan: Plan) -> int:
    """Ticks :func:`measure_live` makes (see ``count_steps``)."""
    if not plan.ray:
        return 2  # per-job fit in process, decision time
    cpu = plan.device == "cpu"
    replays = plan.replay_rounds if plan.replay_jobs else 0
    return 6 + (SHARING_ROUNDS * plan.sharing_workers + replays if cpu else 0)


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``y = a + b·x``; returns ``(a, b)``."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a line needs at least two distinct x values")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def tiny_jobs(n: int, dtype: DType, tag: str = "cal") -> list[AttentionJob]:
    """``n`` one-head-group prefill jobs of distinct lengths, too small to compute.

    Distinct lengths because a live batch rarely holds two jobs of one shape,
    and the worker runs each shape in its own call: that per-shape call is
    part of the per-job cost being measured.
    """
    return [AttentionJob(id=f"{tag}{i}", submit_time=0.0, kind=JobKind.PREFILL, batch=1,
                         heads=2, kv_heads=1, q_len=16 + i, kv_len=16 + i, head_dim=16,
                         layers=1, dtype=dtype, causal=True) for i in range(n)]


def fit_worker_jobs(run: Runner, plan: Plan, profile: DeviceProfile) -> dict[str, Any]:
    """Fit ``measured(n) − predicted attention(n) = per_call + n·per_job`` over batch sizes.

    ``measured`` is the median wall time of one ``run`` of an ``n``-job batch
    (repeats interleaved across sizes, so a burst of load elsewhere hits all
    sizes alike); ``predicted`` is what the cost model says the attention
    alone takes, so the slope is what the worker path adds per job.
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
    residuals = [(float(n), statistics.median(times[n]) - estimates[n].seconds)
                 for n in batches]
    per_call, per_job = fit_line(residuals)
    return {"per_call_us": round(per_call * 1e6, 3), "per_job_us": round(per_job * 1e6, 3),
            "residual_us": [[int(n), round(r * 1e6, 3)] for n, r in residuals]}


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
# A size tells of the device's rate only where the grid's device time is at least this
# share of the host floor; below, overheads the per-call and per-job fit covers dominate
# and the ratio is noise (tens to a hundred on a 32-token prompt).
FLOOR_SHARE = 8


def layout_job(kind: str, size: int, dtype: DType, batch: int = 1) -> AttentionJob:
    """One job of ``kind`` with the ``tiny`` preset's head layout (2 heads, 1 KV head of 16):
    the job mix a CPU worker is given."""
    decode = kind == "decode"
    return AttentionJob(id=f"scale-{kind}-{size}x{batch}", submit_time=0.0,
                        kind=JobKind(kind), batch=batch, heads=2, kv_heads=1,
                        q_len=1 if decode else size, kv_len=size,
                        head_dim=16, layers=1, dtype=dtype, causal=not decode,
                        steps=DECODE_STEPS if decode else 1)


def fit_worker_scale(run: Runner, plan: Plan, profile: DeviceProfile, per_call_s: float,
                     per_job_s: float) -> dict[str, list[list[float]]]:
    """Per kind: (device s, measured/predicted device time) of lone jobs run by the worker.

    The grid times saturating SDPA calls in a tight loop; a lone request's
    call has two heads, its GQA expansion and the worker's loop around it.
    The per-call and per-job costs of the worker path (fitted apart, and
    charged apart by the simulator) come off the measured time first, and a
    size is kept only where what is left exceeds the host floor and the grid's
    device time is not negligible beside it: elsewhere the floor and the
    overheads explain the time and say nothing of the device's rate.
    """
    profile = replace(profile, worker_scale={})  # predictions of the grid alone
    dtype = DType(plan.reference_dtype)
    jobs = [layout_job(kind, size, dtype, batch) for kind, sizes in SCALE_SIZES.items()
            for size, batch in sizes]
    predicted = {j.id: costmodel.estimate(j, profile) for j in jobs}
    device = {j.id: costmodel.device_seconds(j, profile) for j in jobs}
    for j in jobs:  # warm each shape once
        _checked(run("warm-up", [j], predicted[j.id].seconds, 0.0))
    times: dict[str, list[float]] = {j.id: [] for j in jobs}
    for rep in range(plan.worker_repeats):
        for j in jobs:  # interleaved, so a burst of load elsewhere hits every size alike
            start = time.perf_counter()
            _checked(run(f"scale-{rep}", [j], predicted[j.id].seconds, 0.0))
            times[j.id].append(time.perf_counter() - start)
    out: dict[str, list[list[float]]] = {}
    for j in jobs:
        left = statistics.median(times[j.id]) - per_call_s - per_job_s
        floor = predicted[j.id].calls * profile.call_host_s
        if left <= floor or device[j.id] < floor / FLOOR_SHARE:
            continue
        out.setdefault(j.kind.value, []).append(
            [float(f"{device[j.id]:.6g}"), round(left / device[j.id], 4)])
    for curve in out.values():
        curve.sort()  # a batch can outgrow a longer sequence
    return out


def _checked(result: BatchResult) -> BatchResult:
    if result.error:
        raise RuntimeError(f"a calibration batch failed on the worker: {result.error}")
    return result


def _local_worker(plan: Plan) -> AttentionWorker:
    """A worker in this process, made as the executor makes an emulated GPU (or a real one)."""
    return AttentionWorker("calibrate/gpu0", "gpu", cpus=float(plan.threads),
                           emulate=plan.device == "cpu")


def fit_in_process(plan: Plan, profile: DeviceProfile) -> dict[str, Any]:
    """The per-job fit and the worker scale, on a worker in this process."""
    old_threads = torch.get_num_threads()  # the worker sets this process's thread count
    try:
        worker = _local_worker(plan)
        fit = fit_worker_jobs(worker.run, plan, profile)
        fit["worker_scale"] = fit_worker_scale(worker.run, plan, profile,
                                               max(0.0, fit["per_call_us"]) * 1e-6,
                                               max(0.0, fit["per_job_us"]) * 1e-6)
        return fit
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


def node_sharing(workers: Sequence[Any], plan: Plan, profile: DeviceProfile,
                 tick: Tick) -> tuple[list[list[float]], list[dict[str, float]]]:
    """``[[k, per-worker speed with k busy, relative to one alone], ...]`` and the raw medians.

    Rounds interleave k = 1, 2, ...: a shared machine's speed drifts, and a
    drift that hits every k alike cancels out of the ratio.
    """
    jobs = sharing_jobs(plan, profile)
    estimate = costmodel.batch_estimate(jobs, profile)
    times: dict[int, list[float]] = {k: [] for k in range(1, len(workers) + 1)}
    for _ in range(SHARING_ROUNDS):
        for k in times:
            tick(f"node sharing, {k} busy worker(s)")
            times[k] += busy_together(workers[:k], jobs, plan.sharing_batches, estimate)
    alone = statistics.median(times[1])
    curve: list[list[float]] = []
    raw: list[dict[str, float]] = []
    for k, seconds in times.items():
        median = statistics.median(seconds)
        # Noise can make k workers look faster than one; a worker never gains from peers.
        curve.append([k, round(min(1.0, alone / median), 4)])
        raw.append({"workers": k, "median_batch_s": round(median, 6)})
    return curve, raw


# -- the controller ---------------------------------------------------------------------------


def local_cluster(plan: Plan, profile: DeviceProfile) -> ClusterSpec:
    """One node of ``plan.decision_devices`` GPU slots timed by ``profile``: a local run."""
    count = plan.decision_devices
    emulated = plan.device == "cpu"
    memory = profile.memory_bytes // count if emulated else profile.memory_bytes
    model = "emulated" if emulated else profile.device
    devices = tuple(DeviceSpec(f"local/gpu{i}", "local", "gpu", model, memory, profile.name, 1.0)
                    for i in range(count))
    node = NodeSpec("local", "local", float(cores()), profile.memory_bytes, count, model, devices)
    return ClusterSpec((node,), "calibration")


def decision_time(plan: Plan, profile: DeviceProfile) -> dict[str, Any]:
    """Median seconds of ``Controller.decide`` with the adaptive policy in a steady state.

    Each round is one live event: the oldest running batch completes, arrivals
    top the queue up to ``plan.decision_queue`` tiny-preset jobs, every device
    reports telemetry, and the controller decides (the timed part).
    """
    from policies.base import load_policy
    from scheduler.presets import get_preset
    from scheduler.traces.synth import SynthSpec, generate

    spec = local_cluster(plan, profile)
    controller = Controller(spec, ClusterCost(spec, {profile.name: profile}),
                            load_policy("adaptive"), policy_name="adaptive")
    dtype = DType(plan.reference_dtype)
    stream = generate(SynthSpec(jobs=100_000_000, seed=0), get_preset("tiny"))
    now, placed, times = 0.0, 0, []
    for _ in range(plan.decision_rounds):
        if controller.batches:
            controller.batch_done(next(iter(controller.batches)), now)
        for _ in range(plan.decision_queue * 4):  # bounded: a job no device runs fails at once
            if len(controller.pending) >= plan.decision_queue:
                break
            controller.submit(replace(next(stream), submit_time=now, dtype=dtype), now)
        controller.observe([Telemetry(now, d.id, 0.8, 0, d.memory_bytes,
                                      len(controller.pending), 1, 0.0) for d in spec.devices])
        start = time.perf_counter()
        step = controller.decide(now, "arrival")
        times.append(time.perf_counter() - start)
        placed += sum(len(b.jobs) for b in step.started)
        now += 0.01
    if not placed:
        raise RuntimeError("the adaptive policy placed no job while calibrating decision time")
    times.sort()
    return {"median_us": round(statistics.median(times) * 1e6, 3),
            "p90_us": round(times[int(0.9 * (len(times) - 1))] * 1e6, 3),
            "rounds": len(times), "devices": plan.decision_devices,
            "queue": plan.decision_queue, "jobs_placed": placed}


# -- all of it --------------------------------------------------------------------------------


def measure_live(plan: Plan, profile: DeviceProfile, tick: Tick) -> dict[str, Any]:
    """The profile's live-path fields, plus ``live_reference`` (raw figures) to merge."""
    tick("decision time")
    decision = decision_time(plan, profile)
    tick("worker per-job cost, in process")
    in_process = fit_in_process(plan, profile)
    out: dict[str, Any] = {"decision_us": decision["median_us"],
                           "worker_job_us": max(0.0, in_process["per_job_us"]),
                           "worker_scale": in_process.pop("worker_scale")}
    reference: dict[str, Any] = {"decision": decision, "worker_in_process": in_process}
    if not plan.ray:
        out["live_reference"] = reference
        return out
    import ray

    tick("start Ray and workers")
    started = start_ray()
    workers: list[Any] = []
    try:
        workers = start_workers(plan)
        tick("Ray round trips")
        actor_s, task_s = round_trips(workers[0], plan.min_time)
        tick("worker per-job cost, through Ray")
        via_ray = fit_worker_jobs(through_ray(workers[0]), plan, profile)
        if plan.device == "cpu" and len(workers) > 1:
            # The round trip as live runs pay it: with the node's other workers busy.
            with peers_busy(workers[1:], sharing_jobs(plan, profile)):
                reference["worker_through_ray_peers_busy"] = fit_worker_jobs(
                    through_ray(workers[0]), plan, profile)
        tick("telemetry round trip")
        telemetry_s = telemetry_round_trip(workers[0], plan.min_time)
        sharing: list[list[float]] = [[1, 1.0]]
        if plan.device == "cpu":
            sharing, reference["node_sharing"] = node_sharing(workers, plan, profile, tick)
    finally:
        for worker in workers:
            ray.kill(worker)
        if started:
            ray.shutdown()
    # A live batch pays the Ray path's per-job cost (the job records are pickled too),
    # so that slope is the figure; the in-process fit stays in the reference as a check.
    reference["worker_through_ray"] = via_ray
    # The fit's intercept is what a batch costs through Ray beyond its jobs: the empty
    # call's round trip plus sending the batch and its result (never less than the former).
    out.update(actor_call_us=round(actor_s * 1e6, 3), task_us=round(task_s * 1e6, 3),
               batch_call_us=round(max(actor_s * 1e6, via_ray["per_call_us"],
                                       reference.get("worker_through_ray_peers_busy",
                                                     via_ray)["per_call_us"]), 3),
               worker_job_us=max(0.0, via_ray["per_job_us"]),
               telemetry_us=round(telemetry_s * 1e6, 3), node_sharing=sharing,
               live_reference=reference)
    return out


# -- a live replay ----------------------------------------------------------------------------

REPLAY_SEED = 7919  # the replay's own jobs: not a trace anyone evaluates on
REPLAY_LOAD = 0.5  # offered load of the replay on its workers
REPLAY_MIN = 10  # lone jobs of a kind needed to correct that kind


def replay_jobs(plan: Plan, profile: DeviceProfile) -> list[AttentionJob]:
    """``plan.replay_jobs`` tiny-preset jobs (the mix a CPU worker is given), arriving at
    ``REPLAY_LOAD`` of ``plan.sharing_workers`` workers as the profile prices them."""
    from scheduler.presets import get_preset
    from scheduler.traces.synth import SynthSpec, generate

    jobs = list(generate(SynthSpec(jobs=plan.replay_jobs, seed=REPLAY_SEED, rate=1.0),
                         get_preset("tiny")))
    per_batch = (profile.batch_call_s + profile.decision_s + profile.worker_job_s
                 + profile.worker_batch_s)
    mean_s = statistics.fmean(costmodel.estimate(j, profile).seconds + per_batch for j in jobs)
    rate = REPLAY_LOAD * max(1, plan.sharing_workers) / mean_s  # jobs per second
    return [replace(j, submit_time=j.submit_time / rate) for j in jobs]


@dataclass(frozen=True)
class ReplayRound:
    """What one live replay measured (see :func:`replay_fit`)."""

    levels: dict[str, float]  # kind -> worker-timed / predicted beyond fixed_us, net of sharing
    per_peer: float  # c: the slowdown each busy peer adds
    round_trip_us: float  # median wall round trip of a batch beyond its worker's timing
    lone_batches: dict[str, int]
    jct_mean_s: float | None
    # median wall time of a batch from the decision that placed it (its start on the
    # controller's clock, where its jobs' service counts from) to its result, beyond its
    # worker's timing; 0: not timed
    held_us: float = 0.0
    fixed_us: float = 0.0  # a lone batch's time in its worker beyond what scales with it


def replay_once(jobs: Sequence[AttentionJob], data: dict[str, Any], session: Any,
                profile_name: str = "cpu", fixed_c: float | None = None) -> ReplayRound:
    """Replay ``jobs`` with the static policy on ``session``'s workers, priced by ``data``
    (a profile already validated: :func:`replay_fit` parses it once; ``fixed_c``: see
    :func:`fit_worker_path`)."""
    import json
    import tempfile
    from pathlib import Path

    from policies.base import load_policy
    from workers.executor import LiveConfig, run_live

    kinds = {j.id: costmodel.scale_kind(j) for j in jobs}
    runs: list[Run] = []
    beyond: list[float] = []
    held_beyond: list[float] = []

    def record(batch: Any, seconds: float, round_trip: float, held: float) -> None:
        beyond.append(max(0.0, round_trip - seconds))
        held_beyond.append(max(0.0, held - seconds))
        if len(batch.jobs) == 1 and batch.solo_seconds > 0:
            end = time.perf_counter()
            runs.append((kinds[batch.jobs[0]], batch.device, end - seconds, end,
                         batch.solo_seconds))

    with tempfile.TemporaryDirectory(prefix="attnsched-replay-") as tmp:
        path = Path(tmp) / "profile.json"
        path.write_text(json.dumps(data))
        config = LiveConfig(speed=1.0, profiles={profile_name: str(path)}, on_batch=record,
                            decide_timeout=None)
        # A run folder as a real run has: the journal and outputs cost the driver time.
        result = run_live(list(jobs), load_policy("static"), "static", Path(tmp) / "run",
                          config, session=session)
    if result.exit_code != 0:
        raise RuntimeError(f"the calibration replay failed: {result.message}")
    fit = fit_worker_path(runs, fixed_c)
    return ReplayRound(
        levels={k: round(v, 4) for k, v in fit.levels.items()
                if fit.counts[k] >= REPLAY_MIN},
        per_peer=round(fit.per_peer, 4),
        round_trip_us=round(statistics.median(beyond) * 1e6, 3) if beyond else 0.0,
        held_us=round(statistics.median(held_beyond) * 1e6, 3) if held_beyond else 0.0,
        fixed_us=round(fit.fixed_s * 1e6, 3),
        lone_batches=fit.counts,
        jct_mean_s=result.summary.get("jct_mean"))


def combine_rounds(rounds: Sequence[ReplayRound]) -> ReplayRound:
    """Each figure's median over the replays: one replay disturbed by the machine (a
    neighbour's burst on a shared VM) moves a median of three little, a mean a lot."""
    kinds = sorted({k for r in rounds for k in r.levels})
    jcts = [r.jct_mean_s for r in rounds if r.jct_mean_s is not None]
    return ReplayRound(
        levels={k: round(statistics.median(r.levels[k] for r in rounds if k in r.levels), 4)
                for k in kinds},
        per_peer=round(statistics.median(r.per_peer for r in rounds), 4),
        round_trip_us=round(statistics.median(r.round_trip_us for r in rounds), 3),
        held_us=round(statistics.median(r.held_us for r in rounds), 3),
        fixed_us=round(statistics.median(r.fixed_us for r in rounds), 3),
        lone_batches={k: sum(r.lone_batches.get(k, 0) for r in rounds)
                      for k in sorted({k for r in rounds for k in r.lone_batches})},
        jct_mean_s=statistics.median(jcts) if jcts else None)


def replay_fit(plan: Plan, data: dict[str, Any], profile: DeviceProfile, tick: Tick,
               session: Any = None, profile_name: str = "cpu", fixed_c: float | None = None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The profile's live-path figures as a live run pays them, and the raw figures.

    ``profile`` is ``data`` parsed. The updates: ``worker_scale`` set to what
    the run's workers took over what ``profile`` predicts, per kind, beyond
    ``worker_batch_us``, what a lone batch took in its worker whatever its
    size (:func:`fit_worker_path`, :func:`worker_batch`); ``node_sharing`` as
    the workers slowed each other; and ``batch_call_us``, the median wall
    time of a batch beyond its worker's own timing, from the decision that
    placed it to its result in the driver's hands (:func:`batch_call`:
    applying the decision, sending, the result's way back, the driver's loop
    noticing it), which the Ray-path fit of step 4 measures on an idle
    driver.

    The grid and the lone-job fit time one worker on a quiet node, each shape
    run again and again. A live run is not that: its workers compute side by
    side while the driver decides, journals and sends, and every prompt has its
    own length. A short replay through the real live path (``run_live`` with
    the static policy, so every batch is one job, on emulated GPUs as a local
    run uses) measures the difference: the worker-timed seconds against the
    profile's prediction for the same job, a fixed cost per batch plus a
    level per kind, which is folded into ``worker_scale`` (:func:`fold_scale`).
    ``plan.replay_rounds`` replays
    run back to back and each figure is their median: one replay's levels move
    by 5–10% from the next on a shared VM.

    With ``session`` the replay runs on those workers (``attnsched fidelity``
    re-times a profile on its own session); without, it opens one. With
    ``fixed_c`` the profile's node sharing is kept and the levels are taken
    net of it.
    """
    import ray

    from workers.executor import LiveConfig, close_session, open_session

    jobs = replay_jobs(plan, profile)
    sizes: dict[str, list[float]] = {}
    for job in jobs:
        sizes.setdefault(costmodel.scale_kind(job), []).append(
            costmodel.device_seconds(job, profile))
    started = not ray.is_initialized()
    own = session is None
    if own:
        session = open_session(LiveConfig(emulate_gpus=max(1, plan.sharing_workers)))
    try:
        rounds = []
        for i in range(max(1, plan.replay_rounds)):
            tick("live replay" if plan.replay_rounds <= 1
                 else f"live replay {i + 1}/{plan.replay_rounds}")
            rounds.append(replay_once(jobs, data, session, profile_name, fixed_c))
    finally:
        if own:
            close_session(session)
            if started:
                ray.shutdown()
    got = combine_rounds(rounds)
    reference = {"jobs": len(jobs), "load": REPLAY_LOAD, "workers": len(session.workers),
                 "rounds": len(rounds),
                 "lone_batches": got.lone_batches,
                 "worker_level": got.levels,
                 "worker_fixed_us": got.fixed_us,
                 "slowdown_per_busy_peer": got.per_peer,
                 "round_trip_beyond_worker_us": got.round_trip_us,
                 "held_beyond_worker_us": got.held_us,
                 "jct_mean_s": got.jct_mean_s,
                 "per_round": [{"worker_level": r.levels,
                                "worker_fixed_us": r.fixed_us,
                                "slowdown_per_busy_peer": r.per_peer,
                                "round_trip_beyond_worker_us": r.round_trip_us,
                                "held_beyond_worker_us": r.held_us}
                               for r in rounds]}
    lone = data.get("worker_scale", {})
    typical = {kind: statistics.median(v) for kind, v in sizes.items()}
    updates = {"worker_scale": fold_scale(lone, got.levels, typical),
               "worker_batch_us": worker_batch(got, float(data.get("worker_job_us", 0.0))),
               # never below an empty actor call, as the fit's intercept is not
               "batch_call_us": max(float(data.get("actor_call_us", 0.0)),
                                    batch_call(got, float(data.get("decision_us", 0.0))))}
    if fixed_c is None:
        updates["node_sharing"] = sharing_curve(got.per_peer, len(session.workers))
    return updates, reference


def worker_batch(got: ReplayRound, worker_job_us: float) -> float:
    """Microseconds a lone batch costs in its worker beyond its attention and its job's
    cost (``worker_job_us``, which the simulator charges per job on its own)."""
    return round(max(0.0, got.fixed_us - worker_job_us), 3)


def batch_call(got: ReplayRound, decision_us: float) -> float:
    """Microseconds a batch costs beyond its worker's timing, as its jobs' service counts.

    A job's service runs on the controller's clock from the decision that
    placed its batch to its result in the driver's hands. The round trip from
    the send misses the part before it (applying the decision, the journal's
    commit, serializing the jobs: 1.4–1.7 ms a batch in this VM's replays), so
    the whole interval is taken, less the decision, which the simulator
    charges on its own (``decision_us``). A replay from before the interval
    was timed (``held_us`` 0) gives its round trip.
    """
    if got.held_us <= 0:
        return got.round_trip_us
    return round(max(got.round_trip_us, got.held_us - decision_us), 3)


RETIME_JOBS: int | None = None  # jobs of fidelity's re-timing replays (None: calibration's)


def can_retime(data: Any) -> bool:
    """Whether ``data`` (a profile's JSON) was calibrated with a live replay to re-time."""
    return isinstance(data, dict) and "live_replay" in (data.get("reference") or {})


def retimed(data: dict[str, Any], session: Any, profile_name: str = "cpu",
            rounds: int | None = None) -> dict[str, Any]:
    """``data`` with its live-path levels and round trip re-timed now on ``session``'s
    workers.

    A profile describes the machine when it was calibrated; a shared VM's speed
    drifts by 10–20% over hours, which at a queueing load moves mean JCT by
    more than a simulator's own error. The replays calibration ends with
    (``rounds`` of them; calibration's count by default), run against the
    profile as it is, measure how far the workers have moved from it (levels
    of 1 and the profile's fixed cost: nothing moved) and that is folded in.
    Node sharing is kept: one replay's fitted slowdown moved between 0.06 and
    0.24 per busy peer, and the simulator's mean JCT more than doubles across
    that range, so it stays the calibration's median. The replay's jobs are
    its own (``REPLAY_SEED``), never the trace being evaluated.
    """
    profile = profile_from_dict(data)
    plan = full_plan()
    plan = replace(plan, sharing_workers=max(1, len(session.workers)),
                   replay_jobs=RETIME_JOBS or plan.replay_jobs,
                   replay_rounds=rounds or plan.replay_rounds)
    updates, reference = replay_fit(plan, data, profile, _quiet, session, profile_name,
                                    fixed_c=per_peer_slowdown(profile))
    out = {**data, **updates}
    out["reference"] = {**data.get("reference", {}), "retimed": reference}
    when = time.strftime("%Y-%m-%d %H:%M")
    out["source"] = f"{data.get('source', '')}; live path re-timed {when}"
    profile_from_dict(out)
    return out


def per_peer_slowdown(profile: DeviceProfile) -> float:
    """``c`` of the profile's ``node_sharing`` (the inverse of :func:`sharing_curve`), read
    at its most workers: ``efficiency = 1 / (1 + c · (k − 1))``."""
    k, efficiency = max(profile.node_sharing)
    return 0.0 if k <= 1 else max(0.0, (1.0 / efficiency - 1.0) / (k - 1))


def _quiet(_: str) -> None:
    pass


Run = tuple[str, str, float, float, float]  # kind, device, start, end, predicted seconds
FIT_ROUNDS = 2000  # most alternations of the worker-path fit (levels, then c)


def busy_peers(runs: Sequence[Run]) -> list[float]:
    """Each run's busy peers, time-averaged: its overlap with other devices' runs over its
    length (1.0: one other worker computed the whole time)."""
    out = []
    for _, device, start, end, _ in runs:
        length = max(end - start, 1e-12)
        out.append(sum(max(0.0, min(end, e) - max(start, s)) for _, d, s, e, _ in runs
                       if d != device) / length)
    return out


@dataclass(frozen=True)
class WorkerFit:
    """What a replay's lone batches say of the live worker path (:func:`fit_worker_path`)."""

    levels: dict[str, float]  # kind -> worker-timed over predicted seconds, beyond fixed_s
    fixed_s: float  # a lone batch's time in its worker beyond what its seconds scale with
    per_peer: float  # c: the slowdown each busy peer adds
    counts: dict[str, int]  # lone batches of each kind


def fit_worker_path(runs: Sequence[Run], fixed_c: float | None = None) -> WorkerFit:
    """Fit ``worker-timed = (fixed + level(kind) · predicted) · (1 + c · peers)``.

    The simulator slows a worker while its node's other workers compute (the
    ``node_sharing`` curve), so the levels must be net of that, and the curve
    is best measured where it applies: inside this live run, on its own job
    mix. A synthetic measurement (k workers each looping one batch) slows
    every job by the same share, but here a short prompt or decode hardly
    slows while a long training step does.

    ``fixed`` is there because a live worker's call costs it a millisecond or
    two whatever the job (its thread waking, the launch, its loop, while its
    peer and the driver share the cores), which the lone-job fit on a quiet
    node does not see. A ratio per kind takes that in as a share: the
    shortest quarter of prompts ran at 1.4–1.7× their prediction in one
    replay and the longest at 0.8–0.9×, and the long jobs, which make a
    queue, were priced 10–30% too dear. With ``fixed`` the ratio is flat
    across sizes within 5–10%.

    Least squares weighted by 1 / predicted (a run's noise grows with its
    length), so each kind's worker-timed total equals its fitted total: the
    load a replay puts on its workers is what the simulator charges. Given
    ``c`` the rest is linear, and given those ``c`` is; they are solved in
    turn until ``c`` holds still. Each run's ratio is clipped to 0.25–4× its
    kind's median first, so one disturbed run cannot set the slope. ``fixed``
    is never negative, and is 0 where the sizes cannot tell it from the
    levels. With ``fixed_c`` nothing about sharing is fitted.
    """
    import numpy as np

    if not runs:
        return WorkerFit({}, 0.0, fixed_c or 0.0, {})
    kinds = sorted({run[0] for run in runs})
    kind = np.array([kinds.index(run[0]) for run in runs])
    solo = np.array([run[4] for run in runs])
    ratio = np.array([(run[3] - run[2]) / run[4] for run in runs])
    middle = np.array([np.median(ratio[kind == k]) for k in range(len(kinds))])[kind]
    took = np.clip(ratio, 0.25 * middle, 4.0 * middle) * solo
    peers = np.array(busy_peers(runs))
    weight = 1.0 / np.sqrt(solo)  # on each residual: variance ∝ predicted seconds
    design = np.zeros((len(runs), 1 + len(kinds)))
    design[np.arange(len(runs)), 1 + kind] = solo
    design[:, 0] = 1.0
    c = 0.0 if fixed_c is None else fixed_c
    for _ in range(FIT_ROUNDS):
        shared = design * (1.0 + c * peers)[:, None]
        coef, _, rank, _ = np.linalg.lstsq(shared * weight[:, None], took * weight, rcond=None)
        if rank < design.shape[1] or coef[0] < 0:  # no intercept to be told apart, or < 0
            coef = np.concatenate([[0.0], np.linalg.lstsq(
                shared[:, 1:] * weight[:, None], took * weight, rcond=None)[0]])
        if fixed_c is not None:
            break
        alone = design @ coef  # predicted time with no peer busy
        bottom = float(np.sum((alone * peers) ** 2 / solo))
        before = c
        c = max(0.0, float(np.sum(alone * peers * (took - alone) / solo)) / bottom) \
            if bottom > 0 else 0.0
        if abs(c - before) < 1e-9:
            break
    return WorkerFit(levels={k: float(coef[1 + i]) for i, k in enumerate(kinds)},
                     fixed_s=float(coef[0]), per_peer=c,
                     counts={k: int(np.sum(kind == i)) for i, k in enumerate(kinds)})


def sharing_curve(c: float, workers: int) -> list[list[float]]:
    """``node_sharing`` for ``workers`` workers of a node, ``c`` slower per busy peer."""
    return [[k, round(1.0 / (1.0 + c * (k - 1)), 4)] for k in range(1, max(2, workers) + 1)]


def fold_scale(worker_scale: dict[str, list[list[float]]], levels: dict[str, float],
               devices: dict[str, float]) -> dict[str, list[list[float]]]:
    """``worker_scale`` with each kind's curve multiplied by the replay's level for it.

    The lone-job curve keeps its shape across sizes; the replay sets its level
    under a live run's conditions. A kind the lone-job fit kept no point for
    gets a flat curve at the replay's level (``devices``: a typical device time).
    """
    out = {k: [list(p) for p in v] for k, v in worker_scale.items()}
    for kind, level in levels.items():
        if kind in out:
            out[kind] = [[x, round(y * level, 4)] for x, y in out[kind]]
        elif kind in devices:
            out[kind] = [[float(f"{devices[kind]:.6g}"), level]]
    return out
