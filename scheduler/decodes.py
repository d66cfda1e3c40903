"""The padded work of a packed decode group, kept as requests join it.

A packed decode runs its requests in one loop (``kernels.decode_many``),
longest first; at step ``s`` the requests still running form a prefix, and
each attends to the longest cache in that prefix plus ``s``. Pricing a
candidate for a pack of ``n`` decodes asks what that work would be with one
more request: :class:`DecodeRows` keeps the running sums at every row, so
the answer recomputes only the rows from the newcomer's place on, and is the
very sum :func:`padded_positions` makes over the whole group.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

DecodeRow = tuple[int, int, int]  # (steps, kv_len, rows) of one decode request


def _steps_desc(row: DecodeRow) -> int:
    return -row[0]


def padded_positions(rows: Sequence[DecodeRow]) -> tuple[float, float]:
    """Key positions a packed decode attends to, padding included, and its query rows × steps.

    This is the worker's loop (``kernels.decode_many``): ``rows`` ordered by
    steps, longest first; at step ``s`` the requests still running form a
    prefix, and each of them attends to the longest cache among that prefix
    plus ``s``. A shorter request's cache is padded to that length, and the
    padding costs as much as real keys.
    """
    total = 0.0
    active = longest = work = 0
    for i, (steps, kv, n) in enumerate(rows):
        active += n
        longest = max(longest, kv)
        work += n * steps
        after = rows[i + 1][0] if i + 1 < len(rows) else 0
        if steps > after:  # steps after..steps-1 run the first i+1 requests
            total += active * (steps - after) * (longest + (after + steps - 1) / 2)
    return total, float(work)


class DecodeRows:
    """A decode group's requests, longest first, with :func:`padded_positions`' running
    state before each row (``before``: positions summed; ``active``, ``longest``:
    rows and longest cache through that row), and whether their caches differ.

    Treated as immutable: :meth:`join` answers a new group. A plain slotted class, as
    packing makes one per candidate it prices.
    """

    __slots__ = ("active", "before", "longest", "mixed", "positions", "rows", "work")

    def __init__(self, rows: tuple[DecodeRow, ...], before: tuple[float, ...],
                 active: tuple[int, ...], longest: tuple[int, ...], positions: float,
                 work: int, mixed: bool) -> None:
        self.rows, self.before, self.active, self.longest = rows, before, active, longest
        self.positions, self.work, self.mixed = positions, work, mixed

    @classmethod
    def of(cls, row: DecodeRow) -> DecodeRows:
        steps, kv, n = row
        return cls((row,), (0.0,), (n,), (kv,), n * steps * (kv + (steps - 1) / 2),
                   n * steps, False)

    def join(self, row: DecodeRow) -> DecodeRows:
        """The group with ``row`` added where the worker runs it (after equal steps)."""
        old = self.rows
        at = len(old)
        if old[-1][0] < row[0]:  # most joiners are at least as short as the shortest
            at = bisect.bisect_right(old, -row[0], key=_steps_desc)
        rows = (*old[:at], row, *old[at:])
        start = max(at - 1, 0)  # the row before the newcomer now ends at its steps
        total = self.before[start]
        active = self.active[start - 1] if start else 0
        longest = self.longest[start - 1] if start else 0
        before: list[float] = []
        actives: list[int] = []
        longests: list[int] = []
        last = len(rows) - 1
        for i in range(start, last + 1):
            steps, kv, n = rows[i]
            before.append(total)
            active += n
            longest = max(longest, kv)
            actives.append(active)
            longests.append(longest)
            after = rows[i + 1][0] if i < last else 0
            if steps > after:
                total += active * (steps - after) * (longest + (after + steps - 1) / 2)
        return DecodeRows(rows, self.before[:start] + tuple(before),
                          self.active[:start] + tuple(actives),
                          self.longest[:start] + tuple(longests), total,
                          self.work + row[2] * row[0], self.mixed or row[1] != old[0][1])
