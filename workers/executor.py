"""Live runs: the same controller and policy, driving worker actors on Ray.

``run_live`` starts (or joins) Ray, discovers the cluster, creates one
long-lived :class:`~workers.worker.AttentionWorker` per device pinned to its
node, then replays the trace in real time (scaled by ``speed``): arrivals are
submitted when due, the policy decides, batches go to their workers, and
completions and telemetry come back through ``ray.wait`` without busy-waiting.
"""

from __future__ import annotations

import itertools
import logging
import os
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler.cluster import ClusterSpec, for_live_run, from_ray_nodes
from scheduler.controller import Controller, PolicyFailure
from scheduler.errors import InputError
from scheduler.jobs import Job
from scheduler.journal import FILE as JOURNAL_FILE
from scheduler.journal import Journal, RunIdentity, file_digest
from scheduler.metrics import RunOutputs
from scheduler.pricing import ClusterCost, load_profiles
from scheduler.sim.runner import RunResult
from scheduler.state import Batch
from scheduler.traces import DEFAULT_MODEL, detect_format
from workers.fleet import Fleet, create_workers
from workers.ray_metrics import RayMetrics

if TYPE_CHECKING:
    from scheduler.runs import RunSpec

log = logging.getLogger(__name__)
IDLE_ROUNDS = 3
PROGRESS_EVERY = 0.2  # seconds of wall time between progress reports


@dataclass(frozen=True, slots=True)
class LiveProgress:
    """What a live run's progress bar shows; sent at most every ``PROGRESS_EVERY`` s."""

    done: int  # jobs finished, completed or failed
    failed: int
    clock: float  # trace seconds
    rate: float  # jobs finished per wall-clock second since the run began
    util: float | None  # mean over devices of each one's latest telemetry sample
    queued: int = 0  # jobs waiting in the controller
    # device -> (latest utilization or None, jobs running there, worker up)
    devices: Mapping[str, tuple[float | None, int, bool]] = field(default_factory=dict)


@dataclass
class LiveConfig:
    """How a live run uses Ray. ``memory_fraction`` scales every device's memory.

    The scaled memory is both what the controller plans with and the budget
    each worker enforces, so a policy never packs past it; the headroom is for
    what the cost model does not see (allocator slack, the CUDA context).
    """

    address: str | None = None
    emulate_gpus: int = 0
    cpu_workers: int = 0
    num_cpus: int | None = None
    speed: float = 1.0
    telemetry_interval: float = 1.0
    seed: int = 0
    memory_fraction: float = 0.9
    slow: Mapping[str, float] = field(default_factory=dict)  # test knob: device -> factor
    # Test knob: device -> bytes its worker enforces instead of the planned memory, as a
    # device smaller than the cluster spec says would (a MIG slice).
    worker_budget: Mapping[str, int] = field(default_factory=dict)
    progress: Callable[[LiveProgress], None] | None = None
    # Profile name -> file: time the devices with a calibrated profile instead of
    # the shipped one (e.g. ``{"cpu": "profile.json"}``).
    profiles: Mapping[str, str] = field(default_factory=dict)
    # Continue the run journalled in the output folder instead of starting afresh.
    resume: bool = False
    # Start afresh even over an unfinished run's journal (deleting it).
    overwrite: bool = False
    # (policy, name) to switch to when the policy fails repeatedly; None: stop the run.
    fallback: tuple[Any, str] | None = None
    # Wall seconds a policy's decide() may take before it counts as a failure.
    decide_timeout: float | None = 10.0
    # Port of the local Ray's Prometheus endpoint (attnsched's metrics); None: Ray picks.
    metrics_port: int | None = None
    # Called with each batch that ran, the seconds its worker timed it, the wall seconds
    # from sending it to its result, and the wall seconds from its start on the
    # controller's clock (the decision that placed it) to its result: how calibration
    # sees what a live run's workers and round trips really cost
    # (workers/calibrate_live.py).
    on_batch: Callable[[Batch, float, float, float], None] | None = None


def start_ray(config: LiveConfig) -> None:
    """Join ``address``, or start an embedded Ray bound to loopback (nobody else needs it)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    try:
        if config.address:
            ray.init(address=config.address, log_to_driver=False, configure_logging=False)
        else:
            # address="local": always a new embedded Ray, never a cluster someone else
            # started on this machine (ray.init() alone would join the latest one).
            extra: dict[str, Any] = {}
            if config.metrics_port:
                extra["_metrics_export_port"] = config.metrics_port
            ray.init(address="local", num_cpus=config.num_cpus,
                     num_gpus=config.emulate_gpus or None, **extra,
                     include_dashboard=False, log_to_driver=False, configure_logging=False,
                     _node_ip_address="127.0.0.1")
    except (ConnectionError, RuntimeError, ValueError) as e:
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if config.address:
            hint = (f"cannot reach Ray at {config.address} ({cause}); start it first (`ray "
                    "start --head` here, `ray up cluster.yaml` for a cluster) or leave out "
                    "--address to run on a private local Ray")
        else:
            hint = (f"cannot start a local Ray ({cause}); check free memory and /tmp space, "
                    "or join a running one with --address auto")
        raise InputError(hint, field="--address") from None


def metrics_endpoints() -> list[str]:
    """Where each node serves its Prometheus metrics, attnsched's among them."""
    import ray

    return sorted(f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
                  for n in ray.nodes() if n.get("Alive")  # type: ignore[no-untyped-call]
                  and n.get("MetricsExportPort"))


def discover(config: LiveConfig) -> ClusterSpec:
    import ray

    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    return live_cluster(nodes, config, local_cuda=not config.address and _has_cuda())


def live_cluster(nodes: list[dict[str, Any]], config: LiveConfig,
                 local_cuda: bool) -> ClusterSpec:
    """The cluster a live run schedules on, from ``ray.nodes()``.

    Which GPUs are only declared slots (computing on the CPU) is decided per
    node: on a cluster the driver's own node says nothing about the others (the
    head of cluster.yaml has no GPU), but Ray labels every GPU it detects with
    ``accelerator_type:MODEL``, so an unlabelled GPU slot is a declared one.
    """
    spec = from_ray_nodes(nodes)
    if config.address:
        unlabelled = {n.get("NodeID") for n in nodes if not any(
            k.startswith("accelerator_type:") for k in n.get("Resources") or {})}
        declared = {n.name for n in spec.nodes if n.gpus and n.ray_id in unlabelled}
    else:
        declared = {n.name for n in spec.nodes} if config.emulate_gpus or not local_cuda \
            else set()
    real = for_live_run(spec, emulated_gpus=False, cpu_workers=config.cpu_workers)
    fake = for_live_run(spec, emulated_gpus=True, cpu_workers=config.cpu_workers)
    spec = ClusterSpec(tuple(f if f.name in declared else r
                             for r, f in zip(real.nodes, fake.nodes, strict=True)), spec.source)
    if not spec.devices:
        raise InputError("the Ray cluster offers no device to run on", field="--address")
    return budgeted(spec, config.memory_fraction)


def budgeted(spec: ClusterSpec, fraction: float) -> ClusterSpec:
    """Each device's memory scaled to its budget: what the controller may plan with."""
    nodes = tuple(replace(node, devices=tuple(
        replace(d, memory_bytes=int(d.memory_bytes * fraction)) for d in node.devices))
        for node in spec.nodes)
    return ClusterSpec(nodes, spec.source)


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@dataclass
class LiveSession:
    """Ray joined, the cluster discovered and one warm worker per device."""

    spec: ClusterSpec
    workers: dict[str, Any]


def open_session(config: LiveConfig) -> LiveSession:
    start_ray(config)
    spec = discover(config)
    return LiveSession(spec, create_workers(spec, config))


def close_session(session: LiveSession) -> None:
    import ray

    for worker in session.workers.values():
        ray.kill(worker)


def run_identity(spec: RunSpec | None, config: LiveConfig, policy: str) -> RunIdentity:
    """The one place a live run's identity is built (``run`` and the API, via ``live_run``).

    Without ``spec`` (jobs handed over in memory) the trace is unknown and
    only the policy and the cluster options are recorded.
    """
    cluster = RunIdentity(
        policy=policy, seed=config.seed, emulate_gpus=config.emulate_gpus,
        cpu_workers=config.cpu_workers, memory_fraction=config.memory_fraction,
        address=config.address, slow=dict(sorted(config.slow.items())),
        profiles={name: file_digest(Path(path), field="--profile")
                  for name, path in sorted(config.profiles.items())})
    if spec is None:
        return cluster
    return replace(cluster, trace=str(spec.trace),
                   trace_digest=file_digest(spec.trace, field="trace"),
                   format=detect_format(spec.trace, spec.fmt),
                   model=spec.model or DEFAULT_MODEL, token_scale=spec.token_scale,
                   limit=spec.limit, policy_options=dict(sorted(spec.policy_options.items())))


def _prepare_outputs(out: Path | None, resume: bool) -> int:
    """On resume, move the interrupted session's partial outputs aside; returns its number.

    The jobs table is rebuilt from the journal, so the new outputs cover the
    whole trace; the earlier decisions and telemetry stay readable in
    ``session-N/``.
    """
    if out is None or not resume:
        return 0
    n = 1
    while (out / f"session-{n}").exists():
        n += 1
    aside = out / f"session-{n}"
    aside.mkdir()
    for name in ("jobs.parquet", "telemetry.parquet", "decisions.jsonl", "summary.json",
                 "run.json", "report.md", "plots"):
        if (out / name).exists():
            (out / name).rename(aside / name)
    return n


def run_live(jobs: Iterable[Job], policy: Any, policy_name: str, out: Path | None,
             config: LiveConfig, context: Mapping[str, Any] | None = None,
             session: LiveSession | None = None,
             identity: RunIdentity | None = None) -> RunResult:
    """Replay ``jobs`` on real workers; writes the same outputs as the simulator.

    Without ``session`` it opens one (starting Ray and the workers) and closes
    it at the end; with one, the workers are reused and left running. With
    ``out``, every job's state changes go to its journal first, and
    ``config.resume`` continues the run that journal describes, if
    ``identity`` (from :func:`run_identity`) matches the one it recorded.
    """
    import ray

    wall0 = time.perf_counter()
    if config.resume and out is None:
        raise InputError("resuming needs the run's folder", field="--resume")
    journal = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        journal = Journal(out / JOURNAL_FILE,
                          identity or run_identity(None, config, policy_name),
                          resume=config.resume, overwrite=config.overwrite)
    resumed = journal.resumed if journal is not None else None
    aside = _prepare_outputs(out, config.resume)
    own = session is None
    live = session or open_session(config)
    spec = live.spec
    fleet = Fleet(spec, config, live.workers)
    dead_at_start: list[str] = []  # a reused worker that died in an earlier run
    if not own:
        for device, ref in [(d, w.reset.remote()) for d, w in fleet.handles.items()]:
            try:
                ray.get(ref, timeout=60)
            except ray.exceptions.RayActorError:
                dead_at_start.append(device)
    profiles = load_profiles(spec, config.profiles)
    cost = ClusterCost(spec, profiles)
    metrics = RayMetrics(policy_name)
    outputs = RunOutputs(out, {d.id: d.node for d in spec.devices}, observer=metrics)
    controller = Controller(spec, cost, policy, policy_name=policy_name, seed=config.seed,
                            sink=outputs, journal=journal, decide_timeout=config.decide_timeout,
                            can_preempt=False)
    log.info("live run: policy %s on %d devices of %d nodes%s", policy_name,
             len(spec.devices), len(spec.nodes),
             f", journal {journal.path}" if journal is not None else "")
    start_clock = 0.0
    if resumed is not None:
        log.info("resuming session %d: %d jobs already finished, clock at %.3f s",
                 resumed.session, len(resumed.finished), resumed.clock)
        for record in resumed.finished.values():
            controller.restore(record)
        start_clock = resumed.clock
        controller.now = start_clock
    done_before: Mapping[str, Any] = resumed.finished if resumed is not None else {}
    stream: Iterator[Job] = (j for j in jobs if j.id not in done_before)
    upcoming = next(stream, None)
    in_flight: dict[Any, Batch] = {}
    sent: dict[Any, float] = {}  # wall clock at each batch's send, for on_batch
    probes: dict[Any, str] = {}
    utils: list[float] = []
    latest: dict[str, float] = {}  # device -> utilization in its latest sample
    speed = config.speed
    t0 = time.monotonic()
    reported = t0 - PROGRESS_EVERY  # the first report goes out at once
    fallbacks: list[str] = []

    def clock() -> float:
        return max(controller.now, start_clock + (time.monotonic() - t0) * speed)

    def report(force: bool = False) -> None:
        nonlocal reported
        wall = time.monotonic()
        if config.progress is None or (wall - reported < PROGRESS_EVERY and not force):
            return
        reported = wall
        done = outputs.completed + outputs.failed
        util = sum(latest.values()) / len(latest) if latest else None
        devices = {d: (latest.get(d), dev.running_jobs, dev.up)
                   for d, dev in controller.devices.items()}
        config.progress(LiveProgress(done, outputs.failed, clock(),
                                     done / max(wall - t0, 1e-9), util,
                                     len(controller.pending), devices))

    def forget_device(device: str) -> None:
        for ref in [r for r, b in in_flight.items() if b.device == device]:
            del in_flight[ref]
        for ref in [r for r, d in probes.items() if d == device]:
            del probes[ref]
        latest.pop(device, None)

    def worker_died(device: str, why: str) -> None:
        """Take the device (or its whole node) from the controller; restart its worker."""
        now = clock()
        node = fleet.lost(device)
        if node is None:
            forget_device(device)
            controller.device_down(device, now, f"worker died: {why}")
        else:
            node_gone(node, now)

    def node_gone(node: str, now: float) -> None:
        log.warning("node %s is gone; its work moves to the other nodes", node)
        for device in controller.nodes[node].spec.devices:
            forget_device(device.id)
        controller.node_down(node, now, f"node {node} lost")

    def decide(event: str) -> None:
        try:
            step = controller.decide(clock(), event)
        except PolicyFailure as e:
            if config.fallback is None or fallbacks:
                raise
            fallback, name = config.fallback
            fallbacks.append(f"{e}; fell back to {name!r}")
            log.warning("policy %r failed repeatedly (%s); falling back to %r", policy_name,
                        e, name)
            controller.switch_policy(fallback, name, str(e))
            step = controller.decide(clock(), event)
        if journal is not None:
            journal.commit()  # what workers are about to run is on disk first
        for batch in step.started:
            jobs_ = [controller.records[j].job for j in batch.jobs]
            ref = fleet.handles[batch.device].run.remote(batch.id, jobs_, batch.solo_seconds,
                                                         batch.flops, batch.memory)
            in_flight[ref] = batch
            if config.on_batch is not None:
                sent[ref] = time.perf_counter()

    for device in dead_at_start:
        worker_died(device, "dead before this run")
    next_tick, submitted, idle, exit_code, message = (
        start_clock + config.telemetry_interval, 0, 0, 0, None)
    try:
        while upcoming is not None or in_flight or controller.records:
            event: str | None = None
            now = clock()
            while upcoming is not None and upcoming.submit_time <= now:
                attempts = resumed.attempts.get(upcoming.id, 0) if resumed else 0
                controller.submit(upcoming, now, attempts)
                submitted += 1
                event = "arrival"
                upcoming = next(stream, None)
            refs = [*in_flight, *probes, *fleet.restarts]
            done = ray.wait(refs, num_returns=len(refs), timeout=0)[0] if refs else []
            for ref in done:
                if ref in fleet.restarts:
                    restart = fleet.restarts.pop(ref)
                    try:
                        ray.get(ref)
                    except ray.exceptions.RayError as e:
                        worker_died(restart.device, type(e).__name__)
                    else:
                        controller.device_up(restart.device, clock())
                        event = event or "device_up"
                elif ref in probes:
                    device = probes.pop(ref)
                    try:
                        sample = ray.get(ref)
                    except ray.exceptions.RayActorError as e:
                        worker_died(device, type(e).__name__)
                        event = event or "device_down"
                        continue
                    controller.observe([sample])
                    outputs.telemetry([sample])
                    utils.append(sample.util)
                    latest[sample.device] = sample.util
                elif ref in in_flight:
                    batch = in_flight.pop(ref)
                    sent_at = sent.pop(ref, None)
                    try:
                        result = ray.get(ref)
                        error = result.error
                        if config.on_batch is not None and error is None \
                                and sent_at is not None:
                            config.on_batch(batch, result.seconds,
                                            time.perf_counter() - sent_at,
                                            (clock() - batch.start) / speed)
                    except ray.exceptions.RayActorError as e:
                        worker_died(batch.device, type(e).__name__)
                        event = "device_down"
                        continue
                    except ray.exceptions.RayError as e:
                        error = f"worker failed: {type(e).__name__}"
                    controller.batch_done(batch.id, clock(), error)
                    event = "completion"
            for node in fleet.overdue():
                node_gone(node, clock())
                event = event or "device_down"
            if now >= next_tick:
                for device, worker in fleet.handles.items():
                    if controller.devices[device].up:
                        probes[worker.telemetry.remote(now, len(controller.pending))] = device
                next_tick = now + config.telemetry_interval
                event = event or "telemetry"
            if event is not None:
                decide(event)
                # Idle with work queued after an answer (not an error: errors lead to
                # the fallback or stop the run) that placed nothing: the policy is stuck.
                if not in_flight and not fleet.restarts and controller.pending \
                        and upcoming is None and controller.failures_in_row == 0:
                    idle += 1
                    if idle >= IDLE_ROUNDS:
                        message = controller.give_up_idle()
                        exit_code = 0 if message is None else 1
                        break
                else:
                    idle = 0
            if journal is not None:
                journal.commit()
            report()
            metrics.sample(controller)
            # Sleep until something finishes, the next job is due or telemetry is.
            due = [next_tick]
            if upcoming is not None:
                due.append(upcoming.submit_time)
            wait_s = max(0.0, (min(due) - clock()) / speed)
            refs = [*in_flight, *probes, *fleet.restarts]
            if refs:
                ray.wait(refs, num_returns=1, timeout=min(wait_s, 1.0))
            elif wait_s > 0:
                time.sleep(min(wait_s, 1.0))
    except PolicyFailure as e:
        message, exit_code = str(e), 1
        controller.fail_unfinished(f"run stopped: {e}")
        for job in itertools.chain([upcoming] if upcoming else [], stream):
            controller.refuse(job, f"run stopped before it arrived: {e}")
    except BaseException:
        outputs.abort()
        if journal is not None:
            journal.close()
        raise
    report(force=True)
    metrics.sample(controller, force=True)
    if not own and (in_flight or probes):
        # A stopped run may leave batches running; the next run on these workers
        # must find them idle.
        ray.wait(list(in_flight) + list(probes), num_returns=len(in_flight) + len(probes),
                 timeout=120)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = outputs.summary(policy=policy_name, mode="live",
                              device_util_mean=sum(utils) / len(utils) if utils else None,
                              **dict(context or {}), devices=len(spec.devices),
                              speed=speed, memory_fraction=config.memory_fraction,
                              peak_rss_mib=round(peak_rss, 1))
    run_info = {"wall_seconds": time.perf_counter() - wall0, "jobs_submitted": submitted,
                "peak_rss_mib": peak_rss, "exit_code": exit_code, "message": message,
                "cluster": spec.source, "workers": sorted(fleet.handles),
                "worker_deaths": fleet.deaths, "worker_restarts": sum(fleet.count.values()),
                "nodes_lost": sorted(fleet.dead_nodes),
                "late_results_ignored": controller.late_results
                + (journal.duplicates if journal else 0),
                "policy_fallback": fallbacks[0] if fallbacks else None,
                "resumed_from_session": aside or None,
                "jobs_restored": len(resumed.finished) if resumed else 0,
                "metrics_endpoints": metrics_endpoints()}
    outputs.close(summary, run_info)
    if journal is not None:
        journal.finish()  # after the outputs: a finished journal means a complete folder
    if own:
        live.workers = fleet.handles
        close_session(live)
    elif session is not None:
        session.workers = fleet.handles
    return RunResult(summary, run_info, exit_code, message)
