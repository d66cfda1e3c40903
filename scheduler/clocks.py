"""Run clocks: simulated time that jumps from event to event, and wall-clock time.

:class:`VirtualClock` jumps to the next timer at once; :class:`WallClock`
(the real-time variant) waits for a timer's time on the wall clock, scaled by
``speed``, or for its :class:`Source` (the executor) to report something, and
records how late it ran. A wall clock may also hold an :class:`~scheduler.inbox.Inbox`:
jobs and cancellations clients hand an online service, which it delivers as
events of the instant they are taken in, and while it is open the run has no end.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from scheduler.sim.engine import CLIENT, EVENT, EventQueue

if TYPE_CHECKING:
    from scheduler.inbox import Inbox

MAX_WAIT = 1.0  # wall seconds a wall clock waits before looking at its timers again
INBOX_WAIT = 0.01  # ... and while an inbox is open: how long a client's job may wait unseen


class Clock(Protocol):
    """Time and timers of a run; ``next`` returns ``(time, kind, payload)`` or None at the end."""

    def now(self) -> float: ...

    def schedule(self, at: float, kind: int, payload: Any) -> None: ...

    def every(self, seconds: float) -> float:
        """The step of a task due every ``seconds`` of the clock's own time (simulated, or wall)."""

    def next(self) -> tuple[float, int, Any] | None: ...

    def more_now(self) -> bool:
        """Whether another event belongs to the instant just returned."""

    def open(self) -> bool:
        """Whether clients may still hand the run work (an online service's inbox)."""
        ...

    def info(self) -> dict[str, Any]: ...


class Source(Protocol):
    """What a wall clock waits on besides its timers: an executor's outstanding work."""

    def poll(self, timeout: float) -> list[Any]: ...

    def outstanding(self) -> bool: ...


class VirtualClock:
    """Simulated time: jumps to the next event at once."""

    def __init__(self, start: float = 0.0) -> None:
        self.queue = EventQueue()
        self._now = start

    def now(self) -> float:
        return self._now

    def schedule(self, at: float, kind: int, payload: Any) -> None:
        self.queue.push(at, kind, payload)

    def every(self, seconds: float) -> float:
        return seconds

    def next(self) -> tuple[float, int, Any] | None:
        if not len(self.queue):
            return None
        popped = self.queue.pop()
        self._now = popped[0]
        return popped

    def more_now(self) -> bool:
        return self.queue.peek_time() == self._now

    def open(self) -> bool:
        return False

    def drain(self) -> Iterator[tuple[float, int, Any]]:
        while len(self.queue):
            yield self.queue.pop()

    def info(self) -> dict[str, Any]:
        return {}


class WallClock:
    """Real time scaled by ``speed`` (trace seconds per wall second), from ``start``.

    A timer is handled when its time has come on the wall clock, or as soon as
    the loop gets to it when it is behind; how far behind is the lag reported.
    """

    def __init__(self, source: Source, speed: float = 1.0, start: float = 0.0,
                 inbox: Inbox | None = None) -> None:
        self.source, self.speed, self.start, self.inbox = source, speed, start, inbox
        self.queue = EventQueue()
        self.ready: deque[tuple[int, Any]] = deque()
        self.t0 = time.monotonic()
        self._last = start
        self.lag_max = self.lag_sum = 0.0
        self.timers = 0

    def now(self) -> float:
        """The clock's time; safe from any thread (a request handler stamping a job)."""
        self._last = max(self._last, self.start + (time.monotonic() - self.t0) * self.speed)
        return self._last

    def schedule(self, at: float, kind: int, payload: Any) -> None:
        self.queue.push(at, kind, payload)

    def every(self, seconds: float) -> float:
        return seconds * self.speed  # else at --speed 1000, 1,000 polls of each worker a second

    def _collect(self, timeout: float = 0.0) -> None:
        """Due timers, then whatever the executor has (waiting ``timeout`` if nothing is due)."""
        now = self.now()
        while len(self.queue) and (self.queue.peek_time() or 0.0) <= now:
            at, kind, payload = self.queue.pop()
            lag = (now - at) / self.speed
            self.lag_max, self.lag_sum, self.timers = (
                max(self.lag_max, lag), self.lag_sum + lag, self.timers + 1)
            self.ready.append((kind, payload))
        if self.inbox is not None:
            self.ready.extend((CLIENT, item) for item in self.inbox.take())
        polled = self.source.poll(0.0 if self.ready else timeout)
        self.ready.extend((EVENT, item) for item in polled)

    def next(self) -> tuple[float, int, Any] | None:
        self._collect()
        while not self.ready:
            due = self.queue.peek_time()
            online = self.open()
            if due is None and not self.source.outstanding() and not online:
                return None
            wait = MAX_WAIT if due is None else (due - self.now()) / self.speed
            self._collect(min(INBOX_WAIT if online else MAX_WAIT, max(wait, 0.0)))
        kind, payload = self.ready.popleft()
        return self.now(), kind, payload

    def more_now(self) -> bool:
        if not self.ready:
            self._collect()
        return bool(self.ready)

    def open(self) -> bool:
        return self.inbox is not None and not self.inbox.done()

    def info(self) -> dict[str, Any]:
        return {"lag_max_s": round(self.lag_max, 6),
                "lag_mean_s": round(self.lag_sum / self.timers, 6) if self.timers else 0.0}
