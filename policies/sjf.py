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

from policies.common import OrderedPolicy
from scheduler.jobs import Job
from scheduler.view import View


class SjfPolicy(OrderedPolicy):
    name: ClassVar[str] = "sjf"
    description: ClassVar[str] = "shortest predicted job first (cost model), same-shape packing"
    reason: ClassVar[str] = "shortest predicted first"

    def key(self, view: View, job: Job) -> float:
        return view.cost.best_seconds(job)
