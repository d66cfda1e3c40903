"""The cluster model: frozen device, node and cluster specs, and the rules that make devices.

Every source of a cluster (a Ray cluster-launcher file, a trace's node list, a live
``ray.nodes()``, a cluster built in code) ends in :func:`_make_node` and
:class:`ClusterSpec`, so they all name and size devices alike.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from scheduler.errors import InputError
from scheduler.inputfiles import clip
from scheduler.profiles import load_profile, shipped_profiles

MiB = 1 << 20
GiB = 1 << 30
MAX_NODES_PER_TYPE = 100_000
MAX_GPUS_PER_NODE = 1024
MAX_DEVICES = 1_000_000  # a typo in a count must not allocate a billion objects
_NO_MEMORY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One schedulable device: a GPU, or all of a GPU-less node's CPUs as one.

    ``profile`` names the shipped profile the cost model times this device
    with; ``None`` means nothing was measured for the model, so its speed is
    unknown and ``memory_bytes`` may be 0.
    """

    id: str
    node: str
    kind: str  # "gpu" | "cpu"
    model: str
    memory_bytes: int
    profile: str | None
    cpus: float


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One machine; ``devices`` is empty for a node that must host no work."""

    name: str
    node_type: str
    cpus: float
    memory_bytes: int
    gpus: int
    gpu_model: str | None
    devices: tuple[DeviceSpec, ...]
    address: str | None = None
    ray_id: str | None = None  # Ray's NodeID, for pinning workers; live clusters only


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """All nodes of a cluster, in a stable order; device ids are unique.

    ``source`` says where the spec came from (a path, or ``ray.nodes()``) so
    reports can name it.
    """

    nodes: tuple[NodeSpec, ...]
    source: str
    _devices: tuple[DeviceSpec, ...] = field(init=False, repr=False, compare=False)
    _by_id: Mapping[str, DeviceSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id = {d.id: d for n in self.nodes for d in n.devices}
        if len({n.name for n in self.nodes}) < len(self.nodes) or len(by_id) < sum(
                len(n.devices) for n in self.nodes):
            raise InputError("node names and device ids must be unique", path=self.source)
        object.__setattr__(self, "_devices", tuple(by_id.values()))
        object.__setattr__(self, "_by_id", MappingProxyType(by_id))

    @property
    def devices(self) -> tuple[DeviceSpec, ...]:
        """Every device, in node order."""
        return self._devices

    @property
    def gpus(self) -> int:
        return sum(1 for d in self._devices if d.kind == "gpu")

    def device(self, device_id: str) -> DeviceSpec:
        try:
            return self._by_id[device_id]
        except KeyError:
            raise KeyError(f"no device {clip(device_id)} in cluster {self.source}") from None


@functools.cache
def _gpu_profiles() -> tuple[tuple[str, frozenset[str], int], ...]:
    """(shipped name, models it matches, memory) per GPU profile, loaded once."""
    out = []
    for name in shipped_profiles():
        prof = load_profile(name)
        if prof.kind == "gpu":
            out.append((name, frozenset(m.upper() for m in prof.matches), prof.memory_bytes))
    return tuple(out)


def _make_node(name: str, node_type: str, *, cpus: float, memory_bytes: int, gpus: int,
               gpu_model: str | None, address: str | None = None,
               known_memory: Mapping[str, int] = _NO_MEMORY, ray_id: str | None = None
               ) -> NodeSpec:
    """Apply the device rules: one device per GPU, else one CPU device, else none."""
    devices: tuple[DeviceSpec, ...] = ()
    model = (gpu_model or "GPU") if gpus > 0 else None
    if model is not None:
        profile, mem = next(((n, m) for n, matches, m in _gpu_profiles()
                             if model.upper() in matches), (None, known_memory.get(model, 0)))
        devices = tuple(DeviceSpec(f"{name}/gpu{i}", name, "gpu", model, mem, profile, 1.0)
                        for i in range(gpus))
    elif cpus > 0:
        devices = (DeviceSpec(f"{name}/cpu", name, "cpu", "cpu", memory_bytes, "cpu", cpus),)
    return NodeSpec(name, node_type, cpus, memory_bytes, gpus, model, devices, address, ray_id)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def make_cluster(gpu_nodes: int = 1, gpus_per_node: int = 8, cpu_nodes: int = 0,
                 gpu_model: str = "H100", cpus_per_node: float = 32.0,
                 memory_per_node: int = 512 * GiB) -> ClusterSpec:
    """A uniform cluster built in code, for tests, benchmarks and notebooks."""
    nodes = [_make_node(f"gpu-{k}", "gpu", cpus=cpus_per_node, memory_bytes=memory_per_node,
                        gpus=gpus_per_node, gpu_model=gpu_model) for k in range(gpu_nodes)]
    nodes += [_make_node(f"cpu-{k}", "cpu", cpus=cpus_per_node, memory_bytes=memory_per_node,
                         gpus=0, gpu_model=None) for k in range(cpu_nodes)]
    return ClusterSpec(tuple(nodes), f"make_cluster({gpu_nodes}x{gpus_per_node} {gpu_model}, "
                                     f"{cpu_nodes} cpu)")
