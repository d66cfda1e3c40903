"""Progress bars that also speak where nobody sees a bar.

rich draws bars on a terminal; writing to a pipe, a log file or CI it draws
nothing until the end, and a four-minute simulation looked hung. :class:`Bars`
prints a plain line per task there instead, at most every
:data:`PLAIN_EVERY_S` seconds, with what the bar would show (jobs, trace time,
elapsed, remaining).
"""

from __future__ import annotations

import math
import time
from typing import Any

from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID

PLAIN_EVERY_S = 10.0


class Bars(Progress):
    def __init__(self, *columns: ProgressColumn, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self._said: dict[TaskID, float] = {}

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        super().update(task_id, **kwargs)
        self._say(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._say(task_id)

    def _say(self, task_id: TaskID) -> None:
        if self.console.is_terminal or self.disable:
            return
        now = time.monotonic()
        if now - self._said.get(task_id, -math.inf) < PLAIN_EVERY_S:
            return
        self._said[task_id] = now
        with self._lock:
            task = self._tasks[task_id]
        self.console.print(plain_line(self.columns, task), markup=False, highlight=False,
                           soft_wrap=True)


def plain_line(columns: tuple[Any, ...], task: Task) -> str:
    """What the bar's columns say of ``task``, as one line of text (the bar itself left out)."""
    parts = []
    for column in columns:
        if isinstance(column, BarColumn) or not isinstance(column, ProgressColumn):
            continue
        rendered = column.render(task)
        text = getattr(rendered, "plain", str(rendered)).strip()
        if text:
            parts.append(text)
    return " ".join(parts)
