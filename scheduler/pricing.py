"""The cost model bound to a cluster: what a job costs on a given device.

Policies, the controller and the simulator all ask this object, so they never
disagree. Single-job answers are memoized by shape: traces repeat shapes, and
a policy asks about the same job on many devices.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from scheduler import costmodel, kvcache, packing
from scheduler.cluster import ClusterSpec
from scheduler.errors import InputError
from scheduler.jobs import AttentionJob, ClusterJob, Job
from scheduler.profiles import DeviceProfile, load_profile

FUSED = "flash"
Shape = tuple[object, ...]


def shape_key(job: AttentionJob) -> Shape:
    return (job.kind, job.batch, job.heads, job.kv_heads, job.q_len, job.kv_len, job.head_dim,
            job.layers, job.dtype, job.causal, job.steps)


def load_profiles(spec: ClusterSpec, overrides: Mapping[str, str] | None = None
                  ) -> dict[str, DeviceProfile]:
    """Profiles the cluster's devices name, loaded once each; ``overrides`` maps name → path."""
    used = {d.profile for d in spec.devices if d.profile is not None}
    unknown = sorted(set(overrides or {}) - used)
    if unknown:
        raise InputError(f"no device in the cluster uses profile {unknown[0]!r}",
                         field="--profile")
    return {name: load_profile((overrides or {}).get(name, name)) for name in sorted(used)}


class ClusterCost:
    """Implements ``scheduler.view.CostOracle`` for one cluster."""

    def __init__(self, spec: ClusterSpec, profiles: Mapping[str, DeviceProfile]) -> None:
        self._profile_of = {d.id: (profiles.get(d.profile) if d.profile else None)
                            for d in spec.devices}
        self._memo: dict[tuple[Shape, str], tuple[float, int, float]] = {}
        self._cached_memo: dict[tuple[Shape, int, str], tuple[float, int, float]] = {}
        # Per-job answers, so asking again about a job costs one dict lookup;
        # the controller forgets a job when it finishes.
        self._by_job: dict[str, tuple[Job, dict[str, tuple[float, int, float]]]] = {}
        self._terms: dict[str, dict[str, costmodel.Terms]] = {p.name: {} for p in profiles.values()}
        # One device per profile (a profile prices every job alike on its devices), and
        # each job's best time over them: policies rank deep queues by it every round.
        self._firsts = tuple({d.profile: d.id for d in reversed(spec.devices)
                              if self._profile_of[d.id] is not None}.values())
        self._best: dict[str, tuple[Job, float]] = {}

    def profile(self, device: str) -> DeviceProfile | None:
        return self._profile_of[device]

    def _single(self, job: AttentionJob, device: str) -> tuple[float, int, float]:
        """(seconds, peak memory, flops) of ``job`` alone on ``device``; inf if it cannot run."""
        profile = self._profile_of[device]
        if profile is None:
            return math.inf, 0, 0.0
        entry = self._by_job.get(job.id)
        if entry is not None and entry[0] is job:
            known = entry[1].get(profile.name)
            if known is not None:
                return known
        else:
            entry = (job, {})
            self._by_job[job.id] = entry
        answer = self._by_shape(job, profile)
        entry[1][profile.name] = answer
        return answer

    def solo(self, job: Job, device: str) -> tuple[float, int, float]:
        """(seconds, peak memory, flops) of ``job`` alone on ``device``, in one lookup."""
        if isinstance(job, ClusterJob):
            return job.duration, 0, 0.0
        return self._single(job, device)

    def best_seconds(self, job: Job) -> float:
        """Run time on the fastest kind of device that can run ``job`` (inf: none can)."""
        if isinstance(job, ClusterJob):
            return job.duration
        known = self._best.get(job.id)
        if known is not None and known[0] is job:
            return known[1]
        best = min((self._single(job, d)[0] for d in self._firsts), default=math.inf)
        self._best[job.id] = (job, best)
        return best

    def best_memory(self, job: Job) -> int:
        """Peak bytes on the fastest kind of device that can run ``job`` (0: none can)."""
        if isinstance(job, ClusterJob):
            return job.memory_bytes
        runs = [r for r in (self._single(job, d) for d in self._firsts) if math.isfinite(r[0])]
        return min(runs)[1] if runs else 0

    def extrapolated(self) -> list[str]:
        """What this run priced by extrapolation rather than measurement, one line each."""
        profiles = {p.name: p for p in self._profile_of.values() if p is not None}
        return [line for name in sorted(profiles) for line in profiles[name].extrapolated()]

    def forget(self, job_id: str) -> None:
        self._by_job.pop(job_id, None)
        self._best.pop(job_id, None)
        for memo in self._terms.values():
            memo.pop(job_id, None)

    def packer(self, device: str) -> costmodel.Pack | None:
        """An empty batch on ``device`` to add jobs to one at a time (None: unmeasured)."""
        profile = self._profile_of[device]
        if profile is None:
            return None
        return costmodel.Pack(profile, memo=self._terms.setdefault(profile.name, {}))

    def _by_shape(self, job: AttentionJob, profile: DeviceProfile) -> tuple[float, int, float]:
        key = (shape_key(job), profile.name)
        hit = self._memo.get(key)
        if hit is None:
            try:
                e = costmodel.estimate(job, profile)
            except InputError:  # the profile has nothing that stands for this dtype
                hit = (math.inf, 0, 0.0)
            else:
                backend = "math" if e.backend == "math" else FUSED
                hit = (e.seconds, costmodel.peak_memory_bytes(job, backend), e.flops)
            if len(self._memo) >= 65_536:  # lengths vary per job: bound it, start over
                self._memo.clear()
            self._memo[key] = hit
        return hit

    def seconds(self, jobs: Sequence[Job], device: str) -> float:
        if len(jobs) == 1:
            job = jobs[0]
            if isinstance(job, ClusterJob):
                return job.duration
            return self._single(job, device)[0]
        profile = self._profile_of[device]
        if profile is None or not packing.can_pack(jobs):
            return math.inf
        pack = costmodel.Pack(profile, memo=self._terms.setdefault(profile.name, {}))
        try:
            for job in jobs:
                assert isinstance(job, AttentionJob)  # can_pack admits nothing else
                pack.add(job)
        except InputError:
            return math.inf
        return pack.seconds

    def cached(self, jobs: Sequence[Job], device: str, tokens: Mapping[str, int]
               ) -> tuple[float, int, float]:
        """(seconds, memory, flops) of ``jobs`` on ``device`` when ``tokens[id]`` leading
        tokens of a prefill's prompt are resident there (:mod:`scheduler.kvcache`): it
        computes only the rest. Memory stays the whole prompt's, since the cached blocks
        may be evicted while it runs."""
        profile = self._profile_of[device]
        if profile is None or not packing.can_pack(jobs):
            return math.inf, 0, 0.0
        if len(jobs) == 1 and isinstance(jobs[0], AttentionJob):
            return self._cached_one(jobs[0], tokens.get(jobs[0].id, 0), device, profile)
        parts = [kvcache.uncached_part(j, tokens.get(j.id, 0)) if isinstance(j, AttentionJob)
                 else j for j in jobs]
        memory = sum(self.memory(j, device) for j in jobs)
        flops = sum(self._by_shape(p, profile)[2] for p in parts if isinstance(p, AttentionJob))
        pack = costmodel.Pack(profile)  # no per-id memo: a part is not the job it stands for
        try:
            for part in parts:
                assert isinstance(part, AttentionJob)  # can_pack admits nothing else
                pack.add(part)
        except InputError:
            return math.inf, 0, 0.0
        return pack.seconds, memory, flops

    def _cached_one(self, job: AttentionJob, tokens: int, device: str, profile: DeviceProfile
                    ) -> tuple[float, int, float]:
        """:meth:`cached` of one job, by shape: a policy prices each holder of each prefill
        it weighs, and building the uncached part (a validated job) costs more than that."""
        key = (shape_key(job), tokens, profile.name)
        known = self._cached_memo.get(key)
        if known is None:
            part = kvcache.uncached_part(job, tokens)
            seconds, _, flops = self._by_shape(part, profile)
            if len(self._cached_memo) >= 65_536:  # lengths vary per job: bound it
                self._cached_memo.clear()
            known = self._cached_memo[key] = (seconds, self.memory(job, device), flops)
        return known

    def memory(self, job: Job, device: str) -> int:
        if isinstance(job, ClusterJob):
            return 0  # a pod's memory request is host memory, accounted per node
        return self._single(job, device)[1]

    def flops(self, job: Job, device: str) -> float:
        if isinstance(job, ClusterJob):
            return 0.0
        return self._single(job, device)[2]

    def can_pack(self, a: Job, b: Job) -> bool:
        """``packing.can_pack`` for a pair: policies ask it of every candidate, so it
        compares the two jobs' pack keys without building a batch."""
        key = packing.pack_key(a)
        return key is not None and key == packing.pack_key(b)
