"""Replay a job stream against a simulated cluster with any policy.

The loop is SimPy's: pop the earliest event, let the controller handle it,
and once every event of that instant is handled, ask the policy once. The
trace is pulled lazily, one arrival ahead, so memory follows the jobs in
flight, not the trace length.
"""

from __future__ import annotations

import itertools
import logging
import math
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from scheduler.cluster import ClusterSpec
from scheduler.controller import Controller, PolicyFailure, Sink
from scheduler.errors import InputError
from scheduler.jobs import Job
from scheduler.metrics import RunOutputs
from scheduler.pricing import ClusterCost
from scheduler.profiles import DeviceProfile
from scheduler.sim.engine import ARRIVAL, DECIDE, FAULT, FINISH, TELEMETRY, EventQueue
from scheduler.sim.executor import LiveCosts, SimExecutor

log = logging.getLogger(__name__)
IDLE_ROUNDS = 3  # decision rounds on an idle cluster before leftover jobs are failed


class Latencies:
    """Decision times in a fixed log-spaced histogram (1 ns to 100 s, ~1.2% per bin).

    A run makes millions of decisions; keeping each time would grow with the
    trace, and run.json's p50/p99 need the bin, not the exact value.
    """

    LOW, HIGH, BINS = 1e-9, 1e2, 2_000

    def __init__(self) -> None:
        self.counts = [0] * (self.BINS + 2)  # plus under- and overflow
        self._scale = self.BINS / math.log(self.HIGH / self.LOW)
        self._n = 0

    def add(self, seconds: float) -> None:
        self._n += 1
        if seconds < self.LOW:
            self.counts[0] += 1
            return
        index = 1 + int(math.log(seconds / self.LOW) * self._scale)
        self.counts[min(self.BINS + 1, index)] += 1

    def __len__(self) -> int:
        return self._n

    def quantile(self, q: float) -> float | None:
        """The geometric middle of the bin holding the ``q`` quantile (None: no samples)."""
        n = len(self)
        if not n:
            return None
        index = int(np.searchsorted(np.cumsum(self.counts), min(n - 1, int(n * q)) + 1))
        return self.LOW * math.exp((index - 0.5) / self._scale) if index else self.LOW


@dataclass(frozen=True)
class Fault:
    """``device`` or ``node`` lost at ``time`` seconds."""

    kind: str  # "device" | "node"
    target: str
    time: float


class SimProgress(NamedTuple):
    """What a simulation's progress bar shows (a tuple: it crosses process queues)."""

    submitted: int  # jobs that have arrived
    clock: float  # trace seconds
    queued: int  # jobs waiting in the controller
    busy: int  # devices running a batch
    devices: int


@dataclass
class SimConfig:
    seed: int = 0
    slots: int = 1
    telemetry_interval: float = 1.0
    faults: tuple[Fault, ...] = ()
    slow: Mapping[str, float] = field(default_factory=dict)
    max_policy_failures: int = 10
    progress: Callable[[SimProgress], None] | None = None
    observer: Sink | None = None
    # Scheduling quantum: consult the policy at most once per this many simulated
    # seconds (0: after every instant with events). Real schedulers run in
    # cycles too; a quantum trades reaction time for simulator speed.
    decision_interval: float = 0.0
    # Model the live path's own costs (scheduler.sim.executor.LiveCosts); None:
    # devices cost exactly what the cost model predicts.
    live: LiveCosts | None = None


@dataclass
class RunResult:
    summary: dict[str, Any]
    run_info: dict[str, Any]
    exit_code: int  # 0 ok, 1 the run stopped early (policy failure, jobs left unplaced)
    message: str | None = None


def parse_faults(items: Iterable[str], kind: str, spec: ClusterSpec) -> tuple[Fault, ...]:
    """``TARGET@SECONDS`` items for ``--fail`` (devices) or ``--fail-node`` (nodes)."""
    names = {d.id for d in spec.devices} if kind == "device" else {n.name for n in spec.nodes}
    option = "--fail" if kind == "device" else "--fail-node"
    out = []
    for item in items:
        target, sep, when = item.rpartition("@")
        try:
            t = float(when)
            if not sep or not math.isfinite(t) or t < 0:
                raise ValueError
        except ValueError:
            raise InputError(f"expected {kind.upper()}@SECONDS, got {item!r}",
                             field=option) from None
        if target not in names:
            sample = ", ".join(sorted(names)[:4])
            raise InputError(f"no {kind} {target!r}; e.g. {sample}", field=option)
        out.append(Fault(kind, target, t))
    return tuple(out)


def simulate(jobs: Iterable[Job], spec: ClusterSpec, profiles: Mapping[str, DeviceProfile],
             policy: Any, policy_name: str, out: Path | None = None,
             config: SimConfig | None = None, context: Mapping[str, Any] | None = None
             ) -> RunResult:
    """Run the whole trace; write outputs to ``out`` when given."""
    config = config or SimConfig()
    wall0 = time.perf_counter()
    cost = ClusterCost(spec, profiles)
    outputs = RunOutputs(out, {d.id: d.node for d in spec.devices}, config.observer)
    latencies = Latencies()
    controller = Controller(spec, cost, policy, policy_name=policy_name, seed=config.seed,
                            slots=config.slots, sink=outputs,
                            max_policy_failures=config.max_policy_failures)
    events = EventQueue()
    executor = SimExecutor(controller.devices, events, config.slow, config.live)
    for fault in config.faults:
        events.push(fault.time, FAULT, fault)
    stream: Iterator[Job] = iter(jobs)
    arrivals_left = _push_next(stream, events)
    if config.telemetry_interval > 0:
        events.push(config.telemetry_interval, TELEMETRY, None)
    exit_code, message, submitted, idle = 0, None, 0, 0
    now, next_decide, decide_queued = 0.0, 0.0, False
    instant_event: str | None = None  # what to tell the policy about this instant
    try:
        while len(events):
            now, kind, payload = events.pop()
            handled = _handle(kind, payload, now, controller, executor, events, outputs,
                              config, arrivals_left)
            instant_event = handled or instant_event
            if kind == ARRIVAL:
                submitted += 1
                arrivals_left = _push_next(stream, events)
                if config.progress and submitted % 4096 == 0:
                    config.progress(SimProgress(
                        submitted, now, len(controller.pending),
                        sum(bool(d.running) for d in controller.devices.values()),
                        len(controller.devices)))
            if kind == DECIDE:
                decide_queued = False
            if events.peek_time() == now:
                continue  # decide once per instant, after every event of it
            event, instant_event = instant_event, None
            if event is None:
                continue  # only stale events (superseded finish times) this instant
            if now < next_decide:  # inside the quantum: decide at its end instead
                if not decide_queued:
                    events.push(next_decide, DECIDE, None)
                    decide_queued = True
                continue
            next_decide = now + config.decision_interval
            t0 = time.perf_counter()
            step = controller.decide(now, event)
            latencies.add(time.perf_counter() - t0)
            for batch in step.cancelled:
                executor.finish(batch, now, completed=False)
            for batch in step.started:
                executor.start(batch, now)
            if controller.batches or not controller.pending or arrivals_left:
                idle = 0  # a pending fault cannot help: it only removes capacity
                continue
            # Nothing runs, nothing will arrive: only the policy can make progress.
            idle += 1
            if idle >= IDLE_ROUNDS:
                message = controller.give_up_idle()
                exit_code = 0 if message is None else 1
                break
            if config.telemetry_interval <= 0:
                events.push(now + 1.0, TELEMETRY, None)
        if controller.records and exit_code == 0:
            # The event queue ran dry with work unfinished: never end silently.
            message = f"the simulation ended with {len(controller.records)} jobs unfinished"
            controller.fail_unfinished(message)
            exit_code = 1
    except PolicyFailure as e:
        message, exit_code = str(e), 1
        controller.fail_unfinished(f"run stopped: {e}")
        # Jobs that had not arrived yet are accounted for too, never silently dropped.
        waiting = [p for _, k, p in _drain(events) if k == ARRIVAL]
        for job in itertools.chain(waiting, stream):
            controller.refuse(job, f"run stopped before it arrived: {e}")
    except BaseException:
        outputs.abort()  # e.g. a malformed row mid-trace: leave readable files, no summary
        raise
    makespan = outputs.last_end - outputs.first_submit if outputs.completed else 0.0
    util = executor.utilization(makespan)
    summary = outputs.summary(policy=policy_name, mode="sim", device_util_mean=util,
                              **dict(context or {}))
    p50, p99 = latencies.quantile(0.5), latencies.quantile(0.99)
    run_info = {
        "wall_seconds": time.perf_counter() - wall0,
        "jobs_submitted": submitted,
        "decide_calls": len(latencies),
        "decide_ms_p50": None if p50 is None else p50 * 1e3,
        "decide_ms_p99": None if p99 is None else p99 * 1e3,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "exit_code": exit_code, "message": message,
    }
    outputs.close(summary, run_info)
    return RunResult(summary, run_info, exit_code, message)


def _drain(events: EventQueue) -> Iterator[tuple[float, int, Any]]:
    while len(events):
        yield events.pop()


def _push_next(stream: Iterator[Job], events: EventQueue) -> bool:
    job = next(stream, None)
    if job is None:
        return False
    events.push(job.submit_time, ARRIVAL, job)
    return True


def _handle(kind: int, payload: Any, now: float, controller: Controller,
            executor: SimExecutor, events: EventQueue, outputs: RunOutputs,
            config: SimConfig, arrivals_left: bool) -> str | None:
    if kind == ARRIVAL:
        controller.submit(payload, now)
        return "arrival"
    if kind == FINISH:
        batch_id, version, device = payload
        batch = controller.batches.get(batch_id)
        if batch is None or not executor.is_current(batch_id, version, device):
            return None  # superseded by a reschedule, or cancelled
        executor.finish(batch, now, completed=True)
        controller.batch_done(batch_id, now)
        return "completion"
    if kind == DECIDE:
        return "tick"
    if kind == FAULT:
        hit = (controller.device_down(payload.target, now, f"device {payload.target} failed")
               if payload.kind == "device" else
               controller.node_down(payload.target, now, f"node {payload.target} failed"))
        for batch in hit:
            executor.finish(batch, now, completed=False)
        return "failure"
    if payload is not None:  # samples taken a round trip ago reach the controller now
        controller.observe(payload)
        return None  # live, a sample arriving triggers no decision of its own
    samples = executor.sample(now, len(controller.pending))
    outputs.telemetry(samples)
    if config.live is not None and config.live.telemetry_s > 0:
        events.push(now + config.live.telemetry_s * config.live.time_scale, TELEMETRY, samples)
    else:
        controller.observe(samples)
    if config.telemetry_interval > 0 and (controller.batches or controller.pending
                                          or arrivals_left):
        events.push(now + config.telemetry_interval, TELEMETRY, None)
    return "telemetry"
