"""drf: dominant resource fairness across tenants over GPU, CPU and memory.

Ghodsi et al., NSDI'11: each tenant's dominant share is the largest fraction
of any one resource it holds; offer the next placement to the tenant whose
dominant share is smallest (progressive filling), so tenants with different
bottlenecks (GPU-heavy training, CPU- and memory-heavy pods) are each
treated fairly on the resource that binds them. Within a tenant, arrival
order; each job runs where it finishes first, with same-shape jobs packed in.

What a tenant holds is what this policy placed that is still running: it
keeps its running placements in ``Decisions.state`` (device, tenant, demand,
predicted end) and forgets one at its predicted end or when its device runs
nothing. The view carries devices, not hosts, so the CPU and host-memory
capacities are the CPU devices' plus ``cpus_per_gpu`` and
``memory_gib_per_gpu`` per GPU (defaults near a typical GPU server; the
Alibaba v2023 node list averages 17 cores and 79 GiB per GPU).
"""

from __future__ import annotations

import math
from collections import deque
from typing import ClassVar

from policies.common import Round, window
from scheduler.decisions import Action, Decisions, Place
from scheduler.jobs import ClusterJob, Job
from scheduler.view import View

GiB = 1 << 30
Demand = tuple[float, float, float]  # GPUs, CPUs, memory bytes
Held = tuple[str, str, Demand, float]  # device, tenant, demand, predicted end


class DrfPolicy:
    name: ClassVar[str] = "drf"
    description: ClassVar[str] = "dominant resource fairness across tenants (GPU, CPU, memory)"

    def __init__(self, lookahead: int = 256, max_batch: int = 64, cpus_per_gpu: float = 16.0,
                 memory_gib_per_gpu: float = 80.0) -> None:
        if lookahead < 1 or max_batch < 1:
            raise ValueError("lookahead and max_batch must be at least 1")
        if not (cpus_per_gpu >= 0 and memory_gib_per_gpu >= 0):
            raise ValueError("cpus_per_gpu and memory_gib_per_gpu must be >= 0")
        self.lookahead, self.max_batch = lookahead, max_batch
        self.cpus_per_gpu, self.memory_per_gpu = cpus_per_gpu, memory_gib_per_gpu * GiB

    def capacity(self, view: View) -> Demand:
        gpus = sum(1 for d in view.devices.values() if d.up and d.kind == "gpu")
        cpus = sum(d.spec.cpus for d in view.devices.values() if d.up and d.kind == "cpu")
        memory = sum(d.memory_total for d in view.devices.values() if d.up)
        return (float(gpus), cpus + self.cpus_per_gpu * gpus, memory + self.memory_per_gpu * gpus)

    def demand(self, view: View, place: Place) -> Demand:
        jobs = [view.pending[j] for j in place.jobs]
        head = jobs[0]
        if isinstance(head, ClusterJob):
            return (head.gpus * head.gpu_fraction, head.cpus, float(head.memory_bytes))
        device = view.devices[place.device]
        memory = float(sum(view.cost.memory(j, device.id) for j in jobs))
        if device.kind == "cpu":
            return (0.0, device.spec.cpus, memory)
        return (1.0, 0.0, memory)

    def decide(self, view: View) -> Decisions:
        held: list[Held] = [h for h in (view.state or ()) if h[3] > view.now and
                            view.devices[h[0]].running]
        if not view.free:
            return Decisions((), tuple(held))
        capacity = self.capacity(view)
        usage: dict[str, list[float]] = {}
        for _, tenant, demand, _ in held:
            used = usage.setdefault(tenant, [0.0, 0.0, 0.0])
            for k in range(3):
                used[k] += demand[k]
        jobs = list(window(view.pending, self.lookahead))
        lanes: dict[str, deque[Job]] = {}
        for job in jobs:
            lanes.setdefault(job.tenant, deque()).append(job)
            usage.setdefault(job.tenant, [0.0, 0.0, 0.0])

        def share(tenant: str) -> float:
            return max(u / c for u, c in zip(usage[tenant], capacity, strict=True) if c > 0) \
                if any(c > 0 for c in capacity) else 0.0

        order = {job.id: i for i, job in enumerate(jobs)}
        round_ = Round(view, self.max_batch)
        actions: list[Action] = []
        while lanes and not round_.full():
            tenant = min(lanes, key=lambda t: (share(t), order[lanes[t][0].id]))
            job = lanes[tenant].popleft()
            if not lanes[tenant]:
                del lanes[tenant]
            if job.id in round_.placed:
                continue
            dominant = share(tenant)
            place = round_.place(job, jobs, f"dominant share of {tenant} is {dominant:.3f}, "
                                 "the smallest")
            if place is None:
                continue
            actions.append(place)
            demand = self.demand(view, place)
            seconds = view.cost.seconds([view.pending[j] for j in place.jobs], place.device)
            end = view.now + (seconds if math.isfinite(seconds) else 0.0)
            for k in range(3):
                usage[tenant][k] += demand[k]
            held.append((place.device, tenant, demand, end))
        return Decisions(tuple(actions), tuple(held))
