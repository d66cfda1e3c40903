"""sjf: shortest predicted job first, from the cost model.

Shortest-job-first minimizes mean completion time on one machine when sizes
are known (Smith's rule, 1956; the "SJF" baseline of Tiresias and Optimus).
Here sizes are the cost model's prediction on the fastest device kind
(``view.cost.best_seconds``; a cluster job's duration). Among the first
``lookahead`` pending jobs the shortest go first, ties in arrival order; each
runs where it finishes first, with same-shape jobs packed in. Long jobs can
wait as long as shorter ones keep arriving: there is no aging.
"""

from __future__ import annotations

from typing import ClassVar

from policies.common import place_in_order, window
from scheduler.decisions import Decisions
from scheduler.view import View


class SjfPolicy:
    name: ClassVar[str] = "sjf"
    description: ClassVar[str] = "shortest predicted job first (cost model), same-shape packing"

    def __init__(self, lookahead: int = 256, max_batch: int = 64) -> None:
        if lookahead < 1 or max_batch < 1:
            raise ValueError("lookahead and max_batch must be at least 1")
        self.lookahead, self.max_batch = lookahead, max_batch

    def decide(self, view: View) -> Decisions:
        if not view.free:
            return Decisions()
        jobs = list(window(view.pending, self.lookahead))
        order = sorted(range(len(jobs)), key=lambda i: (view.cost.best_seconds(jobs[i]), i))
        return Decisions(tuple(place_in_order(view, [jobs[i] for i in order], jobs,
                                              self.max_batch, "shortest predicted first")))
