"""Measure the local device into a device profile (``attnsched-profile/1``).

``attnsched calibrate`` (``scheduler/cli/calibrate_cmd.py``) runs
:func:`build_profile`. Every figure comes from a timed run, nothing is
assumed: the device's own figures (:mod:`workers.measure`), the live path's
costs through Ray and the controller (:mod:`workers.measure_live`), then live
replays (:mod:`workers.calibrate_live`). The fits that make a profile of what
was timed are pure functions (:mod:`scheduler.calibration`); the profile is
built once, as a typed value, and written as it was built.

What is measured is a :class:`~scheduler.calibration.plan.Plan`, so tests can
run a grid of a few points in seconds while a real calibration sweeps the full
one.
"""

from __future__ import annotations

from dataclasses import replace

from scheduler.calibration.fit import (
    RAY_FIELDS,
    Calibrated,
    device_profile,
    device_reference,
    live_profile,
)
from scheduler.calibration.plan import Plan, Tick, no_tick
from scheduler.calibration.replay_fit import apply_replay
from scheduler.profile_json import counts_json, micros, scale_json
from workers import calibrate_live, kernels
from workers.measure import cores, measure_device
from workers.measure_live import measure_live


def full_plan(device: str = "cpu", threads: int = 1) -> Plan:
    if device == "cuda":
        return Plan(device="cuda", threads=threads, lengths=(128, 512, 2048, 8192, 16384),
                    head_dims=(64, 128), dtypes=("bf16", "fp16", "fp32"),
                    backends=kernels.PREFERENCE["cuda"], point_flops=2.0**36,
                    packing_lengths=(128, 512, 2048), sharing_workers=1)
    return Plan(device="cpu", threads=threads, sharing_workers=max(2, cores()))


def quick_plan(device: str = "cpu", threads: int = 1) -> Plan:
    """Under two minutes on the 2-core development machine, Ray's start included."""
    return replace(full_plan(device, threads), lengths=(128, 1024) if device == "cpu" else
                   (512, 4096), head_dims=(16, 64) if device == "cpu" else (64, 128),
                   point_flops=full_plan(device).point_flops / 4, min_time=0.1,
                   packing_lengths=(128, 512), worker_repeats=5, sharing_batch_s=0.05,
                   sharing_batches=4, decision_rounds=60, replay_jobs=300,
                   replay_rounds=1)


def build_profile(plan: Plan, name: str, tick: Tick = no_tick) -> Calibrated:
    """Measure everything ``plan`` asks for (calling ``tick`` ``count_steps(plan)`` times).

    The device's figures make a profile the live path's fits predict with; the
    live figures complete it; on a CPU through Ray the replays then re-level
    it, and what they replace is kept in ``reference``: the lone-job curve, the
    looped node sharing and the Ray fit's batch round trip. Fields not measured
    (the Ray figures without Ray, the worker's fixed batch cost without a
    replay) are left out of the file.
    """
    device = measure_device(plan, tick)
    base = device_profile(device, name)
    profile, live = live_profile(base, measure_live(plan, base, tick))
    reference = {**device_reference(device), **live}
    omit = {"worker_batch_us", *(RAY_FIELDS if not plan.ray else ())}
    if plan.replays:
        fit, reference["live_replay"] = calibrate_live.replay_fit(plan.replay, profile, tick)
        reference["worker_scale_lone"] = scale_json(profile.worker_scale)
        reference["node_sharing_looped"] = counts_json(profile.node_sharing)
        reference["batch_call_fit_us"] = micros(profile.batch_call_s)
        profile = apply_replay(profile, fit)
        omit.discard("worker_batch_us")
    return Calibrated(profile, reference, frozenset(omit))
