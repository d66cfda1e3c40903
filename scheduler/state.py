"""Mutable scheduling state, owned by the controller alone.

One :class:`JobRecord` per job (never parallel dicts keyed by id), one
:class:`Batch` per packed launch, one :class:`DeviceState` per device. Policies
never see these objects, only the read-only views in ``scheduler.view``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from scheduler.cluster import DeviceSpec, NodeSpec
from scheduler.idset import DigestSet, digest_of
from scheduler.jobs import Job
from scheduler.kvcache import BlockKey, BlockLRU
from scheduler.profiles import DeviceProfile


class JobState(str, Enum):
    BLOCKED = "blocked"  # waits for the job it depends on
    QUEUED = "queued"
    RUNNING = "running"
    SPLIT = "split"  # replaced by parts; done when they all are
    DONE = "done"
    FAILED = "failed"


@dataclass(slots=True)
class JobRecord:
    """Everything the controller knows about one job, start to finish."""

    job: Job
    state: JobState = JobState.QUEUED
    ready_time: float = 0.0  # when it could first run (dependency met)
    attempts: int = 0
    start: float | None = None  # first start of the attempt that completed
    end: float | None = None
    device: str | None = None
    node: str | None = None
    batch: str | None = None
    batch_size: int = 0
    solo_seconds: float = 0.0  # predicted time alone on the device it ran on
    cached_tokens: int = 0  # of its prompt, resident where it ran (scheduler/kvcache.py)
    reason: str | None = None
    parent: str | None = None  # set on the parts of a split job
    parts_left: int = 0

    @property
    def id(self) -> str:
        return self.job.id


@dataclass(slots=True)
class Batch:
    """Jobs launched together on one device (plus a gang, for multi-GPU cluster jobs)."""

    id: str
    device: str
    jobs: tuple[str, ...]
    start: float
    solo_seconds: float  # predicted duration with the device to itself
    share: float
    memory: int
    flops: float
    gang: tuple[str, ...] = ()
    cpus: float = 0.0
    host_memory: int = 0
    elastic: bool = True  # attention work slows when a device is shared; cluster jobs do not


@dataclass(slots=True)
class NodeState:
    spec: NodeSpec
    cpus_free: float
    memory_free: int
    up: bool = True

    def fits(self, cpus: float, memory: int) -> bool:
        """Room on the host for ``cpus`` and ``memory`` bytes."""
        return host_fits(self.cpus_free, self.memory_free, cpus, memory)


def host_fits(cpus_free: float, memory_free: int, cpus: float, memory: int) -> bool:
    """The one host-room rule (CPU counts are floats: a tolerance for their sums)."""
    return cpus_free + 1e-9 >= cpus and memory_free >= memory


@dataclass(slots=True)
class DeviceState:
    """Capacity left on a device: a compute share (1.0 = whole device) and memory."""

    spec: DeviceSpec
    profile: DeviceProfile | None
    slots: int
    share_free: float = 1.0
    memory_free: int = 0
    up: bool = True
    running: dict[str, Batch] = field(default_factory=dict)
    elastic: int = 0  # running batches that take a slot (attention work)
    # Memory the controller plans with: the spec's, until the device runs out of
    # memory below it (then what it really held is the better figure).
    memory_limit: int = 0
    # Prefix blocks kept here, in the memory no running batch holds (Capacity sizes it).
    cache: BlockLRU[BlockKey] = field(default_factory=lambda: BlockLRU(0))

    @property
    def slots_free(self) -> int:
        return self.slots - self.elastic

    @property
    def running_jobs(self) -> int:
        """Jobs in the batches running here (what live views and metrics show)."""
        return sum(len(b.jobs) for b in self.running.values())


class FinishedIds:
    """Ids of jobs that ended, and whether each succeeded, in 8 bytes a job (16 if failed).

    The controller must answer "did job X end, and how?" for any later job that
    depends on X or reuses its id, so it cannot forget finished jobs; a dict of
    id strings would make a million-job run hold a million strings. A 64-bit
    BLAKE2 digest stands for each id: two ids collide with odds of about
    n²/2⁶⁵ (3·10⁻⁸ for a million jobs), the price of memory that no longer
    grows with the trace's id lengths.
    """

    def __init__(self) -> None:
        self._ended, self._failed = DigestSet(), DigestSet()

    def __setitem__(self, job_id: str, succeeded: bool) -> None:
        digest = digest_of(job_id)
        self._ended.add(digest)
        if not succeeded:
            self._failed.add(digest)

    def __contains__(self, job_id: object) -> bool:
        return isinstance(job_id, str) and digest_of(job_id) in self._ended

    def __getitem__(self, job_id: str) -> bool:
        """Whether ``job_id`` (which ended) succeeded."""
        digest = digest_of(job_id)
        if digest not in self._ended:
            raise KeyError(job_id)
        return digest not in self._failed

    def __len__(self) -> int:
        return len(self._ended)

    @property
    def nbytes(self) -> int:
        return self._ended.nbytes + self._failed.nbytes
