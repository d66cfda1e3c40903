"""Whether a placement fits: the checks the controller runs before booking a batch.

Pure over the state they are given: each returns what the batch will take,
or raises :class:`~scheduler.records.Rejected` with a code and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scheduler.capacity import Capacity
from scheduler.jobs import ClusterJob, Job
from scheduler.pricing import ClusterCost
from scheduler.records import RejectCode, Rejected
from scheduler.state import DeviceState
from scheduler.units import size


@dataclass(frozen=True, slots=True)
class Need:
    """What a batch takes while it runs."""

    seconds: float
    share: float
    memory: int = 0
    flops: float = 0.0
    cpus: float = 0.0
    host_memory: int = 0
    elastic: bool = True


def device(capacity: Capacity, device_id: str) -> DeviceState:
    state = capacity.devices.get(device_id)
    if state is None:
        raise Rejected(RejectCode.UNKNOWN_DEVICE, f"no device {device_id!r}")
    if not state.up:
        raise Rejected(RejectCode.DEVICE_DOWN, f"device {device_id!r} is down")
    return state


def attention_need(cost: ClusterCost, jobs: Sequence[Job], dev: DeviceState,
                   cached: Mapping[str, int] | None = None) -> Need:
    """What attention ``jobs`` packed on ``dev`` take, ``cached[id]`` tokens of a prompt
    resident there; Rejected unless it has room."""
    device_id = dev.spec.id
    if dev.slots_free < 1:
        raise Rejected(RejectCode.DEVICE_BUSY, f"device {device_id!r} has no free slot")
    if dev.share_free + 1e-9 < 1.0 / dev.slots:
        raise Rejected(RejectCode.DEVICE_BUSY,
                       f"device {device_id!r} has {dev.share_free:.2f} of its compute free")
    if cached:
        seconds, memory, flops = cost.cached(jobs, device_id, cached)
    elif len(jobs) == 1:  # the common case: one memoized lookup answers all three
        seconds, memory, flops = cost.solo(jobs[0], device_id)
    else:
        seconds, memory, flops = cost.seconds(jobs, device_id), 0, 0.0
        for job in jobs:
            _, job_memory, job_flops = cost.solo(job, device_id)
            memory += job_memory
            flops += job_flops
    if not math.isfinite(seconds):
        raise Rejected(RejectCode.NO_PROFILE,
                       f"device {device_id!r} cannot run these jobs (no profile for them)")
    if memory > dev.memory_free:
        raise Rejected(RejectCode.MEMORY, f"needs {size(memory)}, device {device_id!r} has "
                       f"{size(dev.memory_free)} free")
    return Need(seconds, 1.0 / dev.slots, memory, flops)


def cluster_job_need(capacity: Capacity, jobs: Sequence[Job], dev: DeviceState,
                     gang: tuple[str, ...]) -> Need:
    """What a cluster job (a pod) takes on ``dev``, its gang and their node."""
    if len(jobs) != 1:
        raise Rejected(RejectCode.BAD_BATCH, "cluster jobs are placed one at a time")
    job = jobs[0]
    assert isinstance(job, ClusterJob)
    need_devices = max(job.gpus, 1)
    if len(gang) != need_devices - 1:
        raise Rejected(RejectCode.BAD_GANG, f"a job needing {job.gpus} GPUs names "
                       f"{need_devices - 1} gang devices, got {len(gang)}")
    members = [dev] + [device(capacity, g) for g in gang]
    if len({m.spec.id for m in members}) != len(members):
        raise Rejected(RejectCode.BAD_GANG, "gang devices must be distinct")
    share = job.gpu_fraction if job.gpus else 0.0
    for m in members:
        if m.spec.node != dev.spec.node:
            raise Rejected(RejectCode.BAD_GANG, "a gang's devices must share one node")
        if job.gpus and m.spec.kind != "gpu":
            raise Rejected(RejectCode.BAD_TARGET, f"device {m.spec.id!r} is not a GPU")
        if m.share_free + 1e-9 < share:
            raise Rejected(RejectCode.DEVICE_BUSY, f"device {m.spec.id!r} has "
                           f"{m.share_free:.2f} of a GPU free, needs {share:.2f}")
    node = capacity.nodes[dev.spec.node]
    if not node.fits(job.cpus, job.memory_bytes):
        raise Rejected(RejectCode.HOST, f"node {node.spec.name!r} has {node.cpus_free:g} "
                       f"CPUs and {size(node.memory_free)} free")
    return Need(job.duration, share, cpus=job.cpus, host_memory=job.memory_bytes,
                elastic=False)
