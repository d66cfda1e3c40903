"""las: least attained service, in discretized priority queues, as in Tiresias.

Tiresias (Gu et al., NSDI'19) schedules without knowing job sizes: whoever
has received the least service goes first (LAS), with service bucketed into a
few priority queues so that near-equals share a queue in FIFO order, and a
starvation guard that lifts a job to the top queue once it has waited long
enough. Here an attention job runs to completion in one go (its state is not
checkpointed, so per-job attained service is zero until it ends); the unit
that accumulates service is the **tenant**. Each tenant's attained service
is the device-seconds the policy has granted it (predicted run time times
devices held), carried from call to call in ``Decisions.state``. Queue ``k``
holds tenants that are ahead of the least-served tenant with work waiting by at least
``first_s · ratio^(k-1)`` device-seconds; a job that has waited ``promote``
times its own predicted run time is served from the top queue. Within a
queue, arrival order; each job runs where it finishes first, with same-shape
jobs packed in. On a one-tenant trace it is FCFS with backfilling.
"""

from __future__ import annotations

import math
from collections import deque
from typing import ClassVar

from policies.common import Round, window
from scheduler.decisions import Action, Decisions
from scheduler.jobs import ClusterJob, Job
from scheduler.view import View

PROMOTED = ""  # the lane of starving jobs, served from the top queue


class LasPolicy:
    name: ClassVar[str] = "las"
    description: ClassVar[str] = "least attained service per tenant in priority queues (Tiresias)"

    def __init__(self, lookahead: int = 256, max_batch: int = 64, queues: int = 3,
                 first_s: float = 1.0, ratio: float = 10.0, promote: float = 10.0) -> None:
        if lookahead < 1 or max_batch < 1 or queues < 1:
            raise ValueError("lookahead, max_batch and queues must be at least 1")
        if not (first_s > 0 and ratio > 1 and promote > 0):
            raise ValueError("first_s and promote must be > 0, ratio > 1")
        self.lookahead, self.max_batch, self.queues = lookahead, max_batch, queues
        self.first_s, self.ratio, self.promote = first_s, ratio, promote

    def queue(self, attained: float, least: float) -> int:
        """Priority queue of a tenant: 0 is served first."""
        ahead = attained - least
        if ahead < self.first_s:
            return 0
        return min(self.queues - 1, 1 + int(math.log(ahead / self.first_s, self.ratio)))

    def decide(self, view: View) -> Decisions:
        attained: dict[str, float] = dict(view.state or ())
        if not view.free:
            return Decisions((), view.state)
        jobs = list(window(view.pending, self.lookahead))
        lanes: dict[str, deque[Job]] = {}
        for job in jobs:
            attained.setdefault(job.tenant, 0.0)
            seconds = view.cost.best_seconds(job)
            waited = view.now - view.ready_time(job.id)
            lane = PROMOTED if waited >= self.promote * seconds else job.tenant
            lanes.setdefault(lane, deque()).append(job)
        order = {job.id: i for i, job in enumerate(jobs)}
        active = {job.tenant for job in jobs}  # tenants gone quiet do not set the floor
        round_ = Round(view, self.max_batch)
        actions: list[Action] = []
        while lanes and not round_.full():
            least = min(attained[t] for t in active)
            lane = min(lanes, key=lambda t: (0 if t == PROMOTED else
                                             self.queue(attained[t], least),
                                             order[lanes[t][0].id]))
            job = lanes[lane].popleft()
            if not lanes[lane]:
                del lanes[lane]
            if job.id in round_.placed:
                continue
            level = 0 if lane == PROMOTED else self.queue(attained[lane], least)
            place = round_.place(job, jobs, f"least attained service: {job.tenant} in "
                                 f"queue {level}")
            if place is None:
                continue
            actions.append(place)
            attained[job.tenant] += sum(_service(view, j) for j in
                                        (view.pending[i] for i in place.jobs)) * \
                (1 + len(place.gang))
        return Decisions(tuple(actions), tuple(sorted(attained.items())))


def _service(view: View, job: Job) -> float:
    """Device-seconds a job is granted: its run time times the share of a device it holds."""
    seconds = view.cost.best_seconds(job)
    if isinstance(job, ClusterJob):
        return seconds * (job.gpu_fraction if job.gpus else 1.0)
    return seconds if math.isfinite(seconds) else 0.0

