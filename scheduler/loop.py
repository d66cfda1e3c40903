"""The one run loop: simulated and live runs differ only in their clock and executor.

As in SimPy, an environment pops the earliest event, lets the controller
handle it and, once every event of that instant is handled, asks the
policy once. The clock (:mod:`scheduler.clocks`) is simulated time or the
wall clock; the executor runs batches on simulated devices or on Ray
workers. The loop alone owns arrivals, telemetry ticks,
the decision quantum, the idle give-up, the policy fallback, the refusal of
jobs that never arrived, and the summary and run info.
"""

from __future__ import annotations

import itertools
import logging
import resource
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from scheduler.clocks import Clock
from scheduler.events import BatchDone, DeviceDown, DeviceUp, Event, NodeDown, RunResult
from scheduler.inbox import Cancel
from scheduler.jobs import Job
from scheduler.latencies import Latencies
from scheduler.policy import PolicyFailure
from scheduler.sim.engine import ARRIVAL, CLIENT, DECIDE, TELEMETRY
from scheduler.state import Batch

if TYPE_CHECKING:
    from scheduler.controller import Controller
    from scheduler.metrics import RunOutputs

log = logging.getLogger(__name__)
IDLE_ROUNDS = 3  # decision rounds on an idle cluster before leftover jobs are failed


class Executor(Protocol):
    """Runs what the controller started; reports back through the clock's events."""

    mode: str  # "sim" | "live": the summary's mode

    def start(self, batches: Sequence[Batch], now: float) -> None: ...

    def cancel(self, batches: Sequence[Batch], now: float) -> None:
        """Stop (or stop waiting for) batches the controller took back."""
        ...

    def stop(self, batch: Batch, now: float) -> None:
        """Ask a running batch to end early; its result (a failure) still comes back."""
        ...

    def resolve(self, kind: int, payload: Any, now: float) -> Event | None:
        """One of the executor's own clock events as a typed event (None: stale)."""
        ...

    def tick(self, now: float, queue_len: int) -> Event | None:
        """Telemetry is due: samples to apply now, or None when they arrive later."""
        ...

    def recovering(self) -> bool:
        """Whether capacity is on its way back (a worker restarting)."""
        ...

    def settle(self, now: float, controller: Controller, submitted: int) -> None:
        """After each instant: progress, metrics, the journal on disk."""
        ...

    def finish(self, controller: Controller) -> None: ...

    def summary_fields(self, makespan: float, completed: int) -> dict[str, Any]: ...

    def run_info(self, controller: Controller) -> dict[str, Any]: ...


@dataclass
class LoopConfig:
    policy_name: str
    telemetry_interval: float = 1.0
    # Scheduling quantum: consult the policy at most once per this many seconds of
    # the run's clock (0: after every instant with events).
    decision_interval: float = 0.0
    # (policy, name) to switch to when the policy fails repeatedly; None: stop the run.
    fallback: tuple[Any, str] | None = None
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class _Tally:
    """The loop's own state between instants."""

    upcoming: Job | None = None
    submitted: int = 0
    idle: int = 0
    next_decide: float = 0.0
    decide_queued: bool = False
    fallback: str | None = None
    fallback_to: dict[str, str] | None = None  # the summary's: which policy, and why
    exit_code: int = 0
    message: str | None = None
    latencies: Latencies = field(default_factory=Latencies)
    # Where the run began: wall seconds, and the driver process's CPU seconds (all threads).
    began: tuple[float, float] = field(default_factory=lambda: (time.perf_counter(),
                                                                time.process_time()))


def run(controller: Controller, arrivals: Iterator[Job], executor: Executor, clock: Clock,
        sink: RunOutputs, config: LoopConfig) -> RunResult:
    """Replay ``arrivals`` through ``controller`` on ``executor``; write ``sink``'s outputs."""
    tally = _Tally()
    _next_arrival(arrivals, clock, tally)
    if config.telemetry_interval > 0:
        clock.schedule(clock.now() + clock.every(config.telemetry_interval), TELEMETRY, None)
    try:
        _events(controller, arrivals, executor, clock, sink, config, tally)
        if controller.unfinished and tally.exit_code == 0:
            # The events ran dry with work unfinished: never end silently.
            tally.message = f"the run ended with {controller.unfinished} jobs unfinished"
            controller.fail_unfinished(tally.message)
            tally.exit_code = 1
    except PolicyFailure as e:
        tally.message, tally.exit_code = str(e), 1
        controller.fail_unfinished(f"run stopped: {e}")
        # Jobs that had not arrived yet are accounted for too, never silently dropped.
        for job in itertools.chain([tally.upcoming] if tally.upcoming else [], arrivals):
            controller.refuse(job, f"run stopped before it arrived: {e}")
    except BaseException:
        sink.abort()  # e.g. a malformed row mid-trace: leave readable files, no summary
        raise
    executor.finish(controller)
    return _result(controller, executor, clock, sink, config, tally)


def _events(controller: Controller, arrivals: Iterator[Job], executor: Executor,
            clock: Clock, sink: RunOutputs, config: LoopConfig, tally: _Tally) -> None:
    instant_event: str | None = None  # what to tell the policy about this instant
    while (popped := clock.next()) is not None:
        now, kind, payload = popped
        label = _handle(kind, payload, now, controller, executor, clock, sink, config, tally,
                        arrivals)
        instant_event = label or instant_event
        if clock.more_now():
            continue  # decide once per instant, after every event of it
        event, instant_event = instant_event, None
        if event is not None and _decide_now(now, clock, config, tally):
            _decide(now, event, controller, executor, config, tally)
            if _stuck(now, controller, executor, clock, config, tally):
                break
        executor.settle(now, controller, tally.submitted)


def _handle(kind: int, payload: Any, now: float, controller: Controller, executor: Executor,
            clock: Clock, sink: RunOutputs, config: LoopConfig, tally: _Tally,
            arrivals: Iterator[Job]) -> str | None:
    if kind == ARRIVAL:
        controller.submit(payload, now)
        tally.submitted += 1
        _next_arrival(arrivals, clock, tally)
        return "arrival"
    if kind == CLIENT:
        return _client(payload, now, controller, executor, tally)
    if kind == DECIDE:
        tally.decide_queued = False
        return "tick"
    if kind == TELEMETRY and payload is None:
        ready = executor.tick(now, controller.queued)
        if ready is not None:
            _apply(ready, now, controller, executor, sink)
        if config.telemetry_interval > 0 and (controller.busy or controller.queued
                                              or tally.upcoming or executor.recovering()
                                              or clock.open()):
            clock.schedule(now + clock.every(config.telemetry_interval), TELEMETRY, None)
        return "telemetry"
    event = executor.resolve(kind, payload, now)
    return None if event is None else _apply(event, now, controller, executor, sink)


def _apply(event: Event, now: float, controller: Controller, executor: Executor,
           sink: RunOutputs) -> str | None:
    """Hand one executor event to the controller; returns what to tell the policy."""
    if isinstance(event, BatchDone):
        controller.batch_done(event.batch, now, event.failure, event.cached)
        return "completion"
    if isinstance(event, DeviceDown):
        executor.cancel(controller.device_down(event.device, now, event.reason), now)
        return "failure"
    if isinstance(event, NodeDown):
        executor.cancel(controller.node_down(event.node, now, event.reason), now)
        return "failure"
    if isinstance(event, DeviceUp):
        controller.device_up(event.device, now)
        return "device_up"
    sink.telemetry(controller.observe(event.samples))
    return None  # a sample arriving triggers no decision of its own


def _client(item: Job | Cancel, now: float, controller: Controller, executor: Executor,
            tally: _Tally) -> str | None:
    """A job or a cancellation a client handed an online service."""
    if not isinstance(item, Cancel):
        controller.submit(item, now)
        tally.submitted += 1
        return "arrival"
    state, stop = controller.cancel(item.job, item.reason)
    if stop is not None:
        executor.stop(stop, now)
    item.outcome.set_result(state)
    return None  # nothing freed yet: no decision of its own


def _next_arrival(arrivals: Iterator[Job], clock: Clock, tally: _Tally) -> None:
    tally.upcoming = next(arrivals, None)
    if tally.upcoming is not None:
        clock.schedule(tally.upcoming.submit_time, ARRIVAL, tally.upcoming)


def _decide_now(now: float, clock: Clock, config: LoopConfig, tally: _Tally) -> bool:
    if now < tally.next_decide:  # inside the quantum: decide at its end instead
        if not tally.decide_queued:
            clock.schedule(tally.next_decide, DECIDE, None)
            tally.decide_queued = True
        return False
    tally.next_decide = now + clock.every(config.decision_interval)
    return True


def _decide(now: float, event: str, controller: Controller, executor: Executor,
            config: LoopConfig, tally: _Tally) -> None:
    t0 = time.perf_counter()
    try:
        step = controller.decide(now, event)
    except PolicyFailure as e:
        if config.fallback is None or tally.fallback is not None:
            raise
        fallback, name = config.fallback
        tally.fallback = f"{e}; fell back to {name!r}"
        tally.fallback_to = {"policy": name, "why": str(e)}
        log.warning("policy %r failed repeatedly (%s); falling back to %r",
                    config.policy_name, e, name)
        controller.switch_policy(fallback, name, str(e))
        step = controller.decide(now, event)
    tally.latencies.add(time.perf_counter() - t0)
    executor.cancel(step.cancelled, now)
    executor.start(step.started, now)


def _stuck(now: float, controller: Controller, executor: Executor, clock: Clock,
           config: LoopConfig, tally: _Tally) -> bool:
    """Count decision rounds in which only the policy could make progress and did not.

    An erroring round does not count: errors lead to the fallback or stop the
    run. Returns True once the run gave up.
    """
    if controller.busy or not controller.queued or tally.upcoming or executor.recovering():
        tally.idle = 0  # a pending fault cannot help: it only removes capacity
        return False
    if controller.failures_in_row:
        tally.idle = 0
    else:
        tally.idle += 1
        if tally.idle >= IDLE_ROUNDS:
            message = controller.give_up_idle()
            if clock.open():  # a service goes on: the next client's jobs may fit
                tally.idle = 0
                return False
            tally.message, tally.exit_code = message, 0 if message is None else 1
            return True
    if config.telemetry_interval <= 0:
        clock.schedule(now + clock.every(1.0), TELEMETRY, None)  # something must wake the policy
    return False


def _result(controller: Controller, executor: Executor, clock: Clock, sink: RunOutputs,
            config: LoopConfig, tally: _Tally) -> RunResult:
    makespan = sink.last_end - sink.first_submit if sink.completed else 0.0
    summary = sink.summary(policy=config.policy_name, mode=executor.mode,
                           fallback=tally.fallback_to,
                           **executor.summary_fields(makespan, sink.completed),
                           **dict(config.context))
    p50, p99 = tally.latencies.quantile(0.5), tally.latencies.quantile(0.99)
    wall = time.perf_counter() - tally.began[0]
    cpu = time.process_time() - tally.began[1]
    run_info = {
        "wall_seconds": wall,
        # The driver's own CPU use: live, it shares the machine's cores with local workers.
        "driver_cpu_s": round(cpu, 3),
        "driver_cpu_share": round(cpu / wall, 3) if wall > 0 else None,
        "jobs_submitted": tally.submitted,
        "decide_calls": len(tally.latencies),
        "decide_ms_p50": None if p50 is None else p50 * 1e3,
        "decide_ms_p99": None if p99 is None else p99 * 1e3,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "exit_code": tally.exit_code, "message": tally.message,
        "policy_fallback": tally.fallback,
        "extrapolated": controller.cost.extrapolated(),
        **clock.info(), **executor.run_info(controller),
    }
    sink.close(summary, run_info)
    return RunResult(summary, run_info, tally.exit_code, tally.message)
