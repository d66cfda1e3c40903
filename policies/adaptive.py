"""adaptive: telemetry-aware packing, fair-share by softmax urgency, split and offload.

Each round it repeatedly picks a tenant by a softmax over the tenants'
urgency, so capacity is shared the way attention shares weight: every tenant
gets some, the most urgent gets most, and waiting raises urgency (aging) so
nothing starves. Within the tenant it runs the most urgent of the first few
jobs: priority, deadline slack and predicted run time (short jobs first; a
prefill's run time where its prefix is cached, when that is less).
Aging is measured against a job's own size as well as the clock (one unit of
urgency per ``aging_s + aging_rel × run time`` seconds waited), so one default
serves millisecond decodes and day-long pods: with the clock alone, a pod's
hour in the queue swamps the short-first term and the policy degrades to FIFO.
A job that cannot start this round (a gang no node has room for) does not hold
back the rest of its tenant's queue. It weighs the ``tenants`` tenants that
have waited longest (those whose queue is oldest), as the reference policies
look ``lookahead`` jobs deep: a round's work does not grow with the number of
tenants waiting, and a newer tenant moves up as older ones are served.

Unless every waiting job has a free GPU of its own (packing would only slow
them), it packs compatible jobs with it while the batch fits the device's
memory and a latency budget, and routes the batch to the free device with the
earliest predicted finish, *discounted by measured speed* from telemetry: a
device that runs slower than its profile gets less work. A prefill whose
prompt's leading blocks a device holds is priced there for the rest alone, and
may wait for a busy holder that still finishes it first; a batch does not
take in a prefill whose prefix another device holds more of
(:mod:`policies.affinity`). It declines a straggler (a device below
``slow_speed`` × its peers' median measured speed) when waiting for a healthy
one would finish sooner. Slow is relative to the peers, not to the profile: a
host slowed as a whole, or two workers sharing a node's cores, slows every
device alike, and declining any of them then only leaves capacity idle. Jobs
that fit no device whole are split along batch or heads; small jobs go to CPU
workers when no GPU is free. Once a round has taken every free GPU it tries
only jobs a CPU can take (an offload, a job no GPU runs, a pod), so a deep
queue of GPU work costs no fruitless tries for an idle CPU. Cluster jobs
(pods) are placed best fit, on the node whose GPUs are fullest and whose host
still has their CPUs and memory (:class:`policies.common.BestFit`).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from policies.affinity import cached_elsewhere, cheapest_seconds, earliest_with_cache
from policies.common import BestFit, fits, pack, reference_seconds, window
from scheduler.decisions import Action, Decisions, Offload, Place, Split
from scheduler.jobs import AttentionJob, ClusterJob, Job
from scheduler.view import DeviceView, View

# Devices within 2% of the fastest of their profile count as fastest: measured speeds
# wander more than that between samples, and scanning every free device for the last
# percent costs O(devices) per placement on a large cluster.
SPEED_TOLERANCE = 0.02
CPU_MEMO_SIZE = 65_536  # jobs whose CPU use is remembered; full, it starts over


@dataclass
class _Round:
    """One decision's working state: the devices it took, the jobs it placed or tried,
    each job's urgency (the clock does not move within a round), where each tenant's
    untried jobs begin, and whether only CPUs are left to fill."""

    taken: dict[str, int] = field(default_factory=dict)
    placed: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)  # tried this round and could not start
    scores: dict[str, float] = field(default_factory=dict)
    starts: dict[str, int] = field(default_factory=dict)
    cpus_only: bool = False
    # device -> predicted seconds of the work this round gave it or left waiting for it
    queued: dict[str, float] = field(default_factory=dict)


class AdaptivePolicy:
    name: ClassVar[str] = "adaptive"
    description: ClassVar[str] = ("telemetry-aware packing and routing, softmax fair share, "
                                  "split and CPU offload")

    def __init__(self, max_batch: int = 64, head: int = 32, temperature: float = 1.0,
                 aging_s: float = 10.0, aging_rel: float = 10.0, budget_factor: float = 2.0,
                 min_budget_s: float = 0.05, offload_max_s: float = 0.05,
                 slow_speed: float = 0.8, tenants: int = 64) -> None:
        positive = {"max_batch": max_batch, "head": head, "temperature": temperature,
                    "aging_s": aging_s, "budget_factor": budget_factor, "tenants": tenants}
        for key, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a positive number, got {value}")
        if not (min_budget_s >= 0 and offload_max_s >= 0 and 0 <= slow_speed <= 1
                and math.isfinite(aging_rel) and aging_rel >= 0):
            raise ValueError("min_budget_s, offload_max_s and aging_rel must be >= 0, "
                             "slow_speed in [0, 1]")
        self.max_batch, self.head, self.temperature = max_batch, head, temperature
        self.aging_s, self.budget_factor, self.min_budget_s = aging_s, budget_factor, min_budget_s
        self.offload_max_s, self.slow_speed = offload_max_s, slow_speed
        self.aging_rel, self.tenants = aging_rel, tenants
        # (view epoch, peers' median speed, top speed per profile, CPU devices up)
        self._memo: tuple[int, float, Mapping[str | None, float], int] | None = None
        # (view epoch, job id -> whether it has a use for CPUs alone): kept across the
        # rounds of an epoch, as a deep queue offers the same jobs round after round
        self._cpu_memo: tuple[int, dict[str, bool]] = (0, {})

    # -- urgency ---------------------------------------------------------------------------

    def urgency(self, view: View, job: Job, seconds: float) -> float:
        """Higher is more urgent: priority, aging, deadline slack, then short jobs.

        Aging divides the wait by ``aging_s + aging_rel × seconds``: short jobs
        age on the clock, long ones relative to their own run time.
        """
        waited = view.now - view.ready_time(job.id)
        score = float(job.priority) + waited / (self.aging_s + self.aging_rel * seconds)
        if job.deadline is not None:
            slack = job.submit_time + job.deadline - view.now - seconds
            score += 2.0 / (1.0 + math.exp(slack))  # near or past its deadline: up to +2
        return score - math.log1p(seconds / 0.01)  # shortest first, on a log scale

    def _pick_tenant(self, view: View, heads: Mapping[str, tuple[float, Job]]) -> str:
        if len(heads) == 1:
            return next(iter(heads))
        names = sorted(heads)
        top = max(heads[n][0] for n in names)
        weights = [math.exp((heads[n][0] - top) / self.temperature) for n in names]
        r = view.rng.random() * sum(weights)
        for name, w in zip(names, weights, strict=True):
            r -= w
            if r <= 0:
                return name
        return names[-1]

    # -- routing ---------------------------------------------------------------------------

    def speed(self, view: View, device: str) -> float:
        sample = view.telemetry.get(device)
        return max(0.05, sample.ema_speed) if sample else 1.0

    def peer_speed(self, view: View) -> float:
        """The median measured speed of the GPUs that are up: what a straggler lags."""
        return self._speeds(view)[0]

    def _speeds(self, view: View) -> tuple[float, Mapping[str | None, float], int]:
        """The peers' median speed, the top speed of each profile's devices that are up,
        and how many CPU devices are up. O(devices), so kept for the view's ``epoch``: it
        changes with the telemetry and the devices' health, far less often than
        decisions come."""
        memo = self._memo
        if memo is not None and memo[0] == view.epoch and view.epoch:
            return memo[1], memo[2], memo[3]
        speeds: list[float] = []
        top: dict[str | None, float] = {}
        cpus = 0
        for d in view.devices.values():
            if d.up:
                speed = self.speed(view, d.id)
                top[d.profile] = max(top.get(d.profile, 0.0), speed)
                if d.kind != "cpu":
                    speeds.append(speed)
                else:
                    cpus += 1
        peer = statistics.median(speeds) if speeds else 1.0
        self._memo = (view.epoch, peer, top, cpus)
        return peer, top, cpus

    def _room_for_all(self, view: View, r: _Round) -> bool:
        """Whether every job still waiting, this one too, has a free GPU of its own this
        round (CPUs counted out as if all were free: GPU work does not go to them)."""
        waiting = len(view.pending) - len(r.placed)
        return waiting <= len(view.free) - len(r.taken) - self._speeds(view)[2]

    def _route(self, view: View, job: Job, r: _Round, peer: float
               ) -> tuple[DeviceView, float] | None:
        """The free GPU where ``job`` finishes first at measured speed, or None to wait.

        Devices of one profile price a job alike, so the scan stops at the
        first device of the fastest profile within ``SPEED_TOLERANCE`` of the
        top speed of that profile's devices: routing costs O(1) on a mostly
        healthy cluster, not O(free devices), even when every device's
        measured speed sits a little below its profile's.
        """
        taken = r.taken
        fastest = reference_seconds(view, job)
        top = self._speeds(view)[1]
        # CPU workers take GPU work only as an offload, unless no GPU can run the job
        # at all (a dtype no GPU profile measures): then a CPU is its only home.
        cpu_ok = not any(math.isfinite(view.cost.seconds([job], ids[0]))
                         for ids in view.groups.values() if view.devices[ids[0]].kind != "cpu")
        best: tuple[float, DeviceView, float] | None = None
        for device in view.free.values():
            if (device.kind == "cpu" and not cpu_ok) or not fits(view, job, device, taken):
                continue
            seconds = view.cost.seconds([job], device.id)
            speed = self.speed(view, device.id)
            finish = seconds / speed
            if math.isfinite(finish) and (best is None or finish < best[0]):
                best = (finish, device, seconds)
                if seconds <= fastest and speed >= top.get(device.profile, 1.0) * (
                        1 - SPEED_TOLERANCE):
                    break
        if isinstance(job, AttentionJob) and job.block_tokens:
            best = earliest_with_cache(view, job, r.taken, r.queued, self.speed, best)
        if best is None:
            return None
        finish, device, seconds = best
        healthy = self.slow_speed * peer
        if self.speed(view, device.id) < healthy and self._healthy_sooner(
                view, job, finish, healthy):
            return None
        return device, seconds

    def _healthy_sooner(self, view: View, job: Job, finish: float, healthy: float) -> bool:
        """Would waiting for a busy healthy device beat running on a straggler?"""
        for other in view.devices.values():
            if other.up and other.kind != "cpu" and self.speed(view, other.id) >= \
                    healthy and other.memory_total >= view.cost.memory(job, other.id):
                wait = max(0.0, other.busy_until - view.now)
                if wait + view.cost.seconds([job], other.id) < finish:
                    return True
        return False

    def _offload_target(self, view: View, job: Job, taken: dict[str, int]) -> DeviceView | None:
        for device in view.free.values():
            if device.kind == "cpu" and fits(view, job, device, taken) and \
                    view.cost.seconds([job], device.id) <= self.offload_max_s:
                return device
        return None

    def _split(self, view: View, job: Job) -> Split | None:
        if not isinstance(job, AttentionJob):
            return None
        # Devices of one profile are alike: one per group answers for all.
        firsts = [view.devices[g[0]] for g in view.groups.values()]
        largest = max((d.memory_total for d in firsts), default=0)
        need = min((view.cost.memory(job, d.id) for d in firsts), default=0)
        if need <= largest:
            return None
        for axis, size in (("batch", job.batch), ("heads", job.kv_heads)):
            parts = next((p for p in range(2, size + 1) if size % p == 0 and
                          need / p <= largest), None)
            if parts is not None:
                return Split(job.id, parts, axis, f"needs {need >> 20} MiB, largest device "
                             f"has {largest >> 20} MiB: split along {axis} into {parts}")
        return None

    # -- the decision ----------------------------------------------------------------------

    def _head(self, view: View, tenant: str, r: _Round) -> tuple[float, Job] | None:
        """The most urgent of a tenant's first ``head`` jobs not placed or tried this round
        (once every free GPU is taken, the most urgent of them that has a use for what is
        left: see :meth:`_cpu_work`).

        ``r.scores`` keeps each job's urgency for the round (the clock does not move
        within it): after a placement the tenant's window slides by a job or a
        batch, and the jobs still in it are not scored again. ``r.starts`` skips the
        tenant's leading jobs already placed or tried, so a round that places many
        batches does not walk past them again for every one.
        """
        start = r.starts.get(tenant, 0)
        leading = True
        best: tuple[float, Job] | None = None
        seen = 0
        for job in itertools.islice(view.tenants.get(tenant, {}).values(), start, None):
            if job.id in r.placed or job.id in r.skipped:
                start += leading
                continue
            leading = False
            seen += 1
            if not r.cpus_only or self._cpu_work(view, job):
                score = r.scores.get(job.id)
                if score is None:
                    score = r.scores[job.id] = self.urgency(view, job,
                                                            cheapest_seconds(view, job))
                if best is None or score > best[0]:
                    best = (score, job)
            if seen >= self.head:
                break
        r.starts[tenant] = start
        return best

    def _cpu_work(self, view: View, job: Job) -> bool:
        """Whether ``job`` has a use for a round whose free GPUs are all taken: a CPU may
        run it (no GPU can, or it is short enough to offload), or it is a pod (placed by
        best fit on any node with room). Any other job would only be tried and fail, in
        every round of a deep queue; one too big for any device whole is split in a round
        with a free GPU, where its parts can start."""
        if not isinstance(job, AttentionJob):
            return True
        epoch, known = self._cpu_memo
        if epoch != view.epoch or not view.epoch or len(known) >= CPU_MEMO_SIZE:
            known = {}
            self._cpu_memo = (view.epoch, known)
        answer = known.get(job.id)
        if answer is None:
            answer = known[job.id] = self._cpu_runs(view, job)
        return answer

    def _cpu_runs(self, view: View, job: AttentionJob) -> bool:
        cpu_s, gpu_runs = math.inf, False
        for ids in view.groups.values():
            seconds = view.cost.seconds([job], ids[0])
            if view.devices[ids[0]].kind == "cpu":
                cpu_s = min(cpu_s, seconds)
            else:
                gpu_runs = gpu_runs or math.isfinite(seconds)
        # A job some GPU runs goes to a CPU only as an offload; one no GPU runs, to a CPU.
        return not gpu_runs or cpu_s <= self.offload_max_s

    def _gpu_room(self, view: View, taken: Mapping[str, int]) -> bool:
        return any(d.kind != "cpu" and d.slots_free - taken.get(d.id, 0) >= 1
                   for d in view.free.values())

    def decide(self, view: View) -> Decisions:
        actions: list[Action] = []
        if not view.pending:
            return Decisions()
        r = _Round()
        fit: BestFit | None = None
        peer = self.peer_speed(view)  # once a round: O(devices)
        # Each tenant's head is computed once and refreshed only for the tenant
        # that was served: a placement touches no other tenant's queue.
        heads = self._heads(view, [t for t, _ in itertools.islice(view.tenants.items(),
                                                                     self.tenants)], r)
        rounds = 0
        while heads and len(r.taken) < len(view.free) and rounds < 4 * len(view.free) + 8:
            rounds += 1
            tenant = self._pick_tenant(view, heads)
            job = heads[tenant][1]
            if fit is None and isinstance(job, ClusterJob):
                fit = BestFit(view)  # built once a round, only when a gang job comes up
            action = self._place_one(view, job, r, fit, peer)
            if action is not None:
                actions.append(action)
            else:
                # It cannot start now (a gang no node has room for, a job too big for
                # what is free): the tenant's next most urgent job may, rather than the
                # whole tenant waiting behind it this round.
                r.skipped.add(job.id)
                if not r.cpus_only and not self._gpu_room(view, r.taken):
                    r.cpus_only = True  # what is left is CPUs: only CPU work is worth a try
                    heads = self._heads(view, list(heads), r)
                    continue
            best = self._head(view, tenant, r)
            if best is None:
                del heads[tenant]
            else:
                heads[tenant] = best
        return Decisions(tuple(actions))

    def _heads(self, view: View, tenants: list[str], r: _Round
               ) -> dict[str, tuple[float, Job]]:
        """Each of ``tenants``' heads (see :meth:`_head`), leaving out those without one."""
        heads: dict[str, tuple[float, Job]] = {}
        for tenant in tenants:
            best = self._head(view, tenant, r)
            if best is not None:
                heads[tenant] = best
        return heads

    def _place_one(self, view: View, job: Job, r: _Round, fit: BestFit | None, peer: float
                   ) -> Action | None:
        taken, placed = r.taken, r.placed
        if isinstance(job, ClusterJob):
            assert fit is not None
            used = set(taken)
            place = fit.place(job, used, "adaptive best fit")
            if place is not None:
                placed.add(job.id)
                taken.update(dict.fromkeys(used, 1))
            return place
        routed = self._route(view, job, r, peer)
        if routed is None:
            split = self._split(view, job)  # it fits nowhere whole, or only waits
            if split is not None:
                placed.add(job.id)
                return split
            cpu = self._offload_target(view, job, taken)
            if cpu is None:
                return None
            placed.add(job.id)
            taken[cpu.id] = 1
            return Offload((job.id,), cpu.id, "GPUs busy; small enough for a CPU worker")
        device, seconds = routed
        if self._room_for_all(view, r):
            batch: list[Job] = [job]
        else:
            budget = max(self.min_budget_s, self.budget_factor * seconds)
            candidates = (j for j in window(view.tenants[job.tenant], self.head * 4)
                          if j.id not in placed and not cached_elsewhere(view, j, device.id))
            batch = pack(view, job, candidates, device, self.max_batch, budget,
                         same_shape=False)
        placed.update(j.id for j in batch)
        taken[device.id] = 1
        r.queued[device.id] = r.queued.get(device.id, 0.0) + seconds
        speed = self.speed(view, device.id)
        return Place(tuple(j.id for j in batch), device.id,
                     f"urgent job of {job.tenant}; {len(batch)} packed; predicted "
                     f"{seconds:.3g}s at measured speed {speed:.2f}")
