"""What a policy sees: a read-only snapshot of the controller's state.

``scheduler.snapshot.ViewBuilder`` builds it: read-only proxies over the
controller's structures when ``decide`` runs synchronously (O(1) whatever
the queue length, and exact, since nothing changes meanwhile), copies when
it runs under a deadline in another thread.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.cluster import DeviceSpec
from scheduler.costmodel import Pack
from scheduler.jobs import Job
from scheduler.kvcache import NO_CACHE
from scheduler.state import DeviceState, JobRecord, NodeState


@dataclass(frozen=True, slots=True)
class Telemetry:
    """The latest utilization report of a device, live or synthesized.

    ``speed`` is predicted over observed run time of recent batches (1.0 on
    profile, 0.5 twice as slow); ``ema_*`` are exponential moving averages the
    controller keeps so policies need no memory of their own. ``cache_bytes`` is
    the prefix cache resident on the device, ``cache_hit_rate`` the share of
    prompt tokens taken from it by the prefills with prefix blocks that ended there
    since the last sample (None: none did); the controller fills both in.
    """

    time: float
    device: str
    util: float
    mem_used: int
    mem_total: int
    queue_len: int
    running: int
    achieved_flops: float
    speed: float = 1.0
    ema_util: float = 0.0
    ema_speed: float = 1.0
    cache_bytes: int = 0
    cache_hit_rate: float | None = None


class DeviceView:
    """Read-only face of a device's live state."""

    __slots__ = ("_state",)

    def __init__(self, state: DeviceState) -> None:
        self._state = state

    @property
    def id(self) -> str:
        return self._state.spec.id

    @property
    def spec(self) -> DeviceSpec:
        return self._state.spec

    @property
    def kind(self) -> str:
        return self._state.spec.kind

    @property
    def node(self) -> str:
        return self._state.spec.node

    @property
    def up(self) -> bool:
        return self._state.up

    @property
    def slots_free(self) -> int:
        return self._state.slots_free if self._state.up else 0

    @property
    def share_free(self) -> float:
        return self._state.share_free

    @property
    def memory_free(self) -> int:
        return self._state.memory_free

    @property
    def memory_total(self) -> int:
        """Memory a batch may use here; below the spec's once the device ran out of it."""
        return self._state.memory_limit

    @property
    def running(self) -> tuple[str, ...]:
        """Ids of the batches running here."""
        return tuple(self._state.running)

    @property
    def running_jobs(self) -> int:
        """Jobs in the batches running here."""
        return self._state.running_jobs

    @property
    def busy_until(self) -> float:
        """Predicted end of the last batch running here (0 when idle)."""
        return max((b.start + b.solo_seconds for b in self._state.running.values()),
                   default=0.0)

    @property
    def profile(self) -> str | None:
        """Name of the profile that times this device (None: unmeasured)."""
        return self._state.profile.name if self._state.profile else None

    def __repr__(self) -> str:
        return (f"DeviceView({self.id}, up={self.up}, slots_free={self.slots_free}, "
                f"memory_free={self.memory_free})")


class NodeView:
    """Read-only face of a node's host resources: what cluster jobs need besides GPUs.

    A pod asks for CPUs and memory of its node as well as GPU share; a policy
    that sees only the devices would place it where the GPUs are free but the
    host is full, and have it rejected.
    """

    __slots__ = ("_state",)

    def __init__(self, state: NodeState) -> None:
        self._state = state

    @property
    def name(self) -> str:
        return self._state.spec.name

    @property
    def up(self) -> bool:
        return self._state.up

    @property
    def cpus_free(self) -> float:
        return max(0.0, self._state.cpus_free)

    @property
    def memory_free(self) -> int:
        return max(0, self._state.memory_free)

    def fits(self, cpus: float, memory: int) -> bool:
        """Room for ``cpus`` and ``memory`` bytes (the controller's own check)."""
        return self.up and self._state.fits(cpus, memory)

    def __repr__(self) -> str:
        return f"NodeView({self.name}, up={self.up}, cpus_free={self.cpus_free:g})"


class CostOracle(Protocol):
    """The cost model as policies use it, bound to the cluster's device profiles."""

    def seconds(self, jobs: Sequence[Job], device: str) -> float:
        """Predicted run time of ``jobs`` packed together on ``device``; inf if it cannot."""
        ...

    def best_seconds(self, job: Job) -> float:
        """Predicted run time on the fastest kind of device that can run it (inf: none)."""
        ...

    def cached(self, jobs: Sequence[Job], device: str, tokens: Mapping[str, int]
               ) -> tuple[float, int, float]:
        """(seconds, memory, flops) of ``jobs`` on ``device`` when ``tokens[id]`` leading
        tokens of a prefill's prompt are resident there (``view.cache.hit``)."""
        ...

    def memory(self, job: Job, device: str) -> int:
        """Peak device memory of ``job`` on ``device`` with the backend it would use."""
        ...

    def can_pack(self, a: Job, b: Job) -> bool:
        """Whether two jobs may share one batch."""
        ...

    def packer(self, device: str) -> Pack | None:
        """An empty batch on ``device`` that prices jobs as they are added."""
        ...


class CacheView(Protocol):
    """The devices' prefix caches as policies read them (:mod:`scheduler.kvcache`)."""

    def hit(self, job: Job, device: str) -> int:
        """Tokens of ``job``'s prompt resident on ``device`` that it would skip (0: none)."""
        ...

    def holders(self, job: Job) -> frozenset[str]:
        """Devices holding ``job``'s first prefix block: the only ones where it can hit."""
        ...


@dataclass(frozen=True, slots=True)
class JobInfo:
    """Controller facts about a pending job that a policy may weigh."""

    attempts: int
    ready_time: float
    parent: str | None


@dataclass(frozen=True, slots=True)
class View:
    """Everything a policy may read. See ``policies.base.Policy`` for the contract.

    Attributes:
        now: the controller's clock (virtual in simulation, wall in live runs).
        pending: jobs waiting to be placed, in the order they became ready.
        tenants: the same jobs grouped by tenant, each group in ready order.
        devices: every device of the cluster, up or down.
        free: devices that are up with a free slot (in the order they became free).
        telemetry: the latest report per device (absent before the first).
        cost: the cost model bound to the devices' profiles.
        rng: a seeded RNG for this call only (deterministic runs).
        state: what the policy returned as ``Decisions.state`` last time.
        event: what triggered this call: arrival, completion, telemetry, failure
            (a device or node lost), device_up, tick (a deferred decision).
        groups: device ids grouped by profile, in cluster order (fixed for a run).
        nodes: every node by name: its free CPUs and host memory, which cluster
            jobs (pods) need on the node that holds their GPUs.
        cache: each device's resident prefix blocks: ``cache.hit(job, device)`` is the
            prompt tokens a prefill would skip there, ``cache.holders(job)`` the
            devices where it can hit at all (cheap: a walk of the job's block ids).
        epoch: changes whenever the telemetry, a device's health (``up``) or its
            memory limit (after running out of memory) does, and only then
            (unique within the process): a policy may memoize what it derives
            from those alone, keyed by it, instead of recomputing it over every
            device each call (0: a view made by hand, not to be memoized).
    """

    now: float
    pending: Mapping[str, Job]
    tenants: Mapping[str, Mapping[str, Job]]
    devices: Mapping[str, DeviceView]
    free: Mapping[str, DeviceView]
    telemetry: Mapping[str, Telemetry]
    cost: CostOracle
    seed: int
    state: Any
    event: str
    groups: Mapping[str, tuple[str, ...]]
    _records: Mapping[str, JobRecord]
    nodes: Mapping[str, NodeView] = field(default_factory=dict)
    _rng: list[random.Random] = field(default_factory=list)
    epoch: int = 0
    cache: CacheView = NO_CACHE

    @property
    def rng(self) -> random.Random:
        """This call's RNG, seeded from the run's seed and the call number.

        Made on first use: most calls never draw, and seeding costs more than
        the rest of a typical decision.
        """
        if not self._rng:
            self._rng.append(random.Random(self.seed))
        return self._rng[0]

    def info(self, job_id: str) -> JobInfo:
        r = self._records[job_id]
        return JobInfo(r.attempts, r.ready_time, r.parent)

    def ready_time(self, job_id: str) -> float:
        """When the job could first run: ``info(job_id).ready_time``, for hot loops."""
        return self._records[job_id].ready_time
