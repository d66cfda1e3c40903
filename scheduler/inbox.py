"""What clients hand an online service, on its way to the run loop's thread.

The controller is single-threaded: it is only ever touched from the run
loop. Request handlers run elsewhere (the HTTP server's threads), so they
put jobs and cancellations here and the loop's wall clock takes them in as
events of its next instant (:class:`scheduler.clocks.WallClock`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from scheduler.jobs import Job


@dataclass(frozen=True)
class Cancel:
    """A client asked to cancel a job. A queued (or blocked) job ends as failed with
    ``reason``; ``outcome`` is then set to the state the job was found in (``queued``,
    ``running``, ``done``, ...; ``unknown`` for an id the run never saw), so the
    request can say what happened. A running job is left to finish: its worker cannot
    be stopped mid-batch without another batch landing on a busy device."""

    job: str
    reason: str = "cancelled by the client"
    outcome: Future[str] = field(default_factory=Future, compare=False)


class Inbox:
    """A thread-safe hand-off; ``open`` until the service stops taking work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[Job | Cancel] = []
        self.open = True
        # The run's clock, set once the loop runs: handlers stamp jobs' submit times with it.
        self.clock: Callable[[], float] | None = None
        self.latest = 0.0  # the latest submit time handed in: a resumed clock starts there

    def put(self, item: Job | Cancel) -> None:
        with self._lock:
            self._items.append(item)
            if not isinstance(item, Cancel):
                self.latest = max(self.latest, item.submit_time)

    def take(self) -> list[Job | Cancel]:
        """Everything handed in since the last call, in order."""
        with self._lock:
            items, self._items = self._items, []
        return items

    def done(self) -> bool:
        """Closed with nothing left to take: the loop may end."""
        with self._lock:
            return not self.open and not self._items

    def close(self) -> None:
        """No more work: the run ends once what it holds is done."""
        self.open = False
