"""The event core, SimPy-style: a heap of (time, priority, seq) with a counter tie-break.

The counter makes the order of simultaneous events deterministic (insertion
order within a priority), which is what makes whole runs byte-identical.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

# Lower runs first among events at the same instant: work that ends frees
# capacity before faults strike, arrivals are admitted, telemetry samples and
# a deferred decision (scheduling quantum) runs.
FINISH, FAULT, ARRIVAL, TELEMETRY, DECIDE = 0, 1, 2, 3, 4
# Not timers: what a live executor reported, and what a client handed an online service
# (a job or a cancellation), as a wall clock hands them to the loop.
EVENT, CLIENT = 5, 6


class EventQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = itertools.count()

    def push(self, time: float, priority: int, payload: Any) -> None:
        heapq.heappush(self._heap, (time, priority, next(self._seq), payload))

    def pop(self) -> tuple[float, int, Any]:
        time, priority, _, payload = heapq.heappop(self._heap)
        return time, priority, payload

    def peek_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)
