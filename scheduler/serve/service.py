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
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler.errors import InputError
from scheduler.inbox import Inbox
from scheduler.jobs import Job
from scheduler.journal import FILE as JOURNAL_FILE
from scheduler.journal import read_results
from scheduler.serve.state import Accepted, token

if TYPE_CHECKING:
    from scheduler.events import RunResult
    from workers.live_config import LiveConfig, LiveProgress

log = logging.getLogger(__name__)
ENDPOINT_FILE = "endpoint.json"  # where a running service listens: clients find it here
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeOptions:
    state: Path
    host: str = "127.0.0.1"
    port: int = 8765
    max_queue: int = 10_000  # jobs waiting (queued or handed in) before submissions get 429


class Service:
    """What request handlers share with the run loop (thread-safe parts only)."""

    def __init__(self, options: ServeOptions, policy_name: str) -> None:
        self.options, self.state, self.policy_name = options, options.state, policy_name
        self.token = token(options.state)
        self.accepted = Accepted(options.state)
        self.inbox = Inbox()
        self.progress: LiveProgress | None = None
        self.waiting = 0  # restored jobs handed to the loop at start

    def ready(self) -> bool:
        return self.inbox.clock is not None and self.inbox.open

    def admit(self, job: Job) -> str | None:
        """Why a job is refused now (the queue is full), or None."""
        queued = self.progress.queued if self.progress else self.waiting
        if queued + self.inbox.pending() >= self.options.max_queue:
            return (f"the queue is full ({queued:,} jobs waiting; at most "
                    f"{self.options.max_queue:,}); retry later")
        return None

    def retry_after(self) -> int:
        return 1

    def accept(self, job: Job) -> Job | None:
        """Stamp, store durably, then hand to the loop; None if the id was taken."""
        clock = self.inbox.clock
        assert clock is not None
        job = dataclasses.replace(job, submit_time=clock())
        if not self.accepted.add(job, time.time()):
            return None
        self.inbox.put(job)
        return job

    def status(self) -> dict[str, Any]:
        p = self.progress
        devices = {} if p is None else {
            d: {"util": u, "running": n, "up": up} for d, (u, n, up) in p.devices.items()}
        return {"ready": self.ready(), "policy": self.policy_name,
                "clock": None if p is None else p.clock, "done": 0 if p is None else p.done,
                "failed": 0 if p is None else p.failed,
                "queued": 0 if p is None else p.queued, "devices": devices}

    def unfinished(self, limit: int) -> list[dict[str, Any]]:
        """Accepted jobs with no outcome yet, oldest first."""
        journal = self.state / JOURNAL_FILE
        done = read_results(journal) if journal.exists() else {}
        out = []
        for job in self.accepted.jobs():
            if job.id not in done:
                out.append({"id": job.id, "tenant": job.tenant, "kind": job.kind.value,
                            "submit_time": job.submit_time})
                if len(out) >= limit:
                    break
        return out

    def restore(self) -> int:
        """Hand the loop every accepted job without an outcome (after a restart)."""
        journal = self.state / JOURNAL_FILE
        done = read_results(journal) if journal.exists() else {}
        for job in self.accepted.jobs():
            if job.id not in done:
                self.inbox.put(job)
                self.waiting += 1
        return self.waiting


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
    service = Service(options, policy_name)
    config.resume = (options.state / JOURNAL_FILE).exists()
    restored = service.restore()
    config.progress = _published(service, config.progress)
    server = run_in_thread(make_app(service), options.host, options.port,
                           lambda port: _announce(options, port, on_ready))
    log.info("serving %s on %s:%d (%d accepted jobs restored)", policy_name, options.host,
             options.port, restored)
    session = open_session(config)  # Ray first: it installs signal handlers of its own
    try:
        with _stop_on_signal(service.inbox):
            return run_live((), policy, policy_name, options.state, config, session=session,
                            identity=run_identity(None, config, policy_name),
                            inbox=service.inbox)
    finally:
        close_session(session)
        server.should_exit = True
        (options.state / ENDPOINT_FILE).unlink(missing_ok=True)
        service.accepted.close()


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


def endpoint(state: Path) -> str:
    """The URL of the service running on ``state``; InputError when none is."""
    path = state / ENDPOINT_FILE
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["url"])
    except (OSError, ValueError, KeyError):
        raise InputError("no service is running on this state folder (start one with "
                         "attnsched serve --state DIR)", path=state, field="--state") from None
