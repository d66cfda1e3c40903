"""static: fixed assignment, FIFO per device, one job per device at a time, no feedback.

The baseline every scheduler paper starts from. Each job is bound to a device
by a fixed rule, decided from the job alone: ``mode=job`` spreads jobs over
the devices that can run them by a stable hash of the id (round-robin in
expectation); ``mode=tenant`` gives each tenant a fixed slice of them. A
device runs its own jobs in arrival order and nothing else, whatever the
telemetry says.
"""

from __future__ import annotations

import zlib
from typing import ClassVar

from policies.common import fastest_group, place_cluster_job, window
from scheduler.decisions import Action, Decisions, Place
from scheduler.jobs import ClusterJob, Job
from scheduler.view import View


class StaticPolicy:
    name: ClassVar[str] = "static"
    description: ClassVar[str] = "fixed round-robin (or per-tenant) assignment, FIFO per device"

    def __init__(self, mode: str = "job", lookahead: int = 4096) -> None:
        if mode not in ("job", "tenant"):
            raise ValueError(f"mode must be job or tenant, got {mode!r}")
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self.mode, self.lookahead = mode, lookahead

    def target(self, view: View, job: Job) -> str | None:
        """The device this job is bound to: a pure function of the job and the cluster.

        Jobs spread over the devices of the kind that runs them fastest (GPU
        work never lands on a CPU worker), skipping devices that are down.
        """
        group = fastest_group(view, job)
        devices = [d for d in view.groups[group] if view.devices[d].up] if group else []
        if not devices:
            return None
        key = job.id if self.mode == "job" else job.tenant
        return devices[zlib.crc32(key.encode()) % len(devices)]

    def decide(self, view: View) -> Decisions:
        actions: list[Action] = []
        if not view.free:
            return Decisions()
        idle = {d for d, dev in view.free.items() if not dev.running}
        at_start = set(idle)
        used: set[str] = set()
        # Each idle device waits for its own next job, about one in |devices| of the
        # queue: look that deep, bounded, rather than at the whole queue.
        depth = min(self.lookahead, 4 * len(view.devices) * len(idle))
        for job in window(view.pending, depth):
            if not idle:
                break
            if isinstance(job, ClusterJob):
                used.update(at_start - idle)  # a device given a job this round has no room
                place = place_cluster_job(view, job, used, "static first fit")
                actions.extend([place] if place else [])
                idle.difference_update(used)  # its devices are spoken for this round
                continue
            target = self.target(view, job)
            if target in idle:
                idle.discard(target)
                actions.append(Place((job.id,), target, "fixed assignment"))
        return Decisions(tuple(actions))
