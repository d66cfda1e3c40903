"""The controller's time for one decision round, on a local-run-sized cluster: live,
nothing is dispatched while it runs, so the simulator charges it per round
(``DeviceProfile.decision_s``)."""

from __future__ import annotations

import time
from dataclasses import replace

from scheduler.calibration.figures import DecisionTiming
from scheduler.calibration.plan import Plan
from scheduler.cluster import ClusterSpec, DeviceSpec, NodeSpec
from scheduler.controller import Controller
from scheduler.jobs import DType
from scheduler.pricing import ClusterCost
from scheduler.profiles import DeviceProfile
from scheduler.view import Telemetry
from workers.measure import cores


def local_cluster(plan: Plan, profile: DeviceProfile) -> ClusterSpec:
    """One node of ``plan.decision_devices`` GPU slots timed by ``profile``: a local run."""
    count = plan.decision_devices
    emulated = plan.device == "cpu"
    memory = profile.memory_bytes // count if emulated else profile.memory_bytes
    model = "emulated" if emulated else profile.device
    devices = tuple(DeviceSpec(f"local/gpu{i}", "local", "gpu", model, memory, profile.name, 1.0)
                    for i in range(count))
    node = NodeSpec("local", "local", float(cores()), profile.memory_bytes, count, model, devices)
    return ClusterSpec((node,), "calibration")


def time_decisions(plan: Plan, profile: DeviceProfile) -> DecisionTiming:
    """Seconds of ``Controller.decide`` with the adaptive policy in a steady state.

    Each round is one live event: the oldest running batch completes, arrivals
    top the queue up to ``plan.decision_queue`` tiny-preset jobs, every device
    reports telemetry, and the controller decides (the timed part).
    """
    from policies.base import load_policy
    from scheduler.presets import get_preset
    from scheduler.traces.synth import SynthSpec, generate

    spec = local_cluster(plan, profile)
    controller = Controller(spec, ClusterCost(spec, {profile.name: profile}),
                            load_policy("adaptive"), policy_name="adaptive")
    dtype = DType(plan.reference_dtype)
    stream = generate(SynthSpec(jobs=100_000_000, seed=0), get_preset("tiny"))
    now, placed, times = 0.0, 0, []
    for _ in range(plan.decision_rounds):
        if controller.batches:
            controller.batch_done(next(iter(controller.batches)), now)
        for _ in range(plan.decision_queue * 4):  # bounded: a job no device runs fails at once
            if len(controller.pending) >= plan.decision_queue:
                break
            controller.submit(replace(next(stream), submit_time=now, dtype=dtype), now)
        controller.observe([Telemetry(now, d.id, 0.8, 0, d.memory_bytes,
                                      len(controller.pending), 1, 0.0) for d in spec.devices])
        start = time.perf_counter()
        step = controller.decide(now, "arrival")
        times.append(time.perf_counter() - start)
        placed += sum(len(b.jobs) for b in step.started)
        now += 0.01
    if not placed:
        raise RuntimeError("the adaptive policy placed no job while calibrating decision time")
    return DecisionTiming(tuple(times), placed, plan.decision_devices, plan.decision_queue)
