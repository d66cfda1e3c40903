"""Devices and nodes: what each has free and which batches run where.

The controller's alone: it books a batch here when it launches one and
releases it when the batch ends, fails or is taken back. ``free`` lists the
devices a policy can place on now, kept up to date on every change so a
decision never scans the whole cluster for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from scheduler.cluster import ClusterSpec
from scheduler.kvcache import CacheIndex
from scheduler.pricing import ClusterCost
from scheduler.state import Batch, DeviceState, NodeState
from scheduler.view import DeviceView, NodeView


class Capacity:
    def __init__(self, spec: ClusterSpec, cost: ClusterCost, slots: int) -> None:
        self.nodes = {n.name: NodeState(n, n.cpus, n.memory_bytes) for n in spec.nodes}
        self.devices = {d.id: DeviceState(d, cost.profile(d.id), slots, memory_free=d.memory_bytes,
                                          memory_limit=d.memory_bytes)
                        for d in spec.devices}
        self.views = {k: DeviceView(s) for k, s in self.devices.items()}
        self.free: dict[str, DeviceView] = dict(self.views)
        self.batches: dict[str, Batch] = {}
        self.caches = CacheIndex({k: d.cache for k, d in self.devices.items()})
        for dev in self.devices.values():
            dev.cache.budget = dev.memory_free
        self.node_views: Mapping[str, NodeView] = MappingProxyType(
            {k: NodeView(n) for k, n in self.nodes.items()})
        groups: dict[str, list[str]] = {}
        for d in spec.devices:
            if d.profile is not None and cost.profile(d.id) is not None:
                groups.setdefault(d.profile, []).append(d.id)
        # Device ids by profile, in cluster order: fixed for the run.
        self.groups: Mapping[str, tuple[str, ...]] = MappingProxyType(
            {k: tuple(v) for k, v in groups.items()})

    def book(self, batch: Batch) -> None:
        """Take what ``batch`` needs on its device, its gang and its node."""
        dev = self.devices[batch.device]
        for member in (dev, *(self.devices[g] for g in batch.gang)):
            member.share_free -= batch.share
            member.memory_free -= batch.memory if member is dev else 0
            self._fit_cache(member)
            member.running[batch.id] = batch
            member.elastic += batch.elastic and member is dev
            self.update_free(member)
        node = self.nodes[dev.spec.node]
        node.cpus_free -= batch.cpus
        node.memory_free -= batch.host_memory
        self.batches[batch.id] = batch

    def release(self, batch: Batch) -> None:
        del self.batches[batch.id]
        for member_id in (batch.device, *batch.gang):
            member = self.devices[member_id]
            del member.running[batch.id]
            member.elastic -= batch.elastic and member_id == batch.device
            member.share_free = min(1.0, member.share_free + batch.share)
            if member_id == batch.device:
                member.memory_free += batch.memory
                member.cache.budget = max(0, member.memory_free)
            self.update_free(member)
        node = self.nodes[self.devices[batch.device].spec.node]
        node.cpus_free += batch.cpus
        node.memory_free += batch.host_memory

    def update_free(self, dev: DeviceState) -> None:
        if dev.up and dev.slots_free > 0 and dev.share_free > 1e-9:
            self.free[dev.spec.id] = self.views[dev.spec.id]
        else:
            self.free.pop(dev.spec.id, None)

    def set_up(self, device_id: str, up: bool) -> None:
        dev = self.devices[device_id]
        dev.up = up
        if not up:
            self.caches.forget(device_id, dev.cache.clear())
        self.update_free(dev)

    def shrink(self, device_id: str, batch: Batch) -> int:
        """Plan with less memory than ``batch`` failed to get there; returns the new limit."""
        dev = self.devices[device_id]
        others = dev.memory_limit - dev.memory_free  # held by batches still running there
        limit = min(dev.memory_limit, max(0, others + batch.memory - 1))
        dev.memory_free -= dev.memory_limit - limit
        dev.memory_limit = limit
        self._fit_cache(dev)
        return limit

    def _fit_cache(self, dev: DeviceState) -> None:
        """The cache lives in the memory batches leave: a batch's start evicts what it needs."""
        self.caches.forget(dev.spec.id, dev.cache.shrink(dev.memory_free))
