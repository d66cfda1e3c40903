"""edf: earliest deadline first, for traces with SLOs.

Liu and Layland's EDF (1973): run the job whose deadline comes first. A job's
deadline is its SLO (``job.deadline``, seconds after submit) added to its
submit time; jobs without one come after every job with one, in arrival
order. On a trace without SLOs it is FCFS with backfilling. Among the first
``lookahead`` pending jobs; each runs where it finishes first, with
same-shape jobs packed in. Like any EDF it does not drop hopeless jobs: one
already past its deadline still goes first.
"""

from __future__ import annotations

import math
from typing import ClassVar

from policies.common import place_in_order, window
from scheduler.decisions import Decisions
from scheduler.jobs import Job
from scheduler.view import View


def due(job: Job) -> float:
    """Absolute deadline on the trace's clock; inf for a job without an SLO."""
    return math.inf if job.deadline is None else job.submit_time + job.deadline


class EdfPolicy:
    name: ClassVar[str] = "edf"
    description: ClassVar[str] = "earliest deadline (submit + SLO) first, same-shape packing"

    def __init__(self, lookahead: int = 256, max_batch: int = 64) -> None:
        if lookahead < 1 or max_batch < 1:
            raise ValueError("lookahead and max_batch must be at least 1")
        self.lookahead, self.max_batch = lookahead, max_batch

    def decide(self, view: View) -> Decisions:
        if not view.free:
            return Decisions()
        jobs = list(window(view.pending, self.lookahead))
        order = sorted(range(len(jobs)), key=lambda i: (due(jobs[i]), i))
        return Decisions(tuple(place_in_order(view, [jobs[i] for i in order], jobs,
                                              self.max_batch, "earliest deadline first")))
