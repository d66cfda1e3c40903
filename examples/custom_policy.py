"""A third-party policy in one file: shortest predicted job first.

Run it without installing anything:

    attnsched simulate TRACE --policy examples/custom_policy.py:ShortestJobFirst

It shows the whole contract: read the frozen view, return actions with
reasons, keep no state between calls. See docs/policies.md.
"""

from __future__ import annotations

from typing import ClassVar

from scheduler.decisions import Decisions, Place
from scheduler.view import View


class ShortestJobFirst:
    name: ClassVar[str] = "sjf-example"
    description: ClassVar[str] = "shortest predicted job first, one job per free device"

    def __init__(self, lookahead: int = 128) -> None:
        self.lookahead = lookahead  # only the first jobs: work per call stays bounded

    def decide(self, view: View) -> Decisions:
        head = [job for _, job in zip(range(self.lookahead), view.pending.values(),
                                      strict=False)]
        actions = []
        free = [d for d in view.free.values() if d.kind == "gpu"] or list(view.free.values())
        for device in free:
            runnable = [(view.cost.seconds([j], device.id), j.id) for j in head
                        if view.cost.memory(j, device.id) <= device.memory_free]
            runnable = [(s, j) for s, j in runnable if s != float("inf")]
            if not runnable:
                continue
            seconds, job_id = min(runnable)
            head = [j for j in head if j.id != job_id]
            actions.append(Place((job_id,), device.id, f"shortest: {seconds:.3g}s"))
        return Decisions(tuple(actions))
