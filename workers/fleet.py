"""The live run's worker actors: one per device, created, watched and restarted.

A worker can die (killed, crashed, out of host memory) or lose its node. Ray
tells the driver through the calls it had in flight: they raise
``RayActorError``. The executor then takes the device away from the
controller (its batches go back to the queue) and asks the fleet to restart
the worker. The fleet restarts it on the same node while Ray still lists that
node alive, up to ``MAX_RESTARTS`` times per device; the device comes back to
the controller once the new actor answers a ping. A node Ray lists as dead
takes all its devices with it for the rest of the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from scheduler.cluster import ClusterSpec, DeviceSpec, NodeSpec
from workers.live_config import LiveConfig

log = logging.getLogger(__name__)
MAX_RESTARTS = 5  # per device and run: a worker that keeps dying is left down
RESTART_TIMEOUT = 60.0  # wall seconds for a restarted worker to answer, then its node is checked


def actor_name(device: str, generation: int = 0) -> str:
    """The worker's actor name (in the driver's namespace): ``ray.get_actor`` finds it."""
    return f"attnsched-worker:{device}:{generation}"


def new_worker(node: NodeSpec, index: int, device: DeviceSpec, config: LiveConfig,
               generation: int = 0) -> Any:
    """One worker actor for ``device``, pinned to its node; ``generation`` counts restarts."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from workers.worker import AttentionWorker

    strategy = NodeAffinitySchedulingStrategy(node.ray_id, soft=False) if node.ray_id \
        else "DEFAULT"
    options: dict[str, float] = (
        {"num_gpus": 1, "num_cpus": 0} if device.kind == "gpu" else {"num_cpus": device.cpus})
    # Two threads: telemetry is answered while a batch runs (torch drops the GIL);
    # the controller never sends a device a second batch.
    return ray.remote(AttentionWorker).options(
        scheduling_strategy=strategy, max_concurrency=2, name=actor_name(device.id, generation),
        **options).remote(
        device.id, device.kind, max(1.0, device.cpus if device.kind == "cpu" else 1.0),
        emulate=device.model == "emulated", gpu_index=index,
        slowdown=config.slow.get(device.id, 1.0), seed=config.seed + index,
        memory_budget=config.worker_budget.get(device.id, device.memory_bytes),
        memory_fraction=config.memory_fraction)


def create_workers(spec: ClusterSpec, config: LiveConfig) -> dict[str, Any]:
    """One actor per device, all warm; returns device id -> handle."""
    import ray

    workers = {device.id: new_worker(node, index, device, config)
               for node in spec.nodes for index, device in enumerate(node.devices)}
    ray.get([w.ping.remote() for w in workers.values()], timeout=120)
    return workers


@dataclass
class Restart:
    device: str
    handle: Any
    since: float  # wall clock


class Fleet:
    """Worker handles by device, and the restarts under way."""

    def __init__(self, spec: ClusterSpec, config: LiveConfig, handles: Mapping[str, Any]
                 ) -> None:
        self.spec, self.config = spec, config
        self.handles = dict(handles)
        self.place = {d.id: (n, i, d) for n in spec.nodes for i, d in enumerate(n.devices)}
        self.restarts: dict[Any, Restart] = {}  # ping ref -> restart
        self.count: dict[str, int] = {}  # device -> restarts so far
        self.deaths = 0
        self.dead_nodes: set[str] = set()

    def node_alive(self, node: NodeSpec) -> bool:
        """Whether Ray still lists the device's node alive (a local run's always is)."""
        if node.ray_id is None:
            return True
        import ray

        for n in ray.nodes():  # type: ignore[no-untyped-call]
            if n.get("NodeID") == node.ray_id:
                return bool(n.get("Alive"))
        return False

    def lost(self, device: str) -> str | None:
        """The device's worker died. Restart it if its node lives; returns the node's name
        when the whole node is gone instead (its other devices are lost too)."""
        node, index, spec = self.place[device]
        if node.name in self.dead_nodes or any(r.device == device
                                               for r in self.restarts.values()):
            return None
        self.deaths += 1
        if not self.node_alive(node):
            self.dead_nodes.add(node.name)
            return node.name
        done = self.count.get(device, 0)
        if done >= MAX_RESTARTS:
            log.warning("worker for %s died %d times; leaving the device down", device,
                        done + 1)
            return None
        self.count[device] = done + 1
        handle = new_worker(node, index, spec, self.config, generation=done + 1)
        self.handles[device] = handle
        self.restarts[handle.ping.remote()] = Restart(device, handle, time.monotonic())
        log.info("restarting the worker for %s (restart %d)", device, done + 1)
        return None

    def overdue(self) -> list[str]:
        """Restarts past ``RESTART_TIMEOUT``: dropped; returns nodes found dead meanwhile."""
        gone: list[str] = []
        now = time.monotonic()
        for ref, r in list(self.restarts.items()):
            if now - r.since < RESTART_TIMEOUT:
                continue
            del self.restarts[ref]
            node = self.place[r.device][0]
            if not self.node_alive(node) and node.name not in self.dead_nodes:
                self.dead_nodes.add(node.name)
                gone.append(node.name)
            else:
                self.lost(r.device)  # try again, within the restart limit
        return gone
