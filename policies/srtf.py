"""srtf: shortest remaining time first, preempting long batches for short jobs.

Schrage's SRPT (1968), the preemptive form of shortest-job-first: it
minimizes mean completion time on one machine. Pending jobs go in order of
predicted run time (the cost model's, as in ``sjf``); a pending job's
remaining time is all of it, since attention state is not checkpointed and a
stopped job restarts from zero. When no free device is left, the shortest
waiting attention job preempts the running attention batch with the most
time left — if that job is more than ``preempt_ratio`` times shorter than the
time left, and the batch has not yet run as long as it still has to (else
restarting it wastes more than it saves). Cluster jobs are never preempted.

The simulator honours ``Preempt``; live workers cannot stop a batch mid-run,
so a live controller rejects it (with that reason) and the batch runs on:
``preempt_ratio=0`` is the choice for live runs, making the policy
non-preemptive, SRTF at batch boundaries (= ``sjf``).
The policy learns which job runs where from its own placements, kept in
``Decisions.state`` until their predicted end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from policies.common import Round, window
from scheduler.decisions import Action, Decisions, Place, Preempt
from scheduler.jobs import AttentionJob, Job
from scheduler.view import View

Running = tuple[str, str, float, float, int]  # device, a job id, start, predicted end, memory


class SrtfPolicy:
    name: ClassVar[str] = "srtf"
    description: ClassVar[str] = "shortest remaining time first; preempts long batches"

    def __init__(self, lookahead: int = 256, max_batch: int = 64,
                 preempt_ratio: float = 2.0) -> None:
        if lookahead < 1 or max_batch < 1:
            raise ValueError("lookahead and max_batch must be at least 1")
        if not preempt_ratio >= 0:
            raise ValueError("preempt_ratio must be >= 0 (0: never preempt)")
        self.lookahead, self.max_batch, self.preempt_ratio = lookahead, max_batch, preempt_ratio

    def decide(self, view: View) -> Decisions:
        running: list[Running] = [r for r in (view.state or ()) if r[3] > view.now and
                                  view.devices[r[0]].running]
        jobs = list(window(view.pending, self.lookahead))
        order = sorted(range(len(jobs)), key=lambda i: (view.cost.best_seconds(jobs[i]), i))
        ordered = [jobs[i] for i in order]
        round_ = Round(view, self.max_batch)
        actions: list[Action] = []
        for job in ordered:
            if round_.full():
                break
            place = round_.place(job, jobs, "shortest remaining time first")
            if place is not None:
                actions.append(place)
                running.extend(self._track(view, place))
        if self.preempt_ratio > 0:
            left = [j for j in ordered if j.id not in round_.placed and
                    isinstance(j, AttentionJob)]
            actions.extend(self._preempt(view, left, running))
        return Decisions(tuple(actions), tuple(running))

    def _track(self, view: View, place: Place) -> list[Running]:
        jobs = [view.pending[j] for j in place.jobs]
        if not isinstance(jobs[0], AttentionJob):
            return []
        seconds = view.cost.seconds(jobs, place.device)
        memory = sum(view.cost.memory(j, place.device) for j in jobs)
        return [(place.device, place.jobs[0], view.now, view.now + seconds, memory)]

    def _preempt(self, view: View, waiting: Sequence[Job], running: list[Running]
                 ) -> list[Action]:
        """Swap the longest running batches for the shortest waiting jobs, while it pays."""
        actions: list[Action] = []
        # Most time left first; only batches with more left than done (restarting one
        # further along wastes more than it saves), never one this round placed.
        victims = sorted((r for r in running if view.now - r[2] < r[3] - view.now and
                          r[2] < view.now), key=lambda r: r[3], reverse=True)
        for job in waiting:
            if not victims:
                break
            device, victim, _, end, memory = victims[0]
            remaining, seconds = end - view.now, view.cost.best_seconds(job)
            if self.preempt_ratio * seconds >= remaining:
                break  # not worth it for the longest left, nor for any job after this one
            if view.cost.memory(job, device) > view.devices[device].memory_free + memory or \
                    view.cost.seconds([job], device) > remaining / self.preempt_ratio:
                continue  # it does not fit there, or runs slow there: try the next job
            running.remove(victims.pop(0))
            running.append((device, job.id, view.now,
                            view.now + view.cost.seconds([job], device),
                            view.cost.memory(job, device)))
            actions.append(Preempt(victim, f"{remaining:.4g}s left; {job.id} needs "
                                   f"{seconds:.4g}s"))
            actions.append(Place((job.id,), device, "shortest remaining time first: "
                                 "took a preempted device"))
        return actions
