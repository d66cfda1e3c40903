"""Whether a job can ever run on the cluster, or on what is still up of it.

A job no device can hold fails at admission with the reason, instead of
waiting forever in the queue; on an idle cluster, a job that no device that
is up can hold any more fails with that reason rather than blaming the
policy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from scheduler.cluster import ClusterSpec
from scheduler.jobs import AttentionJob, ClusterJob, Job
from scheduler.pricing import ClusterCost, shape_key
from scheduler.state import DeviceState
from scheduler.units import size

# Shapes whose "fits some device?" answer is remembered. Traces repeat a few shapes
# but also draw lengths per job, so the memo is bounded: full, it starts over.
FIT_MEMO_SIZE = 1_024


class FitCheck:
    def __init__(self, spec: ClusterSpec, cost: ClusterCost) -> None:
        self.spec, self.cost = spec, cost
        self.memo: dict[object, str | None] = {}

    def never_fits(self, job: Job) -> str | None:
        """Why no device of the cluster could ever run ``job`` (None: some can)."""
        key: object = shape_key(job) if isinstance(job, AttentionJob) else (
            job.gpus, job.gpu_fraction, job.cpus, job.memory_bytes)
        if key in self.memo:
            return self.memo[key]
        if len(self.memo) >= FIT_MEMO_SIZE:  # shapes vary per job in real traces
            self.memo.clear()
        reason: str | None
        if isinstance(job, ClusterJob):
            fits = any(n.cpus >= job.cpus and n.memory_bytes >= job.memory_bytes and
                       sum(d.kind == "gpu" for d in n.devices) >= job.gpus and n.devices
                       for n in self.spec.nodes)
            reason = None if fits else (
                f"fits no node: needs {job.gpus} GPUs, {job.cpus:g} CPUs and "
                f"{size(job.memory_bytes)} on one node")
        else:
            short = self.memory_short(job, ((d.id, d.memory_bytes) for d in self.spec.devices))
            reason = None if short is None else (
                "no device can run it (no profile measures its dtype)" if short[0] == 0 else
                f"fits no device: needs {size(short[0])}, the largest device that runs it "
                f"has {size(short[1])}")
        self.memo[key] = reason
        return reason

    def memory_short(self, job: AttentionJob, capacity: Iterable[tuple[str, int]]
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

    def fits_nothing_up(self, job: Job, devices: Iterable[DeviceState]) -> str | None:
        """Why no device that is up can hold ``job`` now (None: one can, or not attention)."""
        if not isinstance(job, AttentionJob):
            return None
        short = self.memory_short(job, ((d.spec.id, d.memory_limit) for d in devices if d.up))
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
