"""Clusters as Ray reports them: ``ray.nodes()`` to a spec, and a spec adapted to a live run.

Works on the plain dicts ``ray.nodes()`` returns, so nothing here imports ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.cluster_spec import ClusterSpec, DeviceSpec, NodeSpec, _is_number, _make_node
from scheduler.errors import InputError
from scheduler.inputfiles import clip, shown

_ACCEL = "accelerator_type:"
# A GPU-less node runs one single-threaded CPU worker per core, up to this many: small
# attention calls scale poorly over torch threads (on 2 cores, two one-thread workers ran
# the default tiny trace 1.6x faster than one two-thread worker), and the shipped CPU
# profile is measured at one thread. Past it, each worker gets several threads.
AUTO_CPU_WORKERS = 16
_RAY_HEAD_MARKER = "node:__internal_head__"


def _accelerator(resources: Mapping[str, Any]) -> str | None:
    """The model Ray's ``accelerator_type:X`` resource names, if any."""
    return next((k[len(_ACCEL):] for k in sorted(resources) if k.startswith(_ACCEL)), None)


def from_ray_nodes(nodes: Sequence[Mapping[str, Any]]) -> ClusterSpec:
    """The live cluster as ``ray.nodes()`` reports it; dead nodes are left out.

    The head is named ``head``; other nodes by the first 8 hex digits of their
    NodeID (the prefix ``ray status`` shows), the full id on a clash. Nodes are
    ordered head first, then by NodeID, so the same cluster gives the same spec.
    """
    alive: list[tuple[bool, str, Mapping[str, Any]]] = []
    for i, info in enumerate(nodes):
        if not info.get("Alive", info.get("alive", False)):
            continue
        node_id = info.get("NodeID")
        if not isinstance(node_id, str) or not node_id:
            raise InputError(f"expected a NodeID string, got {clip(node_id)}", field=f"nodes[{i}]")
        for key, amount in (info.get("Resources") or {}).items():
            if not _is_number(amount) or amount < 0:
                raise InputError(f"expected a number >= 0, got {clip(amount)}",
                                 field=f"nodes[{i}].Resources.{shown(str(key))}")
        alive.append((_RAY_HEAD_MARKER not in (info.get("Resources") or {}), node_id, info))
    alive.sort(key=lambda a: a[:2])
    shorts = [node_id[:8] for _, node_id, _ in alive]
    out = []
    for i, (not_head, node_id, info) in enumerate(alive):
        res = info.get("Resources") or {}
        head = i == 0 and not not_head
        gpus, model = int(res.get("GPU", 0)), _accelerator(res)
        address = info.get("NodeManagerAddress")
        out.append(_make_node(
            "head" if head else (shorts[i] if shorts.count(shorts[i]) == 1 else node_id),
            "head" if head else ((model or "gpu") if gpus else "cpu"),
            cpus=float(res.get("CPU", 0)), memory_bytes=int(res.get("memory", 0)), gpus=gpus,
            gpu_model=model, address=address if isinstance(address, str) else None,
            ray_id=node_id))
    return ClusterSpec(tuple(out), "ray.nodes()")


def cpu_worker_count(node_cpus: float, asked: int) -> int:
    """How many CPU workers a GPU-less node with ``node_cpus`` cores runs.

    ``asked`` > 0 is the user's ``--cpu-workers`` (one worker where the node has
    fewer cores); 0 sizes them to the node: one per core, at most
    :data:`AUTO_CPU_WORKERS`, the cores shared out evenly.
    """
    if asked > 0:
        return asked if node_cpus >= asked else 1
    return max(1, min(int(node_cpus), AUTO_CPU_WORKERS))


def for_live_run(spec: ClusterSpec, emulated_gpus: bool, cpu_workers: int) -> ClusterSpec:
    """Adapt a discovered cluster to how a live run uses it.

    Emulated GPUs (``--emulate-gpus``: slots declared to Ray, compute on the
    CPU) are timed with the CPU profile and get an equal share of the node's
    memory. Each GPU-less node's CPUs are split into
    :func:`cpu_worker_count` CPU devices, one worker each.
    """
    nodes = []
    for node in spec.nodes:
        devices = list(node.devices)
        if emulated_gpus and node.gpus:
            share = node.memory_bytes // max(node.gpus, 1)
            devices = [DeviceSpec(d.id, d.node, "gpu", "emulated", share, "cpu", d.cpus)
                       if d.kind == "gpu" else d for d in devices]
        cpu = [d for d in devices if d.kind == "cpu"]
        count = cpu_worker_count(node.cpus, cpu_workers)
        if cpu and count > 1:
            each = node.cpus / count
            devices = [d for d in devices if d.kind != "cpu"] + [
                DeviceSpec(f"{node.name}/cpu{i}", node.name, "cpu", "cpu",
                           node.memory_bytes // count, "cpu", each)
                for i in range(count)]
        nodes.append(NodeSpec(node.name, node.node_type, node.cpus, node.memory_bytes, node.gpus,
                              node.gpu_model, tuple(devices), node.address, node.ray_id))
    return ClusterSpec(tuple(nodes), spec.source)
