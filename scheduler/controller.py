"""The controller: sole owner of job and device state, executor-agnostic.

It admits jobs, asks the policy for decisions on every event, validates each
action against capacity and job state, applies the valid ones and records
every decision (applied, rejected or errored) with its reason and the
policy's name. Executors (simulated or Ray) only run what it hands them and
report back through ``batch_done``, ``device_down`` and ``telemetry``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from scheduler.cluster import ClusterSpec
from scheduler.deadline import Deadline
from scheduler.decisions import (
    ACTION_TYPES,
    Action,
    Decisions,
    Defer,
    Migrate,
    Offload,
    Place,
    Preempt,
    Split,
)
from scheduler.jobs import AttentionJob, ClusterJob, Job
from scheduler.pricing import ClusterCost, shape_key
from scheduler.state import Batch, DeviceState, FinishedIds, JobRecord, JobState, NodeState
from scheduler.units import size
from scheduler.view import DeviceView, NodeView, Telemetry, View

if TYPE_CHECKING:
    from scheduler.journal import Journal

OUT_OF_MEMORY = "out of memory"  # how executors start an out-of-memory error
EMA = 0.3  # weight of the newest telemetry sample in the moving averages
# Shapes whose "fits some device?" answer is remembered. Traces repeat a few shapes
# but also draw lengths per job, so the memo is bounded: full, it starts over.
FIT_MEMO_SIZE = 1_024


class PolicyFailure(RuntimeError):
    """The policy failed too many times in a row; the run cannot go on sensibly."""


class Rejected(Exception):
    """An action failed validation; the message is the reason recorded."""


def _wrong_field(action: Action) -> str | None:
    """Which field of ``action`` has the wrong type, if any.

    Actions are plain dataclasses, so a plugin can put anything in them; a
    list for a job id or a float for ``parts`` must be refused here, before it
    reaches a dict, a set or the decision log.
    """
    for f in fields(action):
        value = getattr(action, f.name)
        if f.name in ("jobs", "gang"):
            ok = isinstance(value, tuple | list) and all(isinstance(v, str) for v in value)
        elif f.name == "parts":
            ok = type(value) is int
        else:
            ok = isinstance(value, str) or (value is None and isinstance(action, Defer))
        if not ok:
            kind = "int" if f.name == "parts" else "tuple or list of str" if f.name in (
                "jobs", "gang") else "str"
            return f"{f.name} is not a {kind}"
    return None


@dataclass
class Step:
    """What one decision round changed, for the executor to carry out."""

    started: list[Batch] = field(default_factory=list)
    cancelled: list[Batch] = field(default_factory=list)


class Sink:
    """Where the controller reports what happened; the default keeps nothing."""

    def job_finished(self, record: JobRecord) -> None:
        """Called exactly once per job, when it is done or failed."""

    def decision(self, row: dict[str, Any]) -> None:
        """Called for every action, applied or rejected, and every policy error."""


class Controller:
    def __init__(self, spec: ClusterSpec, cost: ClusterCost, policy: Any, *,
                 policy_name: str, seed: int = 0, slots: int = 1, sink: Sink | None = None,
                 max_policy_failures: int = 10, max_attempts: int = 5,
                 journal: Journal | None = None, decide_timeout: float | None = None,
                 can_preempt: bool = True) -> None:
        self.spec, self.cost, self.policy, self.policy_name = spec, cost, policy, policy_name
        self.seed, self.sink, self.journal = seed, sink or Sink(), journal
        self.late_results = 0  # completions of batches already given up on, ignored
        self.can_preempt = can_preempt  # whether the executor can stop a running batch
        self.deadline = Deadline(decide_timeout) if decide_timeout else None
        self.max_policy_failures, self.max_attempts = max_policy_failures, max_attempts
        self.now = 0.0
        self.records: dict[str, JobRecord] = {}
        self.pending: dict[str, Job] = {}
        self.tenants: dict[str, dict[str, Job]] = {}
        self.blocked: dict[str, list[str]] = {}
        self.finished = FinishedIds()  # id -> succeeded, for late dependents
        self.nodes = {n.name: NodeState(n, n.cpus, n.memory_bytes) for n in spec.nodes}
        self.devices = {d.id: DeviceState(d, cost.profile(d.id), slots, memory_free=d.memory_bytes,
                                          memory_limit=d.memory_bytes)
                        for d in spec.devices}
        self._views = {k: DeviceView(s) for k, s in self.devices.items()}
        self.free: dict[str, DeviceView] = dict(self._views)
        self.batches: dict[str, Batch] = {}
        self.telemetry: dict[str, Telemetry] = {}
        self.policy_state: Any = None
        self.failures_in_row = 0
        self.calls = 0
        self.rejections = 0
        self._batch_seq = 0
        self._fit_memo: dict[object, str | None] = {}
        groups: dict[str, list[str]] = {}
        for d in spec.devices:
            if d.profile is not None and cost.profile(d.id) is not None:
                groups.setdefault(d.profile, []).append(d.id)
        self.groups = MappingProxyType({k: tuple(v) for k, v in groups.items()})
        self._proxies = (MappingProxyType(self.pending), MappingProxyType(self.tenants),
                         MappingProxyType(self._views), MappingProxyType(self.free),
                         MappingProxyType(self.telemetry), MappingProxyType(self.records))
        self._node_views = MappingProxyType({k: NodeView(n) for k, n in self.nodes.items()})

    # -- admission and dependencies ------------------------------------------------------

    def submit(self, job: Job, now: float, attempts: int = 0) -> None:
        """Admit a job; one that can never run anywhere fails now, with the reason.

        ``attempts``: runs the job already began before a resumed run's crash.
        """
        self._tick(now)
        if job.id in self.records or job.id in self.finished:
            raise ValueError(f"job {job.id!r} submitted twice")
        record = JobRecord(job, ready_time=now, attempts=attempts)
        self.records[job.id] = record
        misfit = self._never_fits(job)
        if misfit is not None:
            self._finish(record, JobState.FAILED, misfit)
            return
        parent = job.depends_on
        if parent is not None and parent not in self.finished:
            if parent not in self.records:
                self._finish(record, JobState.FAILED, f"depends on unknown job {parent!r}")
                return
            record.state = JobState.BLOCKED
            if self.journal is not None:
                self.journal.transition(now, record, f"waits for {parent!r}")
            self.blocked.setdefault(parent, []).append(job.id)
            return
        if parent is not None and not self.finished[parent]:
            self._finish(record, JobState.FAILED, f"dependency {parent!r} failed")
            return
        self._enqueue(record)

    def _never_fits(self, job: Job) -> str | None:
        key: object = shape_key(job) if isinstance(job, AttentionJob) else (
            job.gpus, job.gpu_fraction, job.cpus, job.memory_bytes)
        if key in self._fit_memo:
            return self._fit_memo[key]
        if len(self._fit_memo) >= FIT_MEMO_SIZE:  # shapes vary per job in real traces
            self._fit_memo.clear()
        reason: str | None
        if isinstance(job, ClusterJob):
            fits = any(n.cpus >= job.cpus and n.memory_bytes >= job.memory_bytes and
                       sum(d.kind == "gpu" for d in n.devices) >= job.gpus and n.devices
                       for n in self.spec.nodes)
            reason = None if fits else (
                f"fits no node: needs {job.gpus} GPUs, {job.cpus:g} CPUs and "
                f"{size(job.memory_bytes)} on one node")
        else:
            short = self._memory_short(job, ((d.id, d.memory_bytes) for d in self.spec.devices))
            reason = None if short is None else (
                "no device can run it (no profile measures its dtype)" if short[0] == 0 else
                f"fits no device: needs {size(short[0])}, the largest device that runs it "
                f"has {size(short[1])}")
        self._fit_memo[key] = reason
        return reason

    def _memory_short(self, job: AttentionJob, capacity: Iterable[tuple[str, int]]
                      ) -> tuple[int, int] | None:
        """None when one of the ``(device, bytes)`` that can run ``job`` holds it; else
        (the least it needs on them, the most any holds), or (0, 0) when none can run it."""
        least, largest = 0, 0
        for device_id, room in capacity:
            seconds, need, _ = self.cost.solo(job, device_id)
            if not math.isfinite(seconds):
                continue
            if need <= room:
                return None
            least = need if least == 0 else min(least, need)
            largest = max(largest, room)
        return least, largest

    def _enqueue(self, record: JobRecord, reason: str | None = None) -> None:
        record.state = JobState.QUEUED
        if self.journal is not None:
            self.journal.transition(self.now, record, reason)
        job = record.job
        self.pending[job.id] = job
        self.tenants.setdefault(job.tenant, {})[job.id] = job

    def _dequeue(self, job: Job) -> None:
        del self.pending[job.id]
        group = self.tenants[job.tenant]
        del group[job.id]
        if not group:
            del self.tenants[job.tenant]

    def _finish(self, record: JobRecord, state: JobState, reason: str | None = None) -> None:
        record.state, record.end = state, self.now
        record.reason = reason
        if record.parent is not None:
            self._part_finished(record)
            return
        del self.records[record.id]
        self.cost.forget(record.id)
        ok = state is JobState.DONE
        self.finished[record.id] = ok
        if self.journal is None or self.journal.finished(self.now, record):
            self.sink.job_finished(record)
        for child_id in self.blocked.pop(record.id, ()):
            child = self.records[child_id]
            if ok:
                child.ready_time = self.now
                self._enqueue(child)
            else:
                self._finish(child, JobState.FAILED, f"dependency {record.id!r} failed")

    def _part_finished(self, part: JobRecord) -> None:
        del self.records[part.id]
        self.cost.forget(part.id)
        parent = self.records.get(part.parent or "")
        if parent is None or parent.state is not JobState.SPLIT:
            return  # the parent already ended through another part
        if part.state is JobState.FAILED:
            self._drop_queued_parts(parent.id)
            self._finish(parent, JobState.FAILED, f"part {part.id!r} failed: {part.reason}")
            return
        parent.parts_left -= 1
        parent.start = part.start if parent.start is None else min(parent.start, part.start or 0)
        parent.device, parent.node, parent.batch_size = part.device, part.node, part.batch_size
        parent.attempts = max(parent.attempts, part.attempts)
        parent.solo_seconds += part.solo_seconds
        if parent.parts_left == 0:
            self._finish(parent, JobState.DONE)

    def _drop_queued_parts(self, parent_id: str) -> None:
        """Forget the parts of a failed parent that never started.

        Running parts are left to finish (their batch-mates are other jobs);
        their results are then ignored, since the parent has already ended.
        """
        for part in [r for r in self.records.values()
                     if r.parent == parent_id and r.state is JobState.QUEUED]:
            self._dequeue(part.job)
            del self.records[part.id]
            self.cost.forget(part.id)

    # -- the decision round --------------------------------------------------------------

    def decide(self, now: float, event: str) -> Step:
        """Ask the policy, validate and apply its actions; return what to start or stop."""
        self._tick(now)
        step = Step()
        if not self.pending and event != "telemetry":
            return step
        self.calls += 1
        pending, tenants, devices, free, telemetry, records = self._proxies
        view = View(now, pending, tenants, devices, free, telemetry, self.cost,
                    self.seed * 1_000_003 + self.calls, self.policy_state, event, self.groups,
                    records, self._node_views)
        try:
            answer = (self.policy.decide(view) if self.deadline is None
                      else self.deadline.call(self.policy.decide, view))
            actions, state = self._unpack(answer)
        except Exception as e:  # a plugin's bug must not take the cluster down
            self._policy_error(f"{type(e).__name__}: {e}")
            return step
        self.failures_in_row = 0
        self.policy_state = state
        for action in actions:
            try:
                self._apply(action, step)
            except Rejected as why:
                self.rejections += 1
                self._record(action, "rejected", str(why))
            else:
                self._record(action, "applied", None)
        return step

    def _unpack(self, answer: object) -> tuple[Sequence[Action], Any]:
        actions: Sequence[Action]
        if isinstance(answer, Decisions):
            actions, state = answer.actions, answer.state
        elif isinstance(answer, list | tuple):
            actions, state = answer, self.policy_state
        else:
            raise TypeError(f"decide() returned {type(answer).__name__}, expected Decisions "
                            "or a list of actions")
        for a in actions:
            if not isinstance(a, ACTION_TYPES):
                raise TypeError(f"decide() returned {a!r}, which is not an action")
            wrong = _wrong_field(a)
            if wrong is not None:
                raise TypeError(f"decide() returned {a!r}, whose {wrong}")
        return actions, state

    def _policy_error(self, message: str) -> None:
        self.failures_in_row += 1
        self.sink.decision({"t": self.now, "policy": self.policy_name, "action": "error",
                            "outcome": "error", "why": message})
        if self.failures_in_row >= self.max_policy_failures:
            raise PolicyFailure(f"policy {self.policy_name!r} failed {self.failures_in_row} "
                                f"times in a row; last error: {message}")

    def switch_policy(self, policy: Any, name: str, why: str) -> None:
        """Hand the decisions to ``policy`` from now on (a live run's fallback)."""
        self.sink.decision({"t": self.now, "policy": self.policy_name, "action": "fallback",
                            "outcome": "switched", "why": f"{why}; {name!r} decides from now"})
        self.policy, self.policy_name = policy, name
        self.policy_state, self.failures_in_row = None, 0

    def _record(self, action: Action, outcome: str, why: str | None) -> None:
        row: dict[str, Any] = {"t": self.now, "policy": self.policy_name,
                               "action": type(action).__name__.lower(), "outcome": outcome}
        jobs = getattr(action, "jobs", None)
        row["jobs"] = list(jobs) if jobs is not None else [getattr(action, "job", None)]
        device = getattr(action, "device", None)
        if device is not None:
            row["device"] = device
        row["reason"] = action.reason
        if why is not None:
            row["why"] = why
        self.sink.decision(row)

    # -- applying actions -----------------------------------------------------------------

    def _apply(self, action: Action, step: Step) -> None:
        if isinstance(action, Place | Offload):
            if isinstance(action, Offload) and self._device(action.device).spec.kind != "cpu":
                raise Rejected(f"offload target {action.device!r} is not a CPU device")
            gang = action.gang if isinstance(action, Place) else ()
            step.started.append(self._place(action.jobs, action.device, gang))
        elif isinstance(action, Preempt | Migrate) and not self.can_preempt:
            # A live worker cannot be stopped mid-batch: freeing its device here would
            # put a second batch on it while the first still runs.
            self._running(action.job)
            raise Rejected("this executor cannot stop a running batch (live workers run a "
                           "batch to its end); preemption and migration run in the "
                           "simulator only")
        elif isinstance(action, Preempt):
            step.cancelled.append(self._preempt(action.job))
        elif isinstance(action, Migrate):
            record = self._running(action.job)
            target = self._device(action.device)
            if target.spec.id == record.device:
                raise Rejected("already running there")
            if not isinstance(record.job, AttentionJob):
                raise Rejected("cluster jobs hold their devices until they end")
            self._check_attention([record.job], target)  # reject before changing anything
            batch = self._preempt(action.job)
            step.cancelled.append(batch)
            step.started.append(self._place((action.job,), action.device, ()))
        elif isinstance(action, Split):
            self._split(action)
        elif not isinstance(action, Defer):  # pragma: no cover - _unpack checked the type
            raise Rejected(f"unknown action {action!r}")

    def _device(self, device_id: str) -> DeviceState:
        state = self.devices.get(device_id)
        if state is None:
            raise Rejected(f"no device {device_id!r}")
        if not state.up:
            raise Rejected(f"device {device_id!r} is down")
        return state

    def _pending_job(self, job_id: str) -> Job:
        job = self.pending.get(job_id)
        if job is None:
            record = self.records.get(job_id)
            state = record.state.value if record else ("finished" if job_id in self.finished
                                                       else "unknown")
            raise Rejected(f"job {job_id!r} is {state}, not queued")
        return job

    def _running(self, job_id: str) -> JobRecord:
        record = self.records.get(job_id)
        if record is None or record.state is not JobState.RUNNING:
            raise Rejected(f"job {job_id!r} is not running")
        return record

    def _place(self, job_ids: tuple[str, ...], device_id: str, gang: tuple[str, ...]) -> Batch:
        if not job_ids or len(set(job_ids)) != len(job_ids):
            raise Rejected("a placement needs distinct job ids")
        jobs = [self._pending_job(j) for j in job_ids]
        dev = self._device(device_id)
        if isinstance(jobs[0], ClusterJob):
            return self._place_cluster_job(jobs, dev, gang)
        if gang:
            raise Rejected("attention batches run on one device")
        if any(not self.cost.can_pack(jobs[0], j) for j in jobs[1:]):
            raise Rejected("jobs in one batch must be attention jobs sharing head_dim, dtype "
                           "and causality")
        seconds, memory, flops = self._check_attention(jobs, dev)
        return self._launch(jobs, dev, (), seconds, 1.0 / dev.slots, memory, flops, 0.0, 0,
                            True)

    def _check_attention(self, jobs: Sequence[Job], dev: DeviceState
                         ) -> tuple[float, int, float]:
        """(seconds, memory, flops) of ``jobs`` on ``dev``; Rejected unless it has room."""
        device_id = dev.spec.id
        if dev.slots_free < 1:
            raise Rejected(f"device {device_id!r} has no free slot")
        if dev.share_free + 1e-9 < 1.0 / dev.slots:
            raise Rejected(f"device {device_id!r} has {dev.share_free:.2f} of its compute free")
        if len(jobs) == 1:  # the common case: one memoized lookup answers all three
            seconds, memory, flops = self.cost.solo(jobs[0], device_id)
        else:
            seconds = self.cost.seconds(jobs, device_id)
            memory = sum(self.cost.memory(j, device_id) for j in jobs)
            flops = sum(self.cost.flops(j, device_id) for j in jobs)
        if not math.isfinite(seconds):
            raise Rejected(f"device {device_id!r} cannot run these jobs (no profile for them)")
        if memory > dev.memory_free:
            raise Rejected(f"needs {size(memory)}, device {device_id!r} has "
                           f"{size(dev.memory_free)} free")
        return seconds, memory, flops

    def _place_cluster_job(self, jobs: list[Job], dev: DeviceState,
                           gang: tuple[str, ...]) -> Batch:
        if len(jobs) != 1:
            raise Rejected("cluster jobs are placed one at a time")
        job = jobs[0]
        assert isinstance(job, ClusterJob)
        need_devices = max(job.gpus, 1)
        if len(gang) != need_devices - 1:
            raise Rejected(f"a job needing {job.gpus} GPUs names {need_devices - 1} gang "
                           f"devices, got {len(gang)}")
        members = [dev] + [self._device(g) for g in gang]
        if len({m.spec.id for m in members}) != len(members):
            raise Rejected("gang devices must be distinct")
        share = job.gpu_fraction if job.gpus else 0.0
        for m in members:
            if m.spec.node != dev.spec.node:
                raise Rejected("a gang's devices must share one node")
            if job.gpus and m.spec.kind != "gpu":
                raise Rejected(f"device {m.spec.id!r} is not a GPU")
            if m.share_free + 1e-9 < share:
                raise Rejected(f"device {m.spec.id!r} has {m.share_free:.2f} of a GPU free, "
                               f"needs {share:.2f}")
        node = self.nodes[dev.spec.node]
        if not node.fits(job.cpus, job.memory_bytes):
            raise Rejected(f"node {node.spec.name!r} has {node.cpus_free:g} CPUs and "
                           f"{size(node.memory_free)} free")
        return self._launch(jobs, dev, tuple(gang), job.duration, share, 0, 0.0, job.cpus,
                            job.memory_bytes, False)

    def _launch(self, jobs: list[Job], dev: DeviceState, gang: tuple[str, ...], seconds: float,
                share: float, memory: int, flops: float, cpus: float, host_memory: int,
                elastic: bool) -> Batch:
        self._batch_seq += 1
        batch = Batch(f"b{self._batch_seq}", dev.spec.id, tuple(j.id for j in jobs), self.now,
                      seconds, share, memory, flops, gang, cpus, host_memory, elastic)
        for member in (dev, *(self.devices[g] for g in gang)):
            member.share_free -= share
            member.memory_free -= memory if member is dev else 0
            member.running[batch.id] = batch
            member.elastic += batch.elastic and member is dev
            self._update_free(member)
        node = self.nodes[dev.spec.node]
        node.cpus_free -= cpus
        node.memory_free -= host_memory
        self.batches[batch.id] = batch
        for job in jobs:
            self._dequeue(job)
            record = self.records[job.id]
            record.state, record.start, record.batch = JobState.RUNNING, self.now, batch.id
            record.device, record.node, record.batch_size = dev.spec.id, dev.spec.node, len(jobs)
            record.attempts += 1
            record.solo_seconds = self.cost.seconds([job], dev.spec.id) if len(jobs) > 1 \
                else seconds
            if self.journal is not None:
                self.journal.transition(self.now, record)
        return batch

    def _update_free(self, dev: DeviceState) -> None:
        if dev.up and dev.slots_free > 0 and dev.share_free > 1e-9:
            self.free[dev.spec.id] = self._views[dev.spec.id]
        else:
            self.free.pop(dev.spec.id, None)

    def _release(self, batch: Batch) -> None:
        del self.batches[batch.id]
        for member_id in (batch.device, *batch.gang):
            member = self.devices[member_id]
            del member.running[batch.id]
            member.elastic -= batch.elastic and member_id == batch.device
            member.share_free = min(1.0, member.share_free + batch.share)
            if member_id == batch.device:
                member.memory_free += batch.memory
            self._update_free(member)
        node = self.nodes[self.devices[batch.device].spec.node]
        node.cpus_free += batch.cpus
        node.memory_free += batch.host_memory

    def _preempt(self, job_id: str) -> Batch:
        """Stop the batch running ``job_id``; all its jobs go back to the queue."""
        batch = self.batches[self._running(job_id).batch or ""]
        self._release(batch)
        self._requeue(batch, "preempted by the policy", limit=False)
        return batch

    def _requeue(self, batch: Batch, reason: str | None, limit: bool = True) -> None:
        for job_id in batch.jobs:
            record = self.records.get(job_id)
            if record is not None and record.state is JobState.RUNNING:
                self._requeue_one(record, reason, limit)

    def _requeue_one(self, record: JobRecord, reason: str | None, limit: bool = True) -> None:
        """Back to the queue; after ``max_attempts`` failed runs, failed for good.

        ``limit`` is off when the policy itself stopped the job (preempt,
        migrate): moving work is not the job failing.
        """
        if limit and record.attempts >= self.max_attempts:
            self._finish(record, JobState.FAILED,
                         f"gave up after {record.attempts} attempts: {reason}")
        else:
            record.state, record.start, record.device, record.batch = (
                JobState.QUEUED, None, None, None)
            self._enqueue(record, reason)

    def _split(self, action: Split) -> None:
        job = self._pending_job(action.job)
        if not isinstance(job, AttentionJob):
            raise Rejected("only attention jobs can be split")
        size = {"batch": job.batch, "heads": job.kv_heads}.get(action.axis)
        if size is None:
            raise Rejected(f"split axis must be batch or heads, got {action.axis!r}")
        if action.parts < 2 or size % action.parts:
            raise Rejected(f"{action.axis}={size} does not split into {action.parts} parts")
        parent = self.records[job.id]
        if parent.parent is not None:
            raise Rejected("a part of a split job cannot be split again")
        parts = [job.split_part(action.axis, action.parts, k) for k in range(action.parts)]
        taken = [p.id for p in parts if p.id in self.records or p.id in self.finished]
        if taken:
            raise Rejected(f"part id {taken[0]!r} is already a job")
        self._dequeue(job)
        parent.state, parent.parts_left = JobState.SPLIT, action.parts
        for part in parts:
            record = JobRecord(part, ready_time=self.now, parent=job.id)
            self.records[part.id] = record
            self._enqueue(record)

    # -- events from the executor ---------------------------------------------------------

    def batch_done(self, batch_id: str, now: float, error: str | None = None) -> list[str]:
        """A batch finished (or failed with ``error``); returns its job ids. Idempotent."""
        self._tick(now)
        batch = self.batches.get(batch_id)
        if batch is None:
            self.late_results += 1
            return []  # given up on earlier (its device went down), or a duplicate report
        self._release(batch)
        if error is not None:
            if error.startswith(OUT_OF_MEMORY):
                self._shrink(self.devices[batch.device], batch)
            self._requeue(batch, error)
            return list(batch.jobs)
        for job_id in batch.jobs:
            self._finish(self.records[job_id], JobState.DONE)
        return list(batch.jobs)

    def _shrink(self, dev: DeviceState, batch: Batch) -> None:
        """The device ran out of memory: plan with less than what it just failed to hold.

        Without this a policy would see the device idle (a refused batch takes
        no time) and send the same work back until the jobs ran out of attempts;
        with it, the work goes where it fits, or is split.
        """
        others = dev.memory_limit - dev.memory_free  # held by batches still running there
        limit = min(dev.memory_limit, max(0, others + batch.memory - 1))
        dev.memory_free -= dev.memory_limit - limit
        dev.memory_limit = limit
        self.sink.decision({"t": self.now, "policy": "controller", "action": "oom",
                            "outcome": "learned", "jobs": list(batch.jobs),
                            "device": dev.spec.id,
                            "why": f"out of memory: plans with {size(limit)} there from now"})

    def device_down(self, device_id: str, now: float, reason: str) -> list[Batch]:
        """A device is gone: its batches (gang members too) are requeued."""
        self._tick(now)
        dev = self.devices[device_id]
        hit = list(dev.running.values())
        for batch in hit:
            self._release(batch)
            self._requeue(batch, reason)
        dev.up = False
        self._update_free(dev)
        self.sink.decision({"t": self.now, "policy": "controller", "action": "device_down",
                            "outcome": "observed", "device": device_id,
                            "jobs": [j for b in hit for j in b.jobs], "why": reason})
        return hit

    def device_up(self, device_id: str, now: float) -> None:
        """A device is back (its worker restarted): the policy may use it again."""
        self._tick(now)
        dev = self.devices[device_id]
        if self.nodes[dev.spec.node].up and not dev.up:
            dev.up = True
            self._update_free(dev)
            self.sink.decision({"t": self.now, "policy": "controller", "action": "device_up",
                                "outcome": "observed", "device": device_id,
                                "why": "its worker is back"})

    def node_down(self, node: str, now: float, reason: str) -> list[Batch]:
        self.nodes[node].up = False
        hit: list[Batch] = []
        for device in self.nodes[node].spec.devices:
            hit += self.device_down(device.id, now, reason)
        return hit

    def restore(self, record: JobRecord) -> None:
        """A job a resumed run finished before its crash: counted, never run again."""
        self.finished[record.id] = record.state is JobState.DONE
        self.sink.job_finished(record)

    def refuse(self, job: Job, reason: str) -> None:
        """Account for a job the run will never admit (it stopped first)."""
        record = JobRecord(job, ready_time=self.now)
        self.records[job.id] = record
        self._finish(record, JobState.FAILED, reason)

    def fail(self, job_id: str, reason: str) -> None:
        """End a job as failed wherever it is (queued, blocked, running or split)."""
        record = self.records[job_id]
        if record.state is JobState.QUEUED:
            self._dequeue(record.job)
        elif record.state is JobState.RUNNING and record.batch in self.batches:
            batch = self.batches[record.batch]
            self._release(batch)
            for other in batch.jobs:
                if other != job_id:
                    self._requeue_one(self.records[other], reason)
        elif record.state is JobState.BLOCKED and record.job.depends_on in self.blocked:
            self.blocked[record.job.depends_on].remove(job_id)
        elif record.state is JobState.SPLIT:
            self._drop_queued_parts(job_id)
        self._finish(record, JobState.FAILED, reason)

    def fail_unfinished(self, reason: str) -> None:
        """End every unfinished job with ``reason``: a stopped run accounts for all."""
        for record in list(self.records.values()):
            if record.parent is None and record.id in self.records and record.state not in (
                    JobState.DONE, JobState.FAILED):
                self.fail(record.id, reason)

    def give_up_idle(self) -> str | None:
        """The cluster is idle and work is queued: end it, each job with its reason.

        A job that no device that is up can hold any more (out-of-memory errors
        shrank what the devices plan with, or its devices are gone) fails with
        that reason, and the run has done all it could; anything else the
        policy left unplaced fails with a message that blames the policy,
        which is returned.
        """
        for job in list(self.pending.values()):
            reason = self._fits_nothing_up(job) if job.id in self.pending else None
            if reason is not None:  # (failing a part can take its queued siblings along)
                self.fail(job.id, reason)
        if not self.pending:
            self.fail_unfinished("its dependency never ran")  # blocked on failed jobs
            return None
        message = (f"policy {self.policy_name!r} left {len(self.pending)} jobs unplaced on "
                   "an idle cluster")
        self.fail_unfinished(message)
        return message

    def _fits_nothing_up(self, job: Job) -> str | None:
        if not isinstance(job, AttentionJob):
            return None
        short = self._memory_short(job, ((d.spec.id, d.memory_limit)
                                         for d in self.devices.values() if d.up))
        if short is None:
            return None
        least, largest = short
        if least == 0:
            return "no device that can run it is up (lost devices)"
        need_s, most_s = size(least), size(largest)
        if need_s == most_s:
            need_s, most_s = f"{least:,} bytes", f"{largest:,} bytes"
        return (f"fits no device that is up: needs {need_s}, the most any holds now is "
                f"{most_s} (out-of-memory errors shrank what they plan with)")

    def observe(self, samples: Iterable[Telemetry]) -> None:
        """Fold telemetry into the latest-sample view with moving averages."""
        for s in samples:
            old = self.telemetry.get(s.device)
            ema_util = s.util if old is None else (1 - EMA) * old.ema_util + EMA * s.util
            ema_speed = s.speed if old is None else (1 - EMA) * old.ema_speed + EMA * s.speed
            self.telemetry[s.device] = Telemetry(s.time, s.device, s.util, s.mem_used,
                                                 s.mem_total, s.queue_len, s.running,
                                                 s.achieved_flops, s.speed, ema_util, ema_speed)

    def _tick(self, now: float) -> None:
        if now < self.now:
            raise ValueError(f"time went backwards: {now} < {self.now}")
        self.now = now

