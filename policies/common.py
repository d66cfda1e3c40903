"""Helpers several policies share: eligibility, packing and device choice."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import ClassVar

from scheduler.decisions import Decisions, Place
from scheduler.jobs import AttentionJob, ClusterJob, Job
from scheduler.packing import pack_key
from scheduler.pricing import shape_key
from scheduler.state import host_fits
from scheduler.view import DeviceView, View


def fastest_group(view: View, job: Job) -> str | None:
    """The profile (device group) that runs ``job`` fastest, or None if none can."""
    best: tuple[float, str] | None = None
    for profile, devices in view.groups.items():
        seconds = view.cost.seconds([job], devices[0])
        if math.isfinite(seconds) and (best is None or seconds < best[0]):
            best = (seconds, profile)
    return best[1] if best else None


def reference_seconds(view: View, job: Job) -> float:
    """Predicted run time on the fastest kind of device that can run it."""
    return view.cost.best_seconds(job)


def cached_seconds(view: View, job: Job, device: str) -> tuple[float, int]:
    """Predicted run time of ``job`` alone on ``device`` counting the prefix blocks
    resident there, and the prompt tokens they save (0: none)."""
    hit = view.cache.hit(job, device)
    if hit:
        return view.cost.cached([job], device, {job.id: hit})[0], hit
    return view.cost.seconds([job], device), 0


def window(jobs: Mapping[str, Job], limit: int) -> Iterator[Job]:
    """The first ``limit`` jobs: policies look this far, never the whole queue."""
    for i, job in enumerate(jobs.values()):
        if i >= limit:
            return
        yield job


def fits(view: View, job: Job, device: DeviceView, taken: Mapping[str, int]) -> bool:
    """Room for ``job`` on ``device`` after what this round already took there."""
    if device.slots_free - taken.get(device.id, 0) < 1:
        return False
    return view.cost.memory(job, device.id) <= device.memory_free


def pack(view: View, head: Job, candidates: Iterable[Job], device: DeviceView,
         limit: int, budget_s: float, same_shape: bool) -> list[Job]:
    """``head`` plus compatible jobs while memory and the latency budget allow."""
    batch = [head]
    if not isinstance(head, AttentionJob):
        return batch
    packer = None  # made at the first compatible candidate: most batches stay single
    memory = view.cost.memory(head, device.id)
    want = pack_key(head)  # the head's, once: deep queues offer thousands of candidates
    if want is None:
        return batch
    for job in candidates:
        if len(batch) >= limit:
            break
        if job is head or pack_key(job) != want:
            continue
        if same_shape and not _same_shape(head, job):
            continue
        need = view.cost.memory(job, device.id)
        if memory + need > device.memory_free:
            continue
        assert isinstance(job, AttentionJob)
        if packer is None:
            packer = view.cost.packer(device.id)
            if packer is None:
                return batch
            packer.add(head)
        if math.isfinite(budget_s) and not packer.within(job, budget_s):
            continue
        packer.add(job)
        batch.append(job)
        memory += need
    return batch


def _same_shape(a: Job, b: Job) -> bool:
    from scheduler.jobs import AttentionJob

    return isinstance(a, AttentionJob) and isinstance(b, AttentionJob) and \
        shape_key(a) == shape_key(b)


def place_cluster_job(view: View, job: ClusterJob, used: set[str],
                      reason: str) -> Place | None:
    """First fit for a duration-only job: ``gpus`` devices of one node with the share it
    asks, skipping those in ``used`` (the ones chosen are added to it)."""
    need = max(job.gpus, 1)
    share = job.gpu_fraction if job.gpus else 0.0
    by_node: dict[str, list[DeviceView]] = {}
    hosts = host_room(view, job)
    for device in view.devices.values():
        if not device.up or device.id in used or (job.gpus and device.kind != "gpu"):
            continue
        if not hosts(device.node):
            continue
        if device.share_free + 1e-9 >= share:
            members = by_node.setdefault(device.node, [])
            members.append(device)
            if len(members) == need:
                return _gang(job, members, used, reason)
    return None


def host_room(view: View, job: ClusterJob) -> Callable[[str], bool]:
    """Whether a node has the CPUs and host memory ``job`` asks for, memoized per node."""
    memo: dict[str, bool] = {}

    def room(name: str) -> bool:
        ok = memo.get(name)
        if ok is None:
            node = view.nodes.get(name)
            ok = memo[name] = node is None or node.fits(job.cpus, job.memory_bytes)
        return ok

    return room


def _gang(job: ClusterJob, members: list[DeviceView], used: set[str], reason: str) -> Place:
    used.update(m.id for m in members)
    return Place((job.id,), members[0].id, reason, tuple(m.id for m in members[1:]))


class BestFit:
    """Best-fit placement of GPU cluster jobs, for one decision round.

    A job goes to the node with the least free GPU share that still has room
    for it, and there onto the devices with the least share left: fractional
    pods fill GPUs already in use, and whole GPUs and whole nodes stay free for
    the gangs that need them. First fit scatters small pods over every node
    until an 8-GPU job finds no node with 8 GPUs free while the cluster has
    dozens; that fragmentation is what Weng et al. measured on the Alibaba GPU
    trace ("Beware of Fragmentation", USENIX ATC'23).

    Nodes are kept sorted by free share, so a placement tries the fullest node
    first and stops at the first that fits; the index is built once per round
    (the view is frozen) and follows the round's own placements, host CPUs and
    memory included, so two pods of one round never share a host's last CPUs.
    """

    def __init__(self, view: View) -> None:
        devices: dict[str, list[DeviceView]] = {}
        free: dict[str, float] = {}
        for device in view.devices.values():
            if device.up:
                devices.setdefault(device.node, []).append(device)
                free[device.node] = free.get(device.node, 0.0) + (
                    device.share_free if device.kind == "gpu" else 0.0)
        self.devices = devices
        self.order = sorted((share, node) for node, share in free.items())
        # Host room left this round; a node the view does not describe is not limited.
        self.host = {name: (n.cpus_free, n.memory_free) for name, n in view.nodes.items()
                     if n.up}

    def _host_fits(self, node: str, job: ClusterJob) -> bool:
        room = self.host.get(node)
        return room is None or host_fits(*room, job.cpus, job.memory_bytes)

    def place(self, job: ClusterJob, used: set[str], reason: str) -> Place | None:
        """Like :func:`place_cluster_job`, best fit. A job without GPUs goes to the node
        with the least GPU share free (a CPU-only node first), keeping the CPUs and memory
        of nodes with free GPUs for the jobs that need those GPUs."""
        need = max(job.gpus, 1)
        share = job.gpu_fraction if job.gpus else 0.0
        for i, (free, node) in enumerate(self.order):
            if free + 1e-9 < need * share or not self._host_fits(node, job):
                continue
            members = [d for d in self.devices[node] if d.id not in used and
                       (not job.gpus or d.kind == "gpu") and d.share_free + 1e-9 >= share]
            if len(members) < need:
                continue
            members.sort(key=lambda d: d.share_free)
            if share:
                del self.order[i]
                bisect.insort(self.order, (free - need * share, node))
            if node in self.host:
                cpus, memory = self.host[node]
                self.host[node] = (cpus - job.cpus, memory - job.memory_bytes)
            return _gang(job, members[:need], used, reason)
        return None


class Round:
    """What one decision round has handed out so far, for policies that place in an order.

    The reference policies differ only in the order they offer jobs; each job
    then goes where the cost model says it finishes first, with pending jobs
    of exactly its shape packed in (as ``greedy`` does), so a comparison
    between them measures the ordering and nothing else.
    """

    def __init__(self, view: View, max_batch: int = 64) -> None:
        self.view, self.max_batch = view, max_batch
        self.taken: dict[str, int] = {}
        self.placed: set[str] = set()
        self.used: set[str] = set()

    def full(self) -> bool:
        """No free device is left this round."""
        return len(self.taken) >= len(self.view.free)

    def place(self, job: Job, pool: Iterable[Job], reason: str) -> Place | None:
        """Place ``job`` (plus same-shape jobs from ``pool``) on its earliest-finish device.

        None when nothing free has room for it now; the round is unchanged then.
        """
        view = self.view
        if job.id in self.placed:
            return None
        if isinstance(job, ClusterJob):
            used = self.used | set(self.taken)
            place = place_cluster_job(view, job, used, reason)
            if place is not None:
                self.used.update(used)
                self.taken.update(dict.fromkeys(used, 1))  # its devices are spoken for
                self.placed.add(job.id)
            return place
        best: tuple[float, DeviceView] | None = None
        for device in view.free.values():
            if device.id in self.taken or not fits(view, job, device, self.taken):
                continue
            seconds = view.cost.seconds([job], device.id)
            if math.isfinite(seconds) and (best is None or seconds < best[0]):
                best = (seconds, device)
        if best is None:
            return None
        seconds, device = best
        rest = (j for j in pool if j.id not in self.placed)
        batch = pack(view, job, rest, device, self.max_batch, budget_s=float("inf"),
                     same_shape=True)
        self.placed.update(j.id for j in batch)
        self.taken[device.id] = 1
        return Place(tuple(j.id for j in batch), device.id,
                     f"{reason}; predicted {seconds:.4g}s, {len(batch)} same-shape jobs")


def place_in_order(view: View, ordered: Iterable[Job], pool: list[Job], max_batch: int,
                   reason: str, strict: bool = False) -> list[Place]:
    """Offer jobs in ``ordered``'s order until the free devices run out.

    ``strict`` stops at the first job that cannot start now (head-of-line
    blocking, as strict FCFS does); otherwise later jobs may pass it.
    """
    round_ = Round(view, max_batch)
    actions: list[Place] = []
    for job in ordered:
        if round_.full():
            break
        if job.id in round_.placed:
            continue
        place = round_.place(job, pool, reason)
        if place is not None:
            actions.append(place)
        elif strict:
            break
    return actions


class OrderedPolicy:
    """A policy that only orders the queue: ``key`` ranks each job, lowest first, and
    the jobs are placed in that order as :func:`place_in_order` does (earliest-finish
    device, same-shape packing). Subclasses set ``name``, ``description`` and
    ``reason`` and define ``key``."""

    reason: ClassVar[str] = ""

    def __init__(self, lookahead: int = 256, max_batch: int = 64) -> None:
        if lookahead < 1 or max_batch < 1:
            raise ValueError("lookahead and max_batch must be at least 1")
        self.lookahead, self.max_batch = lookahead, max_batch

    def key(self, view: View, job: Job) -> float:
        raise NotImplementedError

    def decide(self, view: View) -> Decisions:
        if not view.free:
            return Decisions()
        jobs = list(window(view.pending, self.lookahead))
        order = sorted(range(len(jobs)), key=lambda i: (self.key(view, jobs[i]), i))
        return Decisions(tuple(place_in_order(view, [jobs[i] for i in order], jobs,
                                              self.max_batch, self.reason)))
