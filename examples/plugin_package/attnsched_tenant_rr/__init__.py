"""A policy shipped as its own package: tenants take turns at the free devices.

Each round visits the tenants with work waiting in a fixed order and gives
each one its oldest job, on the free device where the cost model says it
finishes first, until no device is free. A tenant with a thousand queued jobs
gets no more turns than one with a single job, so small tenants are not
starved by a burst from a big one.

Like every policy it only reads the frozen view and returns actions; it keeps
nothing between calls (the turn order is the tenants' names, not a counter).
"""

from __future__ import annotations

import math
from typing import ClassVar

from scheduler.decisions import Decisions, Place
from scheduler.view import View


class TenantRoundRobin:
    name: ClassVar[str] = "tenant-rr"
    description: ClassVar[str] = "tenants take turns; each job where it finishes first"

    def __init__(self, lookahead: int = 16) -> None:
        self.lookahead = int(lookahead)  # jobs looked at per tenant: bounded work per call

    def decide(self, view: View) -> Decisions:
        free = {d.id: d.memory_free for d in view.free.values()}
        queues = {tenant: [job for _, job in zip(range(self.lookahead), jobs.values(),
                                                 strict=False)]
                  for tenant, jobs in sorted(view.tenants.items()) if jobs}
        actions: list[Place] = []
        while free and any(queues.values()):
            for tenant, queue in queues.items():
                if not free or not queue:
                    continue
                job = queue.pop(0)
                options = [(view.cost.seconds([job], d), d) for d, mem in free.items()
                           if view.cost.memory(job, d) <= mem]
                options = [(s, d) for s, d in options if math.isfinite(s)]
                if not options:
                    continue  # fits no free device now: it keeps its place in the queue
                seconds, device = min(options)
                del free[device]
                actions.append(Place((job.id,), device, f"{tenant}'s turn, {seconds:.3g}s here"))
        return Decisions(tuple(actions))
