"""The controller: sole owner of job and device state, executor-agnostic.

It admits jobs, asks the policy for decisions on every event, validates each
action against capacity and job state, applies the valid ones and records
every decision (applied, rejected or errored) with its reason and the
policy's name. Executors (simulated or Ray) only run what it hands them and
report back, through the run loop, as ``batch_done``, ``device_down`` and
``observe``. Its state lives in a :class:`JobBook` (jobs) and a
:class:`Capacity` (devices and nodes); outside, it offers read-only views.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from scheduler.actions import Actions, Step
from scheduler.admission import FitCheck
from scheduler.capacity import Capacity
from scheduler.cluster import ClusterSpec
from scheduler.deadline import Deadline
from scheduler.decisions import Action, unpack
from scheduler.events import Failure, FailureCode
from scheduler.jobbook import JobBook
from scheduler.jobs import Job
from scheduler.policy import Policy, PolicyFailure
from scheduler.pricing import ClusterCost
from scheduler.records import DecisionRecord, RejectCode, Rejected, Sink
from scheduler.snapshot import ViewBuilder
from scheduler.state import Batch, JobRecord, JobState
from scheduler.units import size
from scheduler.view import DeviceView, NodeView, Telemetry

if TYPE_CHECKING:
    from scheduler.journal import Journal

__all__ = ["Controller", "PolicyFailure", "Rejected", "Sink", "Step"]
EMA = 0.3  # weight of the newest telemetry sample in the moving averages


class Controller:
    def __init__(self, spec: ClusterSpec, cost: ClusterCost, policy: Policy, *,
                 policy_name: str, seed: int = 0, slots: int = 1, sink: Sink | None = None,
                 max_policy_failures: int = 10, max_attempts: int = 5,
                 journal: Journal | None = None, decide_timeout: float | None = None,
                 can_preempt: bool = True) -> None:
        self._spec, self._cost, self._policy, self._policy_name = spec, cost, policy, policy_name
        self._seed, self._sink, self._journal = seed, sink or Sink(), journal
        self._late_results = 0  # completions of batches already given up on, ignored
        self._deadline = Deadline(decide_timeout) if decide_timeout else None
        self._max_policy_failures = max_policy_failures
        self._now = 0.0
        self._jobs = JobBook(cost, self._sink, journal, max_attempts)
        self._cap = Capacity(spec, cost, slots)
        self._fit = FitCheck(spec, cost)
        self._telemetry: dict[str, Telemetry] = {}
        self._views = ViewBuilder(self._jobs, self._cap, self._telemetry, cost)
        self._actions = Actions(self._jobs, self._cap, cost, journal, can_preempt)
        self._policy_state: Any = None
        self._failures_in_row = 0
        self._calls = 0
        self._resumed_attempts: Mapping[str, int] = {}

    # -- read-only state ------------------------------------------------------------------

    now = property(lambda self: self._now, doc="The controller's clock.")
    cost = property(lambda self: self._cost, doc="The cost model it prices with.")
    policy_state = property(lambda self: self._policy_state, doc="The policy's memory.")
    failures_in_row = property(lambda self: self._failures_in_row,
                               doc="Policy errors since its last good answer.")
    late_results = property(lambda self: self._late_results,
                            doc="Results of batches given up on earlier, ignored.")
    finished = property(lambda self: self._jobs.finished, doc="Ids of jobs that ended.")

    @property
    def pending(self) -> Mapping[str, Job]:
        return MappingProxyType(self._jobs.pending)

    @property
    def records(self) -> Mapping[str, JobRecord]:
        return MappingProxyType(self._jobs.records)

    @property
    def batches(self) -> Mapping[str, Batch]:
        return MappingProxyType(self._cap.batches)

    @property
    def devices(self) -> Mapping[str, DeviceView]:
        return MappingProxyType(self._cap.views)

    @property
    def free(self) -> Mapping[str, DeviceView]:
        return MappingProxyType(self._cap.free)

    @property
    def nodes(self) -> Mapping[str, NodeView]:
        return self._cap.node_views

    @property
    def telemetry(self) -> Mapping[str, Telemetry]:
        return MappingProxyType(self._telemetry)

    @property
    def queued(self) -> int:
        """Jobs waiting to be placed."""
        return len(self._jobs.pending)

    @property
    def busy(self) -> bool:
        """Whether any batch is running."""
        return bool(self._cap.batches)

    @property
    def unfinished(self) -> int:
        """Jobs admitted that have not ended (queued, blocked, running or split)."""
        return len(self._jobs.records)

    def node_devices(self, node: str) -> tuple[str, ...]:
        return tuple(d.id for d in self._cap.nodes[node].spec.devices)

    # -- admission and dependencies ------------------------------------------------------

    def resume(self, finished: Iterable[JobRecord], clock: float,
               attempts: Mapping[str, int]) -> None:
        """Continue a journalled run: its finished jobs counted, never run again; the
        others start with the attempts they had made and the clock where it stopped."""
        for record in finished:
            self._jobs.finished[record.id] = record.state is JobState.DONE
            self._sink.job_finished(record)
        self._tick(clock)
        self._resumed_attempts = attempts

    def submit(self, job: Job, now: float) -> None:
        """Admit a job; one that can never run anywhere fails now, with the reason."""
        self._tick(now)
        jobs = self._jobs
        if jobs.known(job.id):
            raise ValueError(f"job {job.id!r} submitted twice")
        record = JobRecord(job, ready_time=now, attempts=self._resumed_attempts.get(job.id, 0))
        jobs.records[job.id] = record
        misfit = self._fit.never_fits(job)
        if misfit is not None:
            jobs.finish(record, JobState.FAILED, now, misfit)
            return
        parent = job.depends_on
        if parent is not None and parent not in jobs.finished:
            if parent not in jobs.records:
                jobs.finish(record, JobState.FAILED, now, f"depends on unknown job {parent!r}")
                return
            jobs.block(record, now)
            return
        if parent is not None and not jobs.finished[parent]:
            jobs.finish(record, JobState.FAILED, now, f"dependency {parent!r} failed")
            return
        jobs.enqueue(record, now)

    # -- the decision round --------------------------------------------------------------

    def decide(self, now: float, event: str) -> Step:
        """Ask the policy, validate and apply its actions; return what to start or stop."""
        self._tick(now)
        step = Step()
        if not self._jobs.pending and event != "telemetry":
            return step
        self._calls += 1
        view = self._views.build(now, event, self._seed * 1_000_003 + self._calls,
                                 self._policy_state, detached=self._deadline is not None)
        try:
            answer = (self._policy.decide(view) if self._deadline is None
                      else self._deadline.call(self._policy.decide, view))
            actions, state = unpack(answer, self._policy_state)
        except Exception as e:  # a plugin's bug must not take the cluster down
            self._policy_error(f"{type(e).__name__}: {e}")
            return step
        self._failures_in_row = 0
        self._policy_state = state
        for action in actions:
            try:
                self._actions.apply(action, step, self._now)
            except Rejected as why:
                self._record(action, "rejected", str(why), why.code)
            else:
                self._record(action, "applied", None)
        return step

    def _policy_error(self, message: str) -> None:
        self._failures_in_row += 1
        self._sink.decision(DecisionRecord(self._now, self._policy_name, "error", "error",
                                           why=message))
        if self._failures_in_row >= self._max_policy_failures:
            raise PolicyFailure(f"policy {self._policy_name!r} failed "
                                f"{self._failures_in_row} times in a row; last error: {message}")

    def switch_policy(self, policy: Policy, name: str, why: str | None) -> None:
        """Hand the decisions to ``policy`` from now on (a run's fallback; ``why`` None:
        a test swapping policies, nothing recorded)."""
        if why is not None:
            self._sink.decision(DecisionRecord(self._now, self._policy_name, "fallback",
                                               "switched", why=f"{why}; {name!r} decides from now"))
        self._policy, self._policy_name = policy, name
        self._policy_state, self._failures_in_row = None, 0

    def _record(self, action: Action, outcome: str, why: str | None,
                code: RejectCode | None = None) -> None:
        jobs = getattr(action, "jobs", None)
        self._sink.decision(DecisionRecord(
            self._now, self._policy_name, type(action).__name__.lower(), outcome,
            tuple(jobs) if jobs is not None else (getattr(action, "job", None),),
            getattr(action, "device", None), action.reason, why, code, by_policy=True))

    # -- events from the executor ---------------------------------------------------------

    def batch_done(self, batch_id: str, now: float, failure: Failure | None = None,
                   cached: Mapping[str, int] | None = None) -> list[str]:
        """A batch finished (or failed with ``failure``); returns its job ids. Idempotent.

        ``cached``: the prompt tokens each job's worker took from its KV cache, measured;
        they replace the tokens the placement planned."""
        self._tick(now)
        batch = self._cap.batches.get(batch_id)
        if batch is None:
            self._late_results += 1
            return []  # given up on earlier (its device went down), or a duplicate report
        self._cap.release(batch)
        if failure is not None:
            if failure.code is FailureCode.OUT_OF_MEMORY:
                self._shrink(batch)
            self._jobs.requeue_batch(batch, now, failure.detail)
            return list(batch.jobs)
        for job_id in batch.jobs:
            record = self._jobs.records[job_id]
            if cached is not None:
                record.cached_tokens = cached.get(job_id, 0)
            # its blocks are kept before end_running, which may forget the record
            self._cap.caches.keep(record.job, batch.device, record.cached_tokens)
            self._jobs.end_running(record, now)
        return list(batch.jobs)

    def _shrink(self, batch: Batch) -> None:
        """The device ran out of memory: plan with less than what it just failed to hold.

        Without this a policy would see the device idle (a refused batch takes
        no time) and send the same work back until the jobs ran out of attempts;
        with it, the work goes where it fits, or is split.
        """
        limit = self._cap.shrink(batch.device, batch)
        self._views.changed()  # a policy's per-epoch caches may hold the old limit
        self._sink.decision(DecisionRecord(
            self._now, "controller", "oom", "learned", batch.jobs, batch.device,
            why=f"out of memory: plans with {size(limit)} there from now"))

    def device_down(self, device_id: str, now: float, reason: str) -> list[Batch]:
        """A device is gone: its batches (gang members too) are requeued."""
        self._tick(now)
        hit = list(self._cap.devices[device_id].running.values())
        for batch in hit:
            self._cap.release(batch)
            self._jobs.requeue_batch(batch, now, reason)
        self._cap.set_up(device_id, False)
        self._views.changed()
        self._sink.decision(DecisionRecord(
            self._now, "controller", "device_down", "observed",
            tuple(j for b in hit for j in b.jobs), device_id, why=reason))
        return hit

    def device_up(self, device_id: str, now: float) -> None:
        """A device is back (its worker restarted): the policy may use it again."""
        self._tick(now)
        dev = self._cap.devices[device_id]
        if self._cap.nodes[dev.spec.node].up and not dev.up:
            self._cap.set_up(device_id, True)
            self._views.changed()
            self._sink.decision(DecisionRecord(self._now, "controller", "device_up",
                                               "observed", device=device_id,
                                               why="its worker is back"))

    def node_down(self, node: str, now: float, reason: str) -> list[Batch]:
        self._cap.nodes[node].up = False
        hit: list[Batch] = []
        for device_id in self.node_devices(node):
            hit += self.device_down(device_id, now, reason)
        return hit

    def refuse(self, job: Job, reason: str) -> None:
        """Account for a job the run will never admit (it stopped first)."""
        record = JobRecord(job, ready_time=self._now)
        self._jobs.records[job.id] = record
        self._jobs.finish(record, JobState.FAILED, self._now, reason)

    def fail(self, job_id: str, reason: str) -> None:
        """End a job as failed wherever it is (queued, blocked, running or split)."""
        jobs = self._jobs
        record = jobs.records[job_id]
        if record.state is JobState.QUEUED:
            jobs.dequeue(record.job)
        elif record.state is JobState.RUNNING and record.batch in self._cap.batches:
            batch = self._cap.batches[record.batch]
            self._cap.release(batch)
            for other in batch.jobs:
                if other != job_id:
                    jobs.requeue(jobs.records[other], self._now, reason)
        elif record.state is JobState.BLOCKED:
            jobs.unblock(record)
        elif record.state is JobState.SPLIT:
            jobs.drop_queued_parts(job_id)
        jobs.finish(record, JobState.FAILED, self._now, reason)

    def cancel(self, job_id: str, reason: str) -> tuple[str, Batch | None]:
        """A client's cancellation; returns the state the job was in (``unknown``: not
        here) and, when no job of its batch wants the result any more, that batch, which
        the executor may stop early.

        A queued, blocked or split job ends now. A running job ends, failed with
        ``reason``, when its batch stops: its batch-mates' work is kept, and the
        device stays busy until the worker lets go of it.
        """
        jobs = self._jobs
        record = jobs.records.get(job_id)
        if record is None or record.parent is not None:
            return "unknown", None
        state = record.state
        if state is not JobState.RUNNING:
            self.fail(job_id, reason)
            return state.value, None
        jobs.cancelling[job_id] = reason
        batch = self._cap.batches.get(record.batch or "")
        if batch is not None and all(j in jobs.cancelling for j in batch.jobs):
            return state.value, batch
        return state.value, None

    def fail_unfinished(self, reason: str) -> None:
        """End every unfinished job with ``reason``: a stopped run accounts for all."""
        records = self._jobs.records
        for record in list(records.values()):
            if record.parent is None and record.id in records and record.state not in (
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
        pending = self._jobs.pending
        for job in list(pending.values()):
            reason = (self._fit.fits_nothing_up(job, self._cap.devices.values())
                      if job.id in pending else None)
            if reason is not None:  # (failing a part can take its queued siblings along)
                self.fail(job.id, reason)
        if not pending:
            self.fail_unfinished("its dependency never ran")  # blocked on failed jobs
            return None
        message = (f"policy {self._policy_name!r} left {len(pending)} jobs unplaced on "
                   "an idle cluster")
        self.fail_unfinished(message)
        return message

    def observe(self, samples: Iterable[Telemetry]) -> list[Telemetry]:
        """Fold telemetry into the latest-sample view with moving averages and the prefix
        caches' figures; returns the samples as folded."""
        self._views.changed()
        folded = []
        for s in samples:
            old = self._telemetry.get(s.device)
            ema_util = s.util if old is None else (1 - EMA) * old.ema_util + EMA * s.util
            ema_speed = s.speed if old is None else (1 - EMA) * old.ema_speed + EMA * s.speed
            caches = self._cap.caches
            known = s.device in self._cap.devices
            sample = self._telemetry[s.device] = Telemetry(
                s.time, s.device, s.util, s.mem_used, s.mem_total, s.queue_len, s.running,
                s.achieved_flops, s.speed, ema_util, ema_speed,
                caches.resident_bytes(s.device) if known else 0,
                caches.hit_rate(s.device) if known else None)
            folded.append(sample)
        return folded

    def _tick(self, now: float) -> None:
        if now < self._now:
            raise ValueError(f"time went backwards: {now} < {self._now}")
        self._now = now

