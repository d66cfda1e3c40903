"""prefix-affinity: the cache-aware routers' rule, as a reference.

The rule of SGLang's cache-aware load balancer (SGLang v0.4, December 2024,
over RadixAttention: Zheng et al., NeurIPS 2024), which llm-d's and Dynamo's
KV routers refine: route to the longest cached prefix unless load says not to.

Jobs are taken in arrival order. A prefill goes to the device holding the
longest run of its prompt's leading blocks when that run covers at least
``threshold`` of the prompt; if that device is busy the job waits for it,
unless ``max_wait`` jobs already wait for it this round (the routers' load
balance: a hot prefix must not pile its whole queue onto one device). Any
other job, or a prefill no device holds enough of, goes to the least loaded
free device of the kind that runs it fastest (fewest running batches, then
the earliest to free, then the device's order); load also breaks ties between
equal overlaps. It does not pack, look at telemetry or price devices beyond
"can run it": what it shows is what affinity alone buys.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from policies.common import fastest_group, fits, place_cluster_job, window
from scheduler.decisions import Action, Decisions, Place
from scheduler.jobs import AttentionJob, ClusterJob, Job
from scheduler.view import DeviceView, View


class PrefixAffinityPolicy:
    name: ClassVar[str] = "prefix-affinity"
    description: ClassVar[str] = ("cache-aware routing: the device with the longest cached "
                                  "prefix, else the least loaded")

    def __init__(self, threshold: float = 0.5, max_wait: int = 4, lookahead: int = 256
                 ) -> None:
        if not 0 <= threshold < 1:  # a hit leaves at least the prompt's last token
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be >= 0, got {max_wait}")
        if lookahead < 1:
            raise ValueError(f"lookahead must be at least 1, got {lookahead}")
        self.threshold, self.max_wait, self.lookahead = threshold, max_wait, lookahead

    def decide(self, view: View) -> Decisions:
        actions: list[Action] = []
        taken: dict[str, int] = {}
        waiting: dict[str, int] = {}  # busy device -> jobs this round left to wait for it
        # Free slots left per profile: a job whose kind has none left is passed over
        # without pricing, and the round ends when no kind has any (an idle CPU worker
        # that no job here would take must not keep it scanning the whole window).
        left: Counter[str | None] = Counter()
        for device in view.free.values():
            left[device.profile] += device.slots_free
        for job in window(view.pending, self.lookahead):
            if not any(n > 0 for n in left.values()):
                break
            if isinstance(job, ClusterJob):
                used = set(taken)
                place = place_cluster_job(view, job, used, "prefix-affinity first fit")
                actions.extend([place] if place else [])
                for d in used.difference(taken):  # a pod's devices are spoken for
                    left[view.devices[d].profile] -= view.devices[d].slots_free
                taken.update(dict.fromkeys(used, 1))
                continue
            action = self._route(view, job, taken, waiting, left)
            if action is not None:
                taken[action.device] = 1
                left[view.devices[action.device].profile] -= 1
                actions.append(action)
        return Decisions(tuple(actions))

    def _route(self, view: View, job: Job, taken: dict[str, int], waiting: dict[str, int],
               left: Counter[str | None]) -> Place | None:
        group = fastest_group(view, job)
        if group is None or left[group] <= 0:
            return None
        members = view.groups[group]
        holder, hit = self._best_holder(view, job, members)
        if holder is not None:
            if holder in view.free and fits(view, job, view.devices[holder], taken):
                return Place((job.id,), holder, f"holds {hit} tokens of its prompt")
            if waiting.get(holder, 0) < self.max_wait:
                waiting[holder] = waiting.get(holder, 0) + 1
                return None  # wait for the device that holds its prefix
        least = self._least_loaded(view, job, members, taken)
        if least is None:
            return None
        return Place((job.id,), least.id, f"least loaded ({least.running_jobs} running)")

    def _best_holder(self, view: View, job: Job, members: tuple[str, ...]
                     ) -> tuple[str | None, int]:
        """The up device of ``members`` with the longest resident prefix of ``job``'s
        prompt, if it covers ``threshold`` of the prompt; ties by load."""
        if not isinstance(job, AttentionJob):
            return None, 0
        best: tuple[int, int, float, str] | None = None
        for device_id in sorted(view.cache.holders(job).intersection(members)):
            device = view.devices[device_id]
            hit = view.cache.hit(job, device_id)
            if not device.up or hit < self.threshold * job.q_len:
                continue
            key = (-hit, device.running_jobs, device.busy_until, device_id)
            if best is None or key < best:
                best = key
        return (best[3], -best[0]) if best else (None, 0)

    def _least_loaded(self, view: View, job: Job, members: tuple[str, ...],
                      taken: dict[str, int]) -> DeviceView | None:
        best: tuple[int, float, int] | None = None
        chosen = None
        for order, device_id in enumerate(members):
            device = view.free.get(device_id)
            if device is None or device_id in taken or not fits(view, job, device, taken):
                continue
            key = (device.running_jobs, device.busy_until, order)
            if best is None or key < best:
                best, chosen = key, device
        return chosen
