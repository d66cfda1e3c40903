"""A time limit on the policy's ``decide()``, for plugins that hang.

Python cannot stop a thread, so a decision runs on a helper thread and the
controller waits for it at most ``seconds``. A call that runs over is
abandoned: its thread is left to finish (or hang) on its own, its answer is
never read, and the next call gets a fresh thread. The controller counts the
overrun as a policy failure, as it does an exception.

Only live runs set a limit by default: in the simulator a wall-clock limit
would make a run's outcome depend on the machine's speed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class DecideTimeout(Exception):
    pass


class Deadline:
    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError("a deadline must be positive")
        self.seconds = seconds
        self._io: tuple[queue.SimpleQueue[Any], queue.SimpleQueue[Any]] | None = None
        self.abandoned = 0  # threads left behind still running an overdue call

    def _start(self) -> tuple[queue.SimpleQueue[Any], queue.SimpleQueue[Any]]:
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def serve() -> None:
            while True:
                fn, arg = inbox.get()
                try:
                    outbox.put((True, fn(arg)))
                except BaseException as e:  # handed back to the caller, who decides
                    outbox.put((False, e))

        threading.Thread(target=serve, daemon=True, name="attnsched-decide").start()
        return inbox, outbox

    def call(self, fn: Callable[[Any], T], arg: Any) -> T:
        """``fn(arg)``, or DecideTimeout once it has run ``seconds``."""
        if self._io is None:
            self._io = self._start()
        inbox, outbox = self._io
        inbox.put((fn, arg))
        try:
            ok, value = outbox.get(timeout=self.seconds)
        except queue.Empty:
            self._io = None  # the stuck thread keeps its queues; nobody reads them again
            self.abandoned += 1
            raise DecideTimeout(f"decide() ran past {self.seconds:g} s") from None
        if ok:
            return value  # type: ignore[no-any-return]
        raise value
