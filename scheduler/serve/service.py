"""``attnsched serve``: the live run loop, fed by clients instead of a trace.

The service is a live run (:func:`workers.executor.run_live`: the same
controller, policy, Ray worker fleet and journal) whose arrivals come from
an :class:`~scheduler.inbox.Inbox` that the HTTP API fills. The run loop
owns the main thread and the controller; request handlers only touch the
inbox, the accepted-jobs store and the journal (read-only). Stopping
(SIGINT/SIGTERM) closes the inbox: queued work finishes, the outputs are
written, and the process exits; a second signal stops at once, and a restart
with the same ``--state`` picks up every accepted job that has no outcome.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler.cluster_spec import ClusterSpec
from scheduler.errors import InputError
from scheduler.inbox import Cancel, Inbox
from scheduler.jobs import Job
from scheduler.journal import FILE as JOURNAL_FILE
from scheduler.journal import RunIdentity, differences, journal_state, outcomes, read_results
from scheduler.pricing import ClusterCost, load_profiles
from scheduler.records import Sink
from scheduler.serve.admission import DEFAULT_CLASSES, Admission, Quota, SloClass, Verdict
from scheduler.serve.payloads import Payloads
from scheduler.serve.state import ENDPOINT_FILE, Accepted, latest_states, token
from scheduler.state import JobRecord, JobState

if TYPE_CHECKING:
    from scheduler.events import RunResult
    from workers.live_config import LiveConfig, LiveProgress

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeOptions:
    state: Path
    host: str = "127.0.0.1"
    port: int = 8765
    max_queue: int = 10_000  # jobs outstanding (queued or running) before submissions get 429
    classes: Mapping[str, SloClass] = field(default_factory=lambda: dict(DEFAULT_CLASSES))
    quotas: Mapping[str, Quota] = field(default_factory=dict)  # tenant ("default": others)
    max_tensor_bytes: int = 256 << 20  # one submission's Q, K and V together


@dataclass
class ClassStats:
    """What one SLO class got: jobs ended, their queue delays, how many met the target."""

    done: int = 0
    failed: int = 0
    delay_sum: float = 0.0
    met: int = 0

    def shown(self, target: float | None) -> dict[str, Any]:
        return {"done": self.done, "failed": self.failed,
                "queue_delay_mean": self.delay_sum / self.done if self.done else None,
                "slo_attainment": None if target is None or not self.done
                else self.met / self.done}


class Service(Sink):
    """What request handlers share with the run loop (thread-safe parts only).

    As the run's observer it learns of every job's end (on the loop's thread),
    releasing the job's work from admission and counting its class's figures.
    """

    def __init__(self, options: ServeOptions, policy_name: str) -> None:
        self.options, self.state, self.policy_name = options, options.state, policy_name
        self.token = token(options.state)
        self.accepted = Accepted(options.state)
        self.payloads = Payloads(options.state)
        self.inbox = Inbox()
        self.progress: LiveProgress | None = None
        self.admission: Admission | None = None  # once the cluster (and its cost) is known
        self.classes: dict[str, ClassStats] = {}
        self.metrics: Any = None  # workers.ray_metrics.AdmissionMetrics, once Ray runs
        # One acceptance at a time: the id check, the admission and the commit are one step,
        # so two requests with one id cannot both be counted.
        self._accepting = threading.Lock()

    def ready(self) -> bool:
        return self.inbox.clock is not None and self.admission is not None and self.inbox.open

    def accept(self, job: Job, slo: str | None, tensors: bytes | None = None
               ) -> Job | Verdict | None:
        """Stamp, judge, store durably (with its tensors), hand to the loop. Returns the
        job as the policy sees it, the refusal, or None when the id was taken before."""
        clock, admission = self.inbox.clock, self.admission
        assert clock is not None
        assert admission is not None
        staged = None if tensors is None else self.payloads.stage(job.id, tensors)
        try:
            with self._accepting:
                if job.id in self.accepted:
                    return None
                job, verdict = admission.admit(dataclasses.replace(job, submit_time=clock()),
                                               slo)
                if not verdict.admit:
                    return verdict
                if staged is not None:
                    self.payloads.commit(job.id, staged)
                    staged = None
                self.accepted.add(job, admission.slo_class(slo).name, time.time())
                self.inbox.put(job)
            return job
        finally:
            if staged is not None:  # refused: its tensors go
                staged.unlink(missing_ok=True)

    def cancel(self, job_id: str) -> Cancel:
        """Ask the run loop to cancel a job; the request is on disk first, so a restart
        before the loop takes it still cancels the job instead of running it."""
        request = Cancel(job_id)
        self.accepted.cancel(job_id, request.reason)
        self.inbox.put(request)
        return request

    def job_finished(self, record: JobRecord) -> None:
        admission = self.admission
        held = None if admission is None else admission.held.get(record.id)
        if admission is None or held is None:
            return
        if record.state is JobState.DONE and record.start is not None \
                and record.end is not None:  # a batch's jobs share its time
            admission.observe(held.seconds, (record.end - record.start)
                              / max(record.batch_size, 1))
        counted = self._count(held.slo, record.state is JobState.DONE, record.start,
                              record.job.submit_time)
        if counted is not None and self.metrics is not None:
            self.metrics.done(held.slo, *counted)
        if record.state is not JobState.DONE:
            self.payloads.drop(record.id)
        admission.release(record.id)

    def _count(self, slo: str, done: bool, start: float | None, submitted: float
               ) -> tuple[float, bool | None] | None:
        """Count one ended job in its class's figures; when it ran, its queue delay and
        whether that met the class's target (None: the class has none)."""
        stats = self.classes.setdefault(slo, ClassStats())
        if not done or start is None:
            stats.failed += 1
            return None
        delay = start - submitted
        cls = self.admission.classes.get(slo) if self.admission is not None else None
        target = None if cls is None else cls.max_delay_s
        met = None if target is None else delay <= target
        stats.done, stats.delay_sum = stats.done + 1, stats.delay_sum + delay
        stats.met += bool(met)
        return delay, met

    def status(self) -> dict[str, Any]:
        p, admission = self.progress, self.admission
        devices = {} if p is None else {
            d: {"util": u, "running": n, "up": up} for d, (u, n, up) in p.devices.items()}
        targets = {} if admission is None else {
            n: c.max_delay_s for n, c in admission.classes.items()}
        ended = list(self.classes.values())  # counted as each job ends, unlike the progress
        return {"ready": self.ready(), "policy": self.policy_name,
                "clock": None if p is None else p.clock,
                "done": sum(c.done for c in ended), "failed": sum(c.failed for c in ended),
                "queued": 0 if p is None else p.queued, "devices": devices,
                "classes": {n: s.shown(targets.get(n)) for n, s in sorted(self.classes.items())},
                "admissions": [] if admission is None else [
                    {"verdict": v, "tenant": t, "class": c, "jobs": n}
                    for (v, t, c), n in sorted(admission.counts.items())]}

    def _open_jobs(self) -> Iterator[tuple[Job, str]]:
        """Accepted jobs (with their class) that have no outcome in the journal, oldest first."""
        journal = self.state / JOURNAL_FILE
        done = read_results(journal) if journal.exists() else {}
        return ((job, slo) for job, slo in self.accepted.jobs() if job.id not in done)

    def unfinished(self, limit: int) -> list[dict[str, Any]]:
        """Accepted jobs with no outcome yet, oldest first."""
        jobs = list(itertools.islice(self._open_jobs(), limit))
        states = latest_states(self.state, [job.id for job, _ in jobs])
        return [{"id": job.id, "tenant": job.tenant, "kind": job.kind.value, "class": slo,
                 "submit_time": job.submit_time, "state": states.get(job.id, "accepted")}
                for job, slo in jobs]

    def restore(self, admission: Admission) -> int:
        """After a restart: count the ended jobs in their classes' figures, and hand the
        loop every accepted job without an outcome (with the cancellations not taken)."""
        self.admission = admission
        journal = self.state / JOURNAL_FILE
        ended = outcomes(journal) if journal.exists() else {}
        cancels = self.accepted.cancels()
        open_ids: list[str] = []
        for job, slo in self.accepted.jobs():
            found = ended.get(job.id)
            if found is not None:
                self._count(slo, found.get("state") == "done", found.get("start"),
                            job.submit_time)
                continue
            admission.hold(job, slo)
            open_ids.append(job.id)
            self.inbox.put(job)
            if job.id in cancels:
                self.inbox.put(Cancel(job.id, cancels[job.id]))
        self.payloads.restore(open_ids)
        return len(open_ids)


def serve(options: ServeOptions, policy: Any, policy_name: str, config: LiveConfig,
          on_ready: Callable[[str, Path], None] | None = None) -> RunResult:
    """Run the service until stopped; returns the served period's result.

    ``on_ready(url, state)`` is called once the API listens (it answers 503
    until Ray and the workers are up).
    """
    from scheduler.serve.app import make_app, run_in_thread
    from workers.executor import close_session, open_session, run_identity, run_live

    if options.host not in LOOPBACK:
        log.warning("listening on %s: beyond this machine; every request needs the token",
                    options.host)
    identity = run_identity(None, config, policy_name)
    _same_service(options.state, identity)
    service = Service(options, policy_name)
    config.resume = (options.state / JOURNAL_FILE).exists()
    config.payloads = service.payloads
    config.progress = _published(service, config.progress)
    server = run_in_thread(make_app(service), options.host, options.port,
                           lambda port: _announce(options, port, on_ready))
    session = None
    try:
        session = open_session(config)  # Ray first: it installs signal handlers of its own
        from workers.ray_metrics import AdmissionMetrics

        service.metrics = metrics = AdmissionMetrics()
        admission = _admission(session.spec, config, options)
        admission.on_verdict = metrics.verdict
        restored = service.restore(admission)
        log.info("serving %s on %s:%d (%d accepted jobs restored)", policy_name,
                 options.host, options.port, restored)
        with _stop_on_signal(service.inbox):
            return run_live((), policy, policy_name, options.state, config, session=session,
                            identity=identity,
                            inbox=service.inbox, observer=service)
    finally:
        if session is not None:
            close_session(session)
        server.should_exit = True
        (options.state / ENDPOINT_FILE).unlink(missing_ok=True)
        service.accepted.close()


def _same_service(state: Path, identity: RunIdentity) -> None:
    """A state folder is served with the options it was first served with: its journal
    resumes only the same run. Checked before anything starts, worded for ``serve``
    (an unreadable journal is left for the journal itself to refuse)."""
    path = state / JOURNAL_FILE
    recorded = journal_state(path).meta if path.is_file() else {}
    changed = differences(recorded, identity.meta()) if recorded else []
    if changed:
        raise InputError(f"this state folder was served with other options "
                         f"({', '.join(changed)}); serve it with the same ones, or give a "
                         "new --state", path=state, field="--state")


def _admission(spec: ClusterSpec, config: LiveConfig, options: ServeOptions) -> Admission:
    """Admission priced by the run's own cost model (a copy: requests run on other threads)."""
    cost = ClusterCost(spec, load_profiles(spec, config.profiles))

    def seconds_of(job: Job) -> float:
        seconds = cost.best_seconds(job)
        cost.forget(job.id)  # priced once: the service keeps no cache per job
        return seconds

    def memory_of(job: Job) -> int:
        memory = cost.best_memory(job)
        cost.forget(job.id)
        return memory

    return Admission(len(spec.devices), seconds_of, options.classes, options.quotas,
                     memory_of, options.max_queue)


def _published(service: Service, forward: Any) -> Any:
    def progress(p: LiveProgress) -> None:
        service.progress = p
        if forward is not None:
            forward(p)
    return progress


def _announce(options: ServeOptions, port: int,
              on_ready: Callable[[str, Path], None] | None) -> None:
    """Write where the service listens (clients read it with the token)."""
    url = f"http://{'[' + options.host + ']' if ':' in options.host else options.host}:{port}"
    path = options.state / ENDPOINT_FILE
    path.write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n", encoding="utf-8")
    options.port = port
    if on_ready is not None:
        on_ready(url, options.state)


@contextmanager
def _stop_on_signal(inbox: Inbox) -> Iterator[None]:
    """The first SIGINT/SIGTERM drains (no new jobs; queued ones finish); a second stops."""
    def stop(signum: int, _: Any) -> None:
        if inbox.open:
            log.warning("stopping: no new jobs; the queued ones finish (signal again to stop "
                        "at once; a restart resumes them)")
            inbox.close()
        else:
            raise KeyboardInterrupt
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)

