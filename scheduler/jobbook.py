"""Every unfinished job's record, the queue and what waits on what.

The controller's alone. A job is in exactly one place: queued (``pending``
and its tenant's group, in ready order), running, blocked on the job it
depends on, or split into parts; it leaves ``records`` when it ends, and
``finished`` remembers only whether it succeeded, for later dependents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scheduler.jobs import Job
from scheduler.pricing import ClusterCost
from scheduler.records import Sink
from scheduler.state import Batch, FinishedIds, JobRecord, JobState

if TYPE_CHECKING:
    from scheduler.journal import Journal


class JobBook:
    def __init__(self, cost: ClusterCost, sink: Sink, journal: Journal | None,
                 max_attempts: int) -> None:
        self.cost, self.sink, self.journal, self.max_attempts = cost, sink, journal, max_attempts
        self.records: dict[str, JobRecord] = {}
        self.pending: dict[str, Job] = {}
        self.tenants: dict[str, dict[str, Job]] = {}
        self.blocked: dict[str, list[str]] = {}
        self.finished = FinishedIds()  # id -> succeeded, for late dependents
        # Running jobs a client cancelled -> the reason: each ends, failed, when its batch
        # stops, and is never run again.
        self.cancelling: dict[str, str] = {}

    def known(self, job_id: str) -> bool:
        return job_id in self.records or job_id in self.finished

    def enqueue(self, record: JobRecord, now: float, reason: str | None = None) -> None:
        record.state = JobState.QUEUED
        if self.journal is not None:
            self.journal.transition(now, record, reason)
        job = record.job
        self.pending[job.id] = job
        self.tenants.setdefault(job.tenant, {})[job.id] = job

    def dequeue(self, job: Job) -> None:
        del self.pending[job.id]
        group = self.tenants[job.tenant]
        del group[job.id]
        if not group:
            del self.tenants[job.tenant]

    def block(self, record: JobRecord, now: float) -> None:
        parent = record.job.depends_on or ""
        record.state = JobState.BLOCKED
        if self.journal is not None:
            self.journal.transition(now, record, f"waits for {parent!r}")
        self.blocked.setdefault(parent, []).append(record.id)

    def finish(self, record: JobRecord, state: JobState, now: float,
               reason: str | None = None) -> None:
        record.state, record.end = state, now
        record.reason = reason
        if self.cancelling:
            self.cancelling.pop(record.id, None)
        if record.parent is not None:
            self._part_finished(record, now)
            return
        del self.records[record.id]
        self.cost.forget(record.id)
        ok = state is JobState.DONE
        self.finished[record.id] = ok
        if self.journal is None or self.journal.finished(now, record):
            self.sink.job_finished(record)
        for child_id in self.blocked.pop(record.id, ()):
            child = self.records[child_id]
            if ok:
                child.ready_time = now
                self.enqueue(child, now)
            else:
                self.finish(child, JobState.FAILED, now, f"dependency {record.id!r} failed")

    def _part_finished(self, part: JobRecord, now: float) -> None:
        del self.records[part.id]
        self.cost.forget(part.id)
        parent = self.records.get(part.parent or "")
        if parent is None or parent.state is not JobState.SPLIT:
            return  # the parent already ended through another part
        if part.state is JobState.FAILED:
            self.drop_queued_parts(parent.id)
            self.finish(parent, JobState.FAILED, now, f"part {part.id!r} failed: {part.reason}")
            return
        parent.parts_left -= 1
        parent.start = part.start if parent.start is None else min(parent.start, part.start or 0)
        parent.device, parent.node, parent.batch_size = part.device, part.node, part.batch_size
        parent.attempts = max(parent.attempts, part.attempts)
        parent.solo_seconds += part.solo_seconds
        if parent.parts_left == 0:
            self.finish(parent, JobState.DONE, now)

    def drop_queued_parts(self, parent_id: str) -> None:
        """Forget the parts of a failed parent that never started.

        Running parts are left to finish (their batch-mates are other jobs);
        their results are then ignored, since the parent has already ended.
        """
        for part in [r for r in self.records.values()
                     if r.parent == parent_id and r.state is JobState.QUEUED]:
            self.dequeue(part.job)
            del self.records[part.id]
            self.cost.forget(part.id)

    def requeue(self, record: JobRecord, now: float, reason: str | None,
                limit: bool = True) -> None:
        """Back to the queue; after ``max_attempts`` failed runs, failed for good.

        ``limit`` is off when the policy itself stopped the job (preempt,
        migrate): moving work is not the job failing.
        """
        cancelled = self.cancelling.get(record.id) if self.cancelling else None
        if cancelled is not None:
            self.finish(record, JobState.FAILED, now, cancelled)
        elif limit and record.attempts >= self.max_attempts:
            self.finish(record, JobState.FAILED, now,
                        f"gave up after {record.attempts} attempts: {reason}")
        else:
            record.state, record.start, record.device, record.batch = (
                JobState.QUEUED, None, None, None)
            self.enqueue(record, now, reason)

    def end_running(self, record: JobRecord, now: float) -> None:
        """A running job's batch finished: done, unless a client cancelled it meanwhile."""
        cancelled = self.cancelling.get(record.id) if self.cancelling else None
        if cancelled is None:
            self.finish(record, JobState.DONE, now)
        else:
            self.finish(record, JobState.FAILED, now, cancelled)

    def requeue_batch(self, batch: Batch, now: float, reason: str | None,
                      limit: bool = True) -> None:
        """The jobs of a batch that stopped, back to the queue (or failed for good)."""
        for job_id in batch.jobs:
            record = self.records.get(job_id)
            if record is not None and record.state is JobState.RUNNING:
                self.requeue(record, now, reason, limit)

    def unblock(self, record: JobRecord) -> None:
        """Take a blocked job off its parent's list (it is failing for another reason)."""
        waiting = self.blocked.get(record.job.depends_on or "")
        if waiting is not None:
            waiting.remove(record.id)
