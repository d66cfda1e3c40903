"""A live run's Ray: joined or started on loopback, the cluster discovered, workers warm."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from scheduler.cluster import ClusterSpec, for_live_run, from_ray_nodes
from scheduler.errors import InputError
from scheduler.ray_start import join_or_start
from workers.fleet import create_workers
from workers.live_config import LiveConfig


def start_ray(config: LiveConfig) -> None:
    """Join ``address``, or start an embedded Ray bound to loopback (nobody else needs it)."""
    extra: dict[str, Any] = {}
    if config.metrics_port:
        extra["_metrics_export_port"] = config.metrics_port
    join_or_start(config.address, num_cpus=config.num_cpus,
                  num_gpus=config.emulate_gpus or None, **extra)


def metrics_endpoints() -> list[str]:
    """Where each node serves its Prometheus metrics, attnsched's among them."""
    import ray

    return sorted(f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
                  for n in ray.nodes() if n.get("Alive")  # type: ignore[no-untyped-call]
                  and n.get("MetricsExportPort"))


def discover(config: LiveConfig) -> ClusterSpec:
    import ray

    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    return live_cluster(nodes, config, local_cuda=not config.address and _has_cuda())


def live_cluster(nodes: list[dict[str, Any]], config: LiveConfig,
                 local_cuda: bool) -> ClusterSpec:
    """The cluster a live run schedules on, from ``ray.nodes()``.

    Which GPUs are only declared slots (computing on the CPU) is decided per
    node: on a cluster the driver's own node says nothing about the others (the
    head of cluster.yaml has no GPU), but Ray labels every GPU it detects with
    ``accelerator_type:MODEL``, so an unlabelled GPU slot is a declared one.
    """
    spec = from_ray_nodes(nodes)
    if config.address:
        unlabelled = {n.get("NodeID") for n in nodes if not any(
            k.startswith("accelerator_type:") for k in n.get("Resources") or {})}
        declared = {n.name for n in spec.nodes if n.gpus and n.ray_id in unlabelled}
    else:
        declared = {n.name for n in spec.nodes} if config.emulate_gpus or not local_cuda \
            else set()
    real = for_live_run(spec, emulated_gpus=False, cpu_workers=config.cpu_workers)
    fake = for_live_run(spec, emulated_gpus=True, cpu_workers=config.cpu_workers)
    spec = ClusterSpec(tuple(f if f.name in declared else r
                             for r, f in zip(real.nodes, fake.nodes, strict=True)), spec.source)
    if not spec.devices:
        raise InputError("the Ray cluster offers no device to run on", field="--address")
    return budgeted(spec, config.memory_fraction)


def budgeted(spec: ClusterSpec, fraction: float) -> ClusterSpec:
    """Each device's memory scaled to its budget: what the controller may plan with."""
    nodes = tuple(replace(node, devices=tuple(
        replace(d, memory_bytes=int(d.memory_bytes * fraction)) for d in node.devices))
        for node in spec.nodes)
    return ClusterSpec(nodes, spec.source)


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


@dataclass
class LiveSession:
    """Ray joined, the cluster discovered and one warm worker per device."""

    spec: ClusterSpec
    workers: dict[str, Any]


def open_session(config: LiveConfig) -> LiveSession:
    start_ray(config)
    spec = discover(config)
    return LiveSession(spec, create_workers(spec, config))


def close_session(session: LiveSession) -> None:
    import ray

    for worker in session.workers.values():
        ray.kill(worker)
