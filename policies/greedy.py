"""greedy: earliest-finish placement from the cost model; packs identical shapes.

At every event it walks the queue in arrival order and puts each job on the
free device where the cost model says it finishes first (memory permitting),
packing pending jobs of exactly the same shape into the batch. It never looks
at telemetry: a device that runs slow keeps getting work.
"""

from __future__ import annotations

import math
from typing import ClassVar

from policies.common import fits, pack, place_cluster_job, window
from scheduler.decisions import Action, Decisions, Place
from scheduler.jobs import ClusterJob
from scheduler.view import DeviceView, View


class GreedyPolicy:
    name: ClassVar[str] = "greedy"
    description: ClassVar[str] = "earliest-finish placement from the cost model, packs same shapes"

    def __init__(self, max_batch: int = 64, lookahead: int = 256) -> None:
        if max_batch < 1 or lookahead < 1:
            raise ValueError("max_batch and lookahead must be at least 1")
        self.max_batch, self.lookahead = max_batch, lookahead

    def decide(self, view: View) -> Decisions:
        actions: list[Action] = []
        taken: dict[str, int] = {}
        placed: set[str] = set()
        used: set[str] = set()
        candidates = list(window(view.pending, self.lookahead))
        for job in candidates:
            if len(taken) >= len(view.free):
                break
            if job.id in placed:
                continue
            if isinstance(job, ClusterJob):
                used.update(taken)  # a device this round gave a batch has no room for a pod
                place = place_cluster_job(view, job, used, "greedy first fit")
                actions.extend([place] if place else [])
                taken.update(dict.fromkeys(used, 1))  # its devices are spoken for this round
                continue
            best: tuple[float, DeviceView] | None = None
            for device in view.free.values():
                if device.id in taken or not fits(view, job, device, taken):
                    continue
                seconds = view.cost.seconds([job], device.id)
                if not math.isfinite(seconds):
                    continue  # this device's profile cannot run the job (e.g. fp32 on H100)
                if best is None or seconds < best[0]:
                    best = (seconds, device)
            if best is None:
                continue
            seconds, device = best
            rest = [c for c in candidates if c.id not in placed]
            batch = pack(view, job, rest, device, self.max_batch, budget_s=float("inf"),
                         same_shape=True)
            placed.update(j.id for j in batch)
            taken[device.id] = 1
            actions.append(Place(tuple(j.id for j in batch), device.id,
                                 f"earliest finish {seconds:.4g}s, {len(batch)} same-shape jobs"))
        return Decisions(tuple(actions))
