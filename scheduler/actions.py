"""Applying a policy's actions: each validated against the state, then booked.

The controller hands every action here in the order the policy returned
it; one that does not fit what the actions before it left raises
:class:`~scheduler.records.Rejected` with a code, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scheduler import packing, placement
from scheduler.capacity import Capacity
from scheduler.decisions import Action, Defer, Migrate, Offload, Place, Preempt, Split
from scheduler.jobbook import JobBook
from scheduler.jobs import AttentionJob, ClusterJob, Job
from scheduler.pricing import ClusterCost
from scheduler.records import RejectCode, Rejected
from scheduler.state import Batch, DeviceState, JobRecord, JobState

if TYPE_CHECKING:
    from scheduler.journal import Journal


@dataclass
class Step:
    """What one decision round changed, for the executor to carry out."""

    started: list[Batch] = field(default_factory=list)
    cancelled: list[Batch] = field(default_factory=list)


class Actions:
    def __init__(self, jobs: JobBook, cap: Capacity, cost: ClusterCost,
                 journal: Journal | None, can_preempt: bool) -> None:
        self.jobs, self.cap, self.cost, self.journal = jobs, cap, cost, journal
        self.can_preempt = can_preempt  # whether the executor can stop a running batch
        self.now = 0.0
        self.batch_seq = 0

    def apply(self, action: Action, step: Step, now: float) -> None:
        """Validate ``action`` against the state and apply it; Rejected if it does not fit."""
        self.now = now
        if isinstance(action, Place | Offload):
            if isinstance(action, Offload) and \
                    placement.device(self.cap, action.device).spec.kind != "cpu":
                raise Rejected(RejectCode.BAD_TARGET,
                               f"offload target {action.device!r} is not a CPU device")
            gang = action.gang if isinstance(action, Place) else ()
            step.started.append(self._place(action.jobs, action.device, gang))
        elif isinstance(action, Preempt | Migrate) and not self.can_preempt:
            # A live worker cannot be stopped mid-batch: freeing its device here would
            # put a second batch on it while the first still runs.
            self._running(action.job)
            raise Rejected(RejectCode.CANNOT_PREEMPT, "this executor cannot stop a running "
                           "batch (live workers run a batch to its end); preemption and "
                           "migration run in the simulator only")
        elif isinstance(action, Preempt):
            step.cancelled.append(self._preempt(action.job))
        elif isinstance(action, Migrate):
            self._migrate(action, step)
        elif isinstance(action, Split):
            self._split(action)
        elif not isinstance(action, Defer):  # pragma: no cover - unpack checked the type
            raise Rejected(RejectCode.BAD_BATCH, f"unknown action {action!r}")

    def _migrate(self, action: Migrate, step: Step) -> None:
        record = self._running(action.job)
        target = placement.device(self.cap, action.device)
        if target.spec.id == record.device:
            raise Rejected(RejectCode.BAD_TARGET, "already running there")
        if not isinstance(record.job, AttentionJob):
            raise Rejected(RejectCode.BAD_TARGET, "cluster jobs hold their devices until they end")
        placement.attention_need(self.cost, [record.job], target)  # reject before any change
        step.cancelled.append(self._preempt(action.job))
        step.started.append(self._place((action.job,), action.device, ()))

    def _pending_job(self, job_id: str) -> Job:
        job = self.jobs.pending.get(job_id)
        if job is None:
            record = self.jobs.records.get(job_id)
            state = record.state.value if record else (
                "finished" if job_id in self.jobs.finished else "unknown")
            raise Rejected(RejectCode.JOB_NOT_QUEUED, f"job {job_id!r} is {state}, not queued")
        return job

    def _running(self, job_id: str) -> JobRecord:
        record = self.jobs.records.get(job_id)
        if record is None or record.state is not JobState.RUNNING:
            raise Rejected(RejectCode.JOB_NOT_RUNNING, f"job {job_id!r} is not running")
        return record

    def _place(self, job_ids: tuple[str, ...], device_id: str, gang: tuple[str, ...]) -> Batch:
        if not job_ids or len(set(job_ids)) != len(job_ids):
            raise Rejected(RejectCode.BAD_BATCH, "a placement needs distinct job ids")
        jobs = [self._pending_job(j) for j in job_ids]
        dev = placement.device(self.cap, device_id)
        if isinstance(jobs[0], ClusterJob):
            return self._launch(jobs, dev, tuple(gang),
                                placement.cluster_job_need(self.cap, jobs, dev, gang))
        if gang:
            raise Rejected(RejectCode.BAD_GANG, "attention batches run on one device")
        why = packing.refusal(jobs) if len(jobs) > 1 else None
        if why is not None:
            raise Rejected(RejectCode.BAD_BATCH, why)
        cached = {j.id: t for j in jobs if (t := self.cap.caches.hit(j, dev.spec.id))}
        return self._launch(jobs, dev, (), placement.attention_need(self.cost, jobs, dev, cached),
                            cached)

    def _launch(self, jobs: list[Job], dev: DeviceState, gang: tuple[str, ...],
                need: placement.Need, cached: Mapping[str, int] | None = None) -> Batch:
        self.batch_seq += 1
        batch = Batch(f"b{self.batch_seq}", dev.spec.id, tuple(j.id for j in jobs), self.now,
                      need.seconds, need.share, need.memory, need.flops, gang, need.cpus,
                      need.host_memory, need.elastic)
        for job_id, tokens in (cached or {}).items():  # recent before the booking evicts
            self.cap.caches.use(self.jobs.records[job_id].job, dev.spec.id, tokens)
        self.cap.book(batch)
        for job in jobs:
            self.jobs.dequeue(job)
            record = self.jobs.records[job.id]
            record.state, record.start, record.batch = JobState.RUNNING, self.now, batch.id
            record.device, record.node, record.batch_size = dev.spec.id, dev.spec.node, len(jobs)
            record.attempts += 1
            record.solo_seconds = self._solo(job, dev, cached) if len(jobs) > 1 \
                else need.seconds
            record.cached_tokens = cached.get(job.id, 0) if cached else 0
            if self.journal is not None:
                self.journal.transition(self.now, record)
        return batch

    def _solo(self, job: Job, dev: DeviceState, cached: Mapping[str, int] | None) -> float:
        if cached and job.id in cached:
            return self.cost.cached([job], dev.spec.id, cached)[0]
        return self.cost.seconds([job], dev.spec.id)

    def _preempt(self, job_id: str) -> Batch:
        """Stop the batch running ``job_id``; all its jobs go back to the queue."""
        batch = self.cap.batches[self._running(job_id).batch or ""]
        self.cap.release(batch)
        self.jobs.requeue_batch(batch, self.now, "preempted by the policy", limit=False)
        return batch

    def _split(self, action: Split) -> None:
        job = self._pending_job(action.job)
        if not isinstance(job, AttentionJob):
            raise Rejected(RejectCode.BAD_SPLIT, "only attention jobs can be split")
        size_ = {"batch": job.batch, "heads": job.kv_heads}.get(action.axis)
        if size_ is None:
            raise Rejected(RejectCode.BAD_SPLIT,
                           f"split axis must be batch or heads, got {action.axis!r}")
        if action.parts < 2 or size_ % action.parts:
            raise Rejected(RejectCode.BAD_SPLIT,
                           f"{action.axis}={size_} does not split into {action.parts} parts")
        jobs = self.jobs
        parent = jobs.records[job.id]
        if parent.parent is not None:
            raise Rejected(RejectCode.BAD_SPLIT, "a part of a split job cannot be split again")
        parts = [job.split_part(action.axis, action.parts, k) for k in range(action.parts)]
        taken = [p.id for p in parts if jobs.known(p.id)]
        if taken:
            raise Rejected(RejectCode.BAD_SPLIT, f"part id {taken[0]!r} is already a job")
        jobs.dequeue(job)
        parent.state, parent.parts_left = JobState.SPLIT, action.parts
        for part in parts:
            record = JobRecord(part, ready_time=self.now, parent=job.id)
            jobs.records[part.id] = record
            jobs.enqueue(record, self.now)
