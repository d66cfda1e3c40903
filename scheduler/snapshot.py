"""The view a policy reads, built from the controller's state.

Two ways, one result. Shared: read-only proxies over the controller's own
structures, O(1) whatever the queue holds, which is exact because nothing
changes while a synchronous ``decide`` runs (the simulator's case).
Detached: copies of the queue and of each device's and node's state, taken
when ``decide`` runs under a deadline in another thread, since a decision
abandoned at its deadline would otherwise go on reading state that moves
under it. Tests build views the same way, from a :class:`JobBook` and a
:class:`Capacity`, without a controller.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from scheduler.capacity import Capacity
from scheduler.jobbook import JobBook
from scheduler.kvcache import CacheReader
from scheduler.pricing import ClusterCost
from scheduler.view import DeviceView, NodeView, Telemetry, View

# Epochs are unique in the process, so a policy's memo keyed by one can never be
# mistaken for another run's (a policy object may serve several runs).
_EPOCHS = itertools.count(1)


class ViewBuilder:
    def __init__(self, jobs: JobBook, capacity: Capacity, telemetry: Mapping[str, Telemetry],
                 cost: ClusterCost) -> None:
        self.jobs, self.capacity, self.telemetry, self.cost = jobs, capacity, telemetry, cost
        self.epoch = next(_EPOCHS)
        self._cache = CacheReader(capacity.caches)
        self._shared = (MappingProxyType(jobs.pending), MappingProxyType(jobs.tenants),
                        MappingProxyType(capacity.views), MappingProxyType(capacity.free),
                        MappingProxyType(telemetry), MappingProxyType(jobs.records))

    def build(self, now: float, event: str, seed: int, state: Any,
              detached: bool = False) -> View:
        if detached:
            return self._detached(now, event, seed, state)
        pending, tenants, devices, free, telemetry, records = self._shared
        return View(now, pending, tenants, devices, free, telemetry, self.cost, seed, state,
                    event, self.capacity.groups, records, self.capacity.node_views,
                    epoch=self.epoch, cache=self._cache)

    def changed(self) -> None:
        """Telemetry or a device's health changed: views built from now on carry a new
        ``epoch``."""
        self.epoch = next(_EPOCHS)

    def _detached(self, now: float, event: str, seed: int, state: Any) -> View:
        jobs, capacity = self.jobs, self.capacity
        devices = {k: DeviceView(replace(s, running=dict(s.running)))
                   for k, s in capacity.devices.items()}
        free = {k: devices[k] for k in capacity.free}
        nodes = {k: NodeView(replace(n)) for k, n in capacity.nodes.items()}
        records = {j: replace(jobs.records[j]) for j in jobs.pending}
        tenants = {t: MappingProxyType(dict(g)) for t, g in jobs.tenants.items()}
        return View(now, MappingProxyType(dict(jobs.pending)), MappingProxyType(tenants),
                    MappingProxyType(devices), MappingProxyType(free),
                    MappingProxyType(dict(self.telemetry)), self.cost, seed, state, event,
                    capacity.groups, MappingProxyType(records), MappingProxyType(nodes),
                    epoch=self.epoch, cache=capacity.caches.snapshot())
