"""Live runs: the same controller, policy and run loop, driving worker actors on Ray.

``run_live`` starts (or joins) Ray, discovers the cluster, creates one
long-lived :class:`~workers.worker.AttentionWorker` per device pinned to its
node, then replays the trace through :func:`scheduler.loop.run` on a
:class:`~scheduler.clocks.WallClock` scaled by ``speed``, with a
:class:`~workers.ray_executor.RayExecutor` carrying batches to the workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler.clocks import WallClock
from scheduler.controller import Controller
from scheduler.errors import InputError
from scheduler.events import RunResult
from scheduler.inbox import Inbox
from scheduler.jobs import Job
from scheduler.journal import FILE as JOURNAL_FILE
from scheduler.journal import Journal, RunIdentity, file_digest
from scheduler.loop import LoopConfig, run
from scheduler.metrics import RunOutputs, partial
from scheduler.pricing import ClusterCost, load_profiles
from scheduler.records import Fanout, Sink
from scheduler.traces import DEFAULT_MODEL, detect_format
from workers.fleet import Fleet
from workers.live_config import PROGRESS_EVERY, LiveConfig, LiveProgress
from workers.ray_executor import RayExecutor
from workers.ray_metrics import RayMetrics
from workers.session import (
    LiveSession,
    budgeted,
    close_session,
    discover,
    live_cluster,
    metrics_endpoints,
    open_session,
    start_ray,
)

if TYPE_CHECKING:
    from scheduler.runs import RunSpec

__all__ = ["PROGRESS_EVERY", "LiveConfig", "LiveProgress", "LiveSession", "RunResult",
           "budgeted", "close_session", "discover", "live_cluster", "metrics_endpoints",
           "open_session", "run_identity", "run_live", "start_ray"]
log = logging.getLogger(__name__)


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
    whole trace; what the earlier session wrote stays in ``session-N/`` (a
    killed one's files as ``NAME.partial``: its decisions read line by line).
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
        for path in (out / name, partial(out / name)):
            if path.exists():
                path.rename(aside / path.name)
    return n


def run_live(jobs: Iterable[Job], policy: Any, policy_name: str, out: Path | None,
             config: LiveConfig, context: Mapping[str, Any] | None = None,
             session: LiveSession | None = None,
             identity: RunIdentity | None = None, inbox: Inbox | None = None,
             observer: Sink | None = None) -> RunResult:
    """Replay ``jobs`` on real workers; writes the same outputs as the simulator.

    Without ``session`` it opens one (starting Ray and the workers) and closes
    it at the end; with one, the workers are reused and left running. With
    ``out``, every job's state changes go to its journal first, and
    ``config.resume`` continues the run that journal describes, if
    ``identity`` (from :func:`run_identity`) matches the one it recorded.
    With ``inbox`` (an online service) jobs also come from clients, and the run
    lasts until the inbox is closed and its work is done; ``observer`` sees every
    job's end and every decision besides the Ray metrics.
    """
    journal = _journal(out, config, identity, policy_name)
    resumed = journal.resumed if journal is not None else None
    aside = _prepare_outputs(out, config.resume)
    live = session or open_session(config)
    fleet = Fleet(live.spec, config, live.workers)
    dead = [] if session is None else _reset(fleet)
    spec = live.spec
    cost = ClusterCost(spec, load_profiles(spec, config.profiles))
    metrics = RayMetrics(policy_name)
    outputs = RunOutputs(out, {d.id: d.node for d in spec.devices},
                         observer=metrics if observer is None else Fanout(metrics, observer))
    controller = Controller(spec, cost, policy, policy_name=policy_name, seed=config.seed,
                            sink=outputs, journal=journal, decide_timeout=config.decide_timeout,
                            can_preempt=False)
    log.info("live run: policy %s on %d devices of %d nodes%s", policy_name,
             len(spec.devices), len(spec.nodes),
             f", journal {journal.path}" if journal is not None else "")
    start, done_before = 0.0, {}
    if resumed is not None:
        log.info("resuming session %d: %d jobs already finished, clock at %.3f s",
                 resumed.session, len(resumed.finished), resumed.clock)
        controller.resume(resumed.finished.values(), resumed.clock, resumed.attempts)
        start, done_before = resumed.clock, resumed.finished
    executor = RayExecutor(
        fleet, config, outputs, metrics, journal,
        lambda batch: [controller.records[j].job for j in batch.jobs], own=session is None,
        dead=dead, info={"resumed_from_session": aside or None,
                         "jobs_restored": len(done_before)})
    loop = LoopConfig(policy_name, config.telemetry_interval, fallback=config.fallback,
                      context=dict(context or {}))
    clock = _clock(executor, config.speed, start, inbox)
    try:
        result = run(controller, (j for j in jobs if j.id not in done_before), executor,
                     clock, outputs, loop)
    except BaseException:
        if journal is not None:
            journal.close()
        raise
    if journal is not None:
        journal.finish()  # after the outputs: a finished journal means a complete folder
    live.workers = fleet.handles
    if session is None:
        close_session(live)
    return result


def _clock(executor: RayExecutor, speed: float, start: float, inbox: Inbox | None
           ) -> WallClock:
    """The run's wall clock; a service's inbox gets it to stamp jobs, and a resumed
    service's clock starts no earlier than the jobs it restores."""
    if inbox is None:
        return WallClock(executor, speed, start)
    clock = WallClock(executor, speed, max(start, inbox.latest), inbox)
    inbox.clock = clock.now
    return clock


def _journal(out: Path | None, config: LiveConfig, identity: RunIdentity | None,
             policy_name: str) -> Journal | None:
    """The run's journal (None without a folder); the identity is digested only then."""
    if config.resume and out is None:
        raise InputError("resuming needs the run's folder", field="--resume")
    if out is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    return Journal(out / JOURNAL_FILE, identity or run_identity(None, config, policy_name),
                   resume=config.resume, overwrite=config.overwrite)


def _reset(fleet: Fleet) -> list[str]:
    """Reused workers start afresh; returns the devices whose worker died meanwhile."""
    import ray

    dead = []
    for device, ref in [(d, w.reset.remote()) for d, w in fleet.handles.items()]:
        try:
            ray.get(ref, timeout=60)
        except ray.exceptions.RayActorError:
            dead.append(device)
    return dead
