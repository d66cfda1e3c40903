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

from policies.common import OrderedPolicy
from scheduler.jobs import Job
from scheduler.view import View


def due(job: Job) -> float:
    """Absolute deadline on the trace's clock; inf for a job without an SLO."""
    return math.inf if job.deadline is None else job.submit_time + job.deadline


class EdfPolicy(OrderedPolicy):
    name: ClassVar[str] = "edf"
    description: ClassVar[str] = "earliest deadline (submit + SLO) first, same-shape packing"
    reason: ClassVar[str] = "earliest deadline first"

    def key(self, view: View, job: Job) -> float:
        return due(job)
