"""fifo: first come, first served, one job per batch, strict arrival order.

The oldest discipline there is, and the baseline GPU-cluster schedulers
measure themselves against (the FIFO of YARN-CS in Tiresias, Gu et al.,
NSDI'19, and of Gandiva, Xiao et al., OSDI'18). Jobs start in the order
they became ready, each alone on the free device where it finishes first;
the head of the queue blocks the rest until it fits (``backfill=true`` lets
later jobs pass it instead). No packing: the point of the reference is what
ordering alone gives.
"""

from __future__ import annotations

from typing import ClassVar

from policies.common import place_in_order, window
from scheduler.decisions import Decisions
from scheduler.view import View


class FifoPolicy:
    name: ClassVar[str] = "fifo"
    description: ClassVar[str] = "first come first served, one job per batch, head-of-line blocking"

    def __init__(self, lookahead: int = 256, backfill: bool = False) -> None:
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self.lookahead, self.backfill = lookahead, backfill

    def decide(self, view: View) -> Decisions:
        if not view.free:
            return Decisions()
        jobs = list(window(view.pending, self.lookahead))
        return Decisions(tuple(place_in_order(view, jobs, [], 1, "first come first served",
                                              strict=not self.backfill)))
