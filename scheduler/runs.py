"""One place that turns command-line intent into a run: trace, cluster, policy, load.

``simulate`` and ``compare`` (and later live runs) share it, so a simulated
and a live run of the same options see exactly the same jobs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from scheduler.cluster import ClusterSpec, load_cluster
from scheduler.errors import InputError
from scheduler.jobs import AttentionJob, ClusterJob, Job
from scheduler.pricing import ClusterCost, load_profiles
from scheduler.profiles import DeviceProfile
from scheduler.sim.executor import LiveCosts
from scheduler.sim.runner import (
    Fault,
    RunResult,
    SimConfig,
    SimProgress,
    parse_faults,
    simulate,
)
from scheduler.traces import open_trace


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; picklable, so compare can fan out to processes."""

    trace: Path
    policy: str = "adaptive"
    policy_options: Mapping[str, str] = field(default_factory=dict)
    cluster: Path = Path("cluster.yaml")
    nodes: Mapping[str, int] = field(default_factory=dict)
    fmt: str = "auto"
    model: str | None = None
    token_scale: float = 1.0
    load: float | None = None
    limit: int | None = None
    seed: int = 0
    slots: int = 1
    telemetry_interval: float = 1.0
    decision_interval: float = 0.0
    fail: tuple[str, ...] = ()
    fail_node: tuple[str, ...] = ()
    slow: Mapping[str, float] = field(default_factory=dict)
    profiles: Mapping[str, str] = field(default_factory=dict)  # profile name -> file
    out: Path | None = None
    report: bool = True
    # Model what the live path costs beyond the attention (Ray round trips, the
    # controller's decisions, worker setup, CPU contention), as measured in the
    # profiles; off: devices cost exactly what the cost model predicts.
    live_costs: bool = True


def trace_jobs(spec: RunSpec) -> Iterator[Job]:
    jobs = open_trace(spec.trace, spec.fmt, spec.model, spec.token_scale).jobs()
    return itertools.islice(jobs, spec.limit) if spec.limit else jobs


def count_jobs(spec: RunSpec) -> int:
    """Jobs the run will replay (one streaming pass), for progress bars with an ETA."""
    return sum(1 for _ in trace_jobs(spec))


def device_seconds(cost: ClusterCost, job: Job) -> float:
    """Device-seconds of ``job`` on the fastest kind of device the cluster has.

    A cluster job holds ``gpus × gpu_fraction`` devices for its duration; an
    attention job one device for its best run time.
    """
    if isinstance(job, ClusterJob):
        return job.duration * max(job.gpus * job.gpu_fraction, 0.0)
    seconds = cost.best_seconds(job)
    cost.forget(job.id)  # a pass over the whole trace must not keep every job priced
    return seconds


def time_scale(spec: RunSpec, cluster: ClusterSpec, cost: ClusterCost) -> tuple[float, int]:
    """Factor on submit times that makes the offered load ``spec.load``, and the job count.

    Offered load = work (device-seconds on the fastest device kind) divided by
    the span of arrivals times the number of devices that can do that work.
    """
    assert spec.load is not None
    work, first, last, count = 0.0, math.inf, 0.0, 0
    gpu_devices = sum(1 for d in cluster.devices if d.kind == "gpu")
    for job in trace_jobs(spec):
        count += 1
        seconds = device_seconds(cost, job)
        if math.isfinite(seconds):
            work += seconds
        first, last = min(first, job.submit_time), max(last, job.submit_time)
    span = last - first
    if span <= 0 or work <= 0:
        raise InputError("--load needs a trace whose arrivals span time and cost work",
                         path=spec.trace, field="--load")
    devices = gpu_devices or len(cluster.devices)
    return work / (spec.load * devices * span), count


def _scaled(jobs: Iterator[Job], factor: float) -> Iterator[Job]:
    for job in jobs:
        yield replace(job, submit_time=job.submit_time * factor)


def check_options(spec: RunSpec) -> None:
    """The option checks every run shares, simulated or live."""
    if not (math.isfinite(spec.decision_interval) and 0 <= spec.decision_interval <= 3600):
        raise InputError(f"expected 0..3600 seconds, got {spec.decision_interval}",
                         field="--decision-interval")
    if not (math.isfinite(spec.telemetry_interval) and 0 < spec.telemetry_interval <= 3600):
        raise InputError(f"expected (0, 3600] seconds, got {spec.telemetry_interval}",
                         field="--telemetry-interval")
    if spec.slots < 1 or spec.slots > 64:
        raise InputError(f"expected 1..64 slots per device, got {spec.slots}", field="--slots")
    if spec.out is not None and spec.out.exists() and not spec.out.is_dir():
        raise InputError("exists and is not a directory", path=spec.out, field="--out")


def prepare(spec: RunSpec) -> tuple[ClusterSpec, dict[str, DeviceProfile], tuple[Fault, ...]]:
    if spec.load is not None and not (math.isfinite(spec.load) and 0 < spec.load <= 100):
        raise InputError(f"expected a load in (0, 100], got {spec.load}", field="--load")
    check_options(spec)
    cluster = load_cluster(spec.cluster, spec.nodes or None)
    if not cluster.devices:
        raise InputError("the cluster has no devices to run jobs on", path=spec.cluster)
    profiles = load_profiles(cluster, spec.profiles)
    faults = parse_faults(spec.fail, "device", cluster) + parse_faults(spec.fail_node, "node",
                                                                        cluster)
    for device, factor in spec.slow.items():
        if device not in {d.id for d in cluster.devices}:
            raise InputError(f"no device {device!r}", field="--slow")
        if not (math.isfinite(factor) and 1 <= factor <= 1000):
            raise InputError(f"expected a slowdown factor in [1, 1000], got {factor}",
                             field="--slow")
    return cluster, profiles, faults


def run_sim(spec: RunSpec, progress: Callable[[SimProgress], None] | None = None,
            policy: Any = None) -> RunResult:
    """Run one simulation as the CLI would; writes outputs and a report when ``out`` is set.

    ``policy`` is the already built policy, when the caller loaded it to
    validate the spec first (a plugin file then runs once, not twice).
    """
    from policies.base import load_policy

    cluster, profiles, faults = prepare(spec)
    if policy is None:
        policy = load_policy(spec.policy, spec.policy_options)
    jobs: Iterator[Job] = trace_jobs(spec)
    context: dict[str, Any] = {"trace": str(spec.trace), "cluster": cluster.source,
                               "devices": len(cluster.devices), "seed": spec.seed,
                               "live_costs": spec.live_costs}
    if spec.load is not None:
        factor, _ = time_scale(spec, cluster, ClusterCost(cluster, profiles))
        jobs = _scaled(jobs, factor)
        context.update(load=spec.load, time_scale=factor)
    config = SimConfig(seed=spec.seed, slots=spec.slots,
                       telemetry_interval=spec.telemetry_interval,
                       decision_interval=spec.decision_interval, faults=faults,
                       slow=dict(spec.slow), progress=progress,
                       live=LiveCosts.from_profiles(profiles.values()) if spec.live_costs
                       else None)
    name = getattr(policy, "name", spec.policy)
    result = simulate(jobs, cluster, profiles, policy, str(name), spec.out, config, context)
    if spec.out is not None and spec.report:
        from scheduler.report import write_report

        write_report(spec.out)
    return result


__all__ = ["AttentionJob", "RunSpec", "prepare", "run_sim", "time_scale"]
