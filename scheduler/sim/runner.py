"""Replay a job stream against a simulated cluster with any policy.

The loop is :func:`scheduler.loop.run`, the one live runs use too; here it
runs on a :class:`~scheduler.clocks.VirtualClock` with simulated devices. The
trace is pulled lazily, one arrival ahead, so memory follows the jobs in
flight, not the trace length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scheduler.clocks import VirtualClock
from scheduler.cluster import ClusterSpec
from scheduler.controller import Controller
from scheduler.errors import InputError
from scheduler.events import RunResult
from scheduler.jobs import Job
from scheduler.latencies import Latencies
from scheduler.loop import IDLE_ROUNDS, LoopConfig, run
from scheduler.metrics import RunOutputs
from scheduler.pricing import ClusterCost
from scheduler.profiles import DeviceProfile
from scheduler.records import Sink
from scheduler.sim.executor import Fault, LiveCosts, SimExecutor, SimProgress

__all__ = ["IDLE_ROUNDS", "Fault", "Latencies", "RunResult", "SimConfig", "SimProgress",
           "parse_faults", "simulate"]


@dataclass
class SimConfig:
    seed: int = 0
    slots: int = 1
    telemetry_interval: float = 1.0
    faults: tuple[Fault, ...] = ()
    slow: Mapping[str, float] = field(default_factory=dict)
    max_policy_failures: int = 10
    progress: Callable[[SimProgress], None] | None = None
    observer: Sink | None = None
    # Scheduling quantum: consult the policy at most once per this many simulated
    # seconds (0: after every instant with events). Real schedulers run in
    # cycles too; a quantum trades reaction time for simulator speed.
    decision_interval: float = 0.0
    # Model the live path's own costs (scheduler.sim.executor.LiveCosts); None:
    # devices cost exactly what the cost model predicts.
    live: LiveCosts | None = None
    # (policy, name) to switch to when the policy fails repeatedly; None: stop the run.
    fallback: tuple[Any, str] | None = None


def parse_faults(items: Iterable[str], kind: str, spec: ClusterSpec) -> tuple[Fault, ...]:
    """``TARGET@SECONDS`` items for ``--fail`` (devices) or ``--fail-node`` (nodes)."""
    names = {d.id for d in spec.devices} if kind == "device" else {n.name for n in spec.nodes}
    option = "--fail" if kind == "device" else "--fail-node"
    out = []
    for item in items:
        target, sep, when = item.rpartition("@")
        try:
            t = float(when)
            if not sep or not math.isfinite(t) or t < 0:
                raise ValueError
        except ValueError:
            raise InputError(f"expected {kind.upper()}@SECONDS, got {item!r}",
                             field=option) from None
        if target not in names:
            sample = ", ".join(sorted(names)[:4])
            raise InputError(f"no {kind} {target!r}; e.g. {sample}", field=option)
        out.append(Fault(kind, target, t))
    return tuple(out)


def simulate(jobs: Iterable[Job], spec: ClusterSpec, profiles: Mapping[str, DeviceProfile],
             policy: Any, policy_name: str, out: Path | None = None,
             config: SimConfig | None = None, context: Mapping[str, Any] | None = None
             ) -> RunResult:
    """Run the whole trace; write outputs to ``out`` when given."""
    config = config or SimConfig()
    cost = ClusterCost(spec, profiles)
    outputs = RunOutputs(out, {d.id: d.node for d in spec.devices}, config.observer)
    controller = Controller(spec, cost, policy, policy_name=policy_name, seed=config.seed,
                            slots=config.slots, sink=outputs,
                            max_policy_failures=config.max_policy_failures)
    clock = VirtualClock()
    executor = SimExecutor(spec, {d.id: cost.profile(d.id) for d in spec.devices}, clock,
                           config.slow, config.live, config.faults, config.progress)
    loop = LoopConfig(policy_name, config.telemetry_interval, config.decision_interval,
                      config.fallback, dict(context or {}))
    return run(controller, iter(jobs), executor, clock, outputs, loop)
