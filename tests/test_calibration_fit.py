"""The pure half of calibration: figures in, profile fields out, on hand-computed cases
(no torch, no Ray, no timing)."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scheduler.calibration.figures import (
    DecisionTiming,
    DecodeTiming,
    DeviceFigures,
    HostTiming,
    JobFitTiming,
    LiveFigures,
    PackingTiming,
    RayFigures,
    ReplayTiming,
    ScaleTiming,
    SdpaTiming,
    SharingTiming,
)
from scheduler.calibration.fit import (
    RAY_FIELDS,
    Calibrated,
    JobFit,
    decode_mask_line,
    decode_step_line,
    device_profile,
    device_reference,
    fit_line,
    job_fit,
    live_profile,
    worker_scale,
)
from scheduler.calibration.plan import Plan, ReplayPlan, count_steps
from scheduler.calibration.replay_fit import (
    REPLAY_MIN,
    ReplayRound,
    apply_replay,
    batch_call,
    busy_peers,
    combine_rounds,
    fit_replay,
    fit_worker_path,
    fold_scale,
    per_peer_slowdown,
    replay_round,
    sharing_curve,
    worker_batch,
)
from scheduler.jobs import DType
from scheduler.profile_json import OPTIONAL, micros, profile_to_dict
from scheduler.profiles import load_profile_data, profile_from_dict
from workers.calibrate_live import can_retime

SHIPPED_CPU = Path(__file__).resolve().parents[1] / "scheduler" / "profile_data" / "cpu.json"
STEP = DecodeTiming(rows=2, heads=2, head_dim=16, steps=32, seconds=())


def _device(**changes: Any) -> DeviceFigures:
    """Device figures with round numbers: 1 ms SDPA calls, a 10 µs call floor."""
    figures = DeviceFigures(
        kind="cpu", device="test cpu (2 cores)", matches=("cpu",), memory_bytes=1 << 30,
        source="hand-made", threads=1, dtypes=("fp32", "bf16"),
        host=HostTiming(call_s=10e-6, decode_step_s=12e-6, loop_job_s=5e-6),
        decode_step=replace(STEP, seconds=((256, 32 * (30e-6 + 0.8e-9 * 2 * 2 * 271.5 * 16)),
                                           (4096, 32 * (30e-6 + 0.8e-9 * 2 * 2 * 4111.5 * 16)))),
        decode_mask=replace(STEP, seconds=((256, 32 * (40e-6 + 2e-9 * 2 * 2 * 271.5)),
                                           (4096, 32 * (40e-6 + 2e-9 * 2 * 2 * 4111.5)))),
        sdpa=(SdpaTiming("flash", "fp32", 16, False, 2, 8, 64, 1e-3),
              SdpaTiming("math", "bf16", 16, True, 2, 8, 64, 1e-3)),
        matmul_side=1000, matmul_s={"fp32": 0.02, "bf16": 0.01},
        copy_bytes=10**9, copy_s=0.5,
        batching=(PackingTiming(1, 64, 20e-6, 20e-6), PackingTiming(4, 64, 20e-6, 5e-6)),
        packing=(PackingTiming(4, 64, 20e-6, 5e-6),))
    return replace(figures, **changes)


def test_the_device_figures_make_the_profile_fields_by_hand() -> None:
    profile = device_profile(_device(), "hand")
    # 4·b·h·q·kv·d = 4·2·8·64·64·16 flops in 1 ms; causal halves them
    assert [p.tflops for p in profile.sdpa] == [round(4 * 2 * 8 * 64 * 64 * 16 / 1e-3 / 1e12, 6),
                                                round(2 * 2 * 8 * 64 * 64 * 16 / 1e-3 / 1e12, 6)]
    assert profile.call_host_s == pytest.approx(12e-6)  # the larger of the call and the step
    assert profile.unpacked_job_host_s == ((1.0, pytest.approx(5e-6)),)
    assert profile.decode_step_s == pytest.approx(30e-6)
    assert profile.decode_element_s == pytest.approx(0.8e-9)
    assert profile.decode_mask_call_s == pytest.approx(40e-6)
    assert profile.decode_mask_score_s == pytest.approx(2e-9)
    assert profile.decode_dtype is DType.FP32
    assert profile.bandwidth_bytes_s == 4e9  # read + write of 1 GB in 0.5 s
    assert dict(profile.matmul_tflops) == {DType.FP32: 0.1, DType.BF16: 0.2}
    assert dict(profile.dtype_aliases) == {DType.FP16: DType.BF16}  # fp16 runs at bf16's rate
    assert not device_profile(_device(dtypes=("fp32",)), "x").dtype_aliases
    reference = device_reference(_device())
    assert reference["batching_heads8_headdim64"][1] == {
        "jobs": 4, "seq_len": 64, "one_by_one_us_per_job": 20.0, "packed_us_per_job": 5.0,
        "gain": 4.0}
    packed = reference["packing_batch1_heads8_headdim64"][0]
    assert packed["one_packed_call_tflops"] == pytest.approx(4 * 8 * 64 * 64 * 64 / 5e-6 / 1e12)


def test_a_mask_that_costs_nothing_is_never_negative() -> None:
    faster = replace(STEP, seconds=((256, -1e-6), (4096, -2e-6)))
    assert decode_mask_line(faster) == (0.0, 0.0)
    steeper = replace(STEP, seconds=((256, 32 * 50e-6), (4096, 32 * 10e-6)))
    assert decode_step_line(steeper)[1] == 0.0  # a slope below 0 is floored


def test_fit_line_recovers_a_known_line() -> None:
    a, b = fit_line([(1, 5.0), (2, 7.0), (4, 11.0), (8, 19.0)])
    assert (a, b) == pytest.approx((3.0, 2.0))
    with pytest.raises(ValueError, match="two distinct"):
        fit_line([(4, 1.0), (4, 2.0)])


def test_the_per_job_fit_is_a_line_through_the_residuals() -> None:
    fit = job_fit(JobFitTiming(((1, 3e-3), (4, 6e-3), (16, 18e-3))))
    assert (fit.per_call_us, fit.per_job_us) == (pytest.approx(2000.0), pytest.approx(1000.0))
    assert fit.residual_us == ((1, 3000.0), (4, 6000.0), (16, 18000.0))
    assert fit.reference()["residual_us"] == [[1, 3000.0], [4, 6000.0], [16, 18000.0]]


def test_the_worker_scale_keeps_sizes_the_floor_does_not_explain() -> None:
    fit = JobFit(per_call_us=100.0, per_job_us=-5.0, residual_us=())  # a slope below 0: none
    timings = [ScaleTiming("prefill", 0.010, 2, 0.0121),  # 12 ms left of 10: 1.2
               ScaleTiming("prefill", 0.001, 1, 0.0016),  # 1.5
               ScaleTiming("prefill", 1e-6, 1, 0.0005),  # device time under the floor / 8
               ScaleTiming("decode", 0.002, 64, 0.0013)]  # what is left is under the floor
    assert worker_scale(timings, fit, call_host_s=20e-6) == {
        "prefill": ((0.001, 1.5), (0.01, 1.2))}


def _live(ray: bool = True) -> LiveFigures:
    via = JobFitTiming(((1, 0.0012), (5, 0.0016)))  # 1100 µs a call, 100 µs a job
    busy = JobFitTiming(((1, 0.0022), (5, 0.0026)))  # 2100 µs a call
    return LiveFigures(
        decision=DecisionTiming((3e-4, 1e-4, 2e-4), placed=9, devices=2, queue=8),
        in_process=JobFitTiming(((1, 0.0003), (5, 0.0005))),  # 250 µs a call, 50 a job
        scale=(ScaleTiming("train", 0.01, 1, 0.01130),),
        ray=RayFigures(actor_s=8e-4, task_s=1.5e-3, telemetry_s=9e-4, via_ray=via,
                       peers_busy=busy,
                       sharing=SharingTiming(((1, (0.1, 0.1, 0.3)), (2, (0.125, 0.2, 0.12)))))
        if ray else None)


def test_the_live_figures_complete_the_profile() -> None:
    base = device_profile(_device(), "hand")
    profile, reference = live_profile(base, _live())
    assert profile.decision_s == pytest.approx(200e-6)
    assert reference["decision"] == {"median_us": 200.0, "p90_us": 200.0, "rounds": 3,
                                     "devices": 2, "queue": 8, "jobs_placed": 9}
    assert profile.worker_job_s == pytest.approx(100e-6)  # the Ray fit's slope
    assert reference["worker_in_process"]["per_job_us"] == pytest.approx(50.0)
    # the in-process fit sets the worker scale: 11.3 ms less 250 + 50 µs over 10 ms
    assert dict(profile.worker_scale) == {"train": ((0.01, 1.1),)}
    # the batch round trip: the larger Ray intercept (peers busy) over the empty call
    assert profile.batch_call_s == pytest.approx(2100e-6)
    assert profile.actor_call_s == pytest.approx(800e-6)
    assert profile.node_sharing == ((1.0, 1.0), (2.0, 0.8))  # medians 0.1 and 0.125
    assert list(reference) == ["decision", "worker_in_process", "worker_through_ray_peers_busy",
                               "node_sharing", "worker_through_ray"]
    alone, reference = live_profile(base, _live(ray=False))
    assert alone.actor_call_s == 0 and alone.worker_job_s == pytest.approx(50e-6)
    assert list(reference) == ["decision", "worker_in_process"]


def test_a_calibrated_profile_is_written_as_built_and_reads_back_equal() -> None:
    profile, reference = live_profile(device_profile(_device(), "hand"), _live())
    calibrated = Calibrated(profile, reference, frozenset({"worker_batch_us"}))
    data = calibrated.noted("--quick, 9 s").to_json()
    assert data["source"] == "hand-made; --quick, 9 s"
    assert "worker_batch_us" not in data and data["reference"] == reference
    assert data["call_host_us"] == 12.0 and data["node_sharing"] == [[1, 1.0], [2, 0.8]]
    assert data["unpacked_job_host_us"] == [[1, 5.0]]
    assert replace(profile_from_dict(data), source=profile.source) == profile
    no_ray = Calibrated(profile, reference, frozenset(RAY_FIELDS)).to_json()
    assert not set(RAY_FIELDS) & set(no_ray)
    with pytest.raises(ValueError, match="optional"):
        profile_to_dict(profile, omit=["name"])


@pytest.mark.parametrize("name", ["cpu", "h100"])
def test_a_shipped_profile_reads_and_writes_back_to_the_same_json(name: str) -> None:
    data, _ = load_profile_data(name)
    profile = profile_from_dict(data)
    written = profile_to_dict(profile, data.get("reference"),
                              [k for k in OPTIONAL if k not in data])
    assert written == data
    assert profile_from_dict(written) == profile


def test_micros_give_back_the_digits_a_file_holds() -> None:
    for value in (12.345, 784.939, 0.001, 250.0, 1e6, 3.14159265358979):
        assert micros(float(value) * 1e-6) == value


# -- the live replay ------------------------------------------------------------------------


def test_the_replay_sets_each_kinds_level_and_keeps_its_shape() -> None:
    lone = {"prefill": ((0.001, 1.2), (0.01, 1.0)), "train": ((0.01, 1.1),)}
    folded = fold_scale(lone, {"prefill": 1.5, "decode": 0.9}, {"decode": 0.002, "train": 1.0})
    assert folded == {"prefill": ((0.001, 1.8), (0.01, 1.5)), "train": ((0.01, 1.1),),
                      "decode": ((0.002, 0.9),)}
    assert lone["prefill"] == ((0.001, 1.2), (0.01, 1.0))  # the input is not changed


def test_replays_combine_by_their_median_so_one_disturbed_replay_moves_nothing() -> None:
    def one(prefill: float, c: float, trip: float, decode: float | None = None) -> ReplayRound:
        levels = {"prefill": prefill} | ({"decode": decode} if decode is not None else {})
        return ReplayRound(levels, c, trip, {"prefill": 20, "decode": 5}, 0.4, trip + 1500,
                           fixed_us=trip / 4)

    got = combine_rounds([one(1.10, 0.10, 3800.0, 1.0), one(9.0, 0.90, 90000.0),
                          one(1.12, 0.12, 3900.0, 1.2)])
    assert got.levels == {"prefill": 1.12, "decode": 1.1}  # a kind only some replays had
    assert got.per_peer == 0.12 and got.round_trip_us == 3900.0 and got.held_us == 5400.0
    assert got.fixed_us == 975.0
    assert got.lone_batches == {"decode": 15, "prefill": 60} and got.jct_mean_s == 0.4


def test_a_replay_round_keeps_only_kinds_with_enough_lone_batches() -> None:
    runs = tuple(("prefill", "a", 10.0 * i, 10.0 * i + 1.2, 1.0) for i in range(REPLAY_MIN))
    runs += (("train", "a", 500.0, 502.0, 1.0),)
    got = replay_round(ReplayTiming(runs, (0.004, 0.002, 0.003), (), 0.7))
    assert got.levels == {"prefill": pytest.approx(1.2)}  # one train run corrects nothing
    assert got.lone_batches == {"prefill": REPLAY_MIN, "train": 1}
    assert got.round_trip_us == 3000.0 and got.held_us == 0.0 and got.jct_mean_s == 0.7


def test_a_batch_costs_from_the_decision_that_placed_it_less_the_decision() -> None:
    got = ReplayRound({"prefill": 1.1}, 0.1, 4000.0, {"prefill": 20}, 0.4, held_us=5700.0)
    assert batch_call(got, 240.0) == 5460.0
    assert batch_call(replace(got, held_us=0.0), 240.0) == 4000.0  # an old replay
    assert batch_call(replace(got, held_us=4100.0), 240.0) == 4000.0


def test_a_workers_fixed_cost_is_charged_per_batch_less_its_per_job_cost() -> None:
    got = ReplayRound({"prefill": 1.1}, 0.1, 4000.0, {"prefill": 20}, 0.4, fixed_us=1300.0)
    assert worker_batch(got, 200.0) == 1100.0
    assert worker_batch(got, 1500.0) == 0.0  # never negative


def test_the_replay_fit_folds_into_the_profile() -> None:
    profile, _ = live_profile(device_profile(_device(), "hand"), _live())
    got = ReplayRound({"train": 1.5, "prefill": 0.9}, 0.25, 3000.0, {"train": 30}, 0.4,
                      held_us=5000.0, fixed_us=1300.0)
    fit = fit_replay(profile, got, {"prefill": 0.004}, workers=2)
    assert fit.worker_batch_us == 1200.0  # 1300 less the 100 µs per job
    assert fit.batch_call_us == 4800.0  # 5000 held less the 200 µs decision
    assert fit.node_sharing == ((1.0, 1.0), (2.0, 0.8))
    new = apply_replay(profile, fit)
    assert dict(new.worker_scale) == {"train": ((0.01, 1.65),), "prefill": ((0.004, 0.9),)}
    assert new.worker_batch_s == pytest.approx(1200e-6) and new.node_sharing == fit.node_sharing
    kept = apply_replay(profile, fit_replay(profile, got, {}, 2, fixed_c=0.5))
    assert kept.node_sharing == profile.node_sharing  # a given slowdown keeps the curve


def test_only_a_profile_calibrated_with_a_replay_is_retimed() -> None:
    shipped = json.loads(SHIPPED_CPU.read_text())
    assert not can_retime(shipped)
    assert can_retime({**shipped, "reference": {"live_replay": {"jobs": 600}}})
    assert not can_retime([]) and not can_retime({"reference": None})


def test_a_fixed_sharing_takes_the_levels_net_of_it_and_fits_nothing() -> None:
    # two kinds, each 1.2 alone and 1.2 × 1.5 with the other device busy throughout
    runs = [("prefill", "a", 0.0, 1.8, 1.0), ("prefill", "b", 0.0, 1.8, 1.0),
            ("train", "a", 10.0, 11.2, 1.0)]
    fit = fit_worker_path(runs, fixed_c=0.5)
    assert fit.per_peer == 0.5 and fit.fixed_s == 0.0  # one size: nothing to tell it by
    assert fit.levels == {"prefill": pytest.approx(1.2), "train": pytest.approx(1.2)}
    assert fit.counts == {"prefill": 2, "train": 1}
    data = json.loads(SHIPPED_CPU.read_text())
    for curve, want in (([[1, 1.0], [2, 0.8]], 0.25), ([[1, 1.0], [2, 1.0], [4, 0.5]], 1 / 3),
                        ([[1, 1.0]], 0.0)):
        profile = profile_from_dict({**data, "node_sharing": curve})
        assert per_peer_slowdown(profile) == pytest.approx(want)


def test_busy_peers_are_the_time_averaged_overlap_with_other_devices() -> None:
    runs = [("prefill", "a", 0.0, 2.0, 1.0), ("prefill", "b", 0.0, 2.0, 1.0),
            ("train", "a", 10.0, 13.0, 2.0), ("train", "b", 12.0, 13.0, 1.0),
            ("decode", "a", 20.0, 21.0, 1.0)]
    # a and b overlap wholly; a's train run overlaps b's for a third of its length;
    # a run on the same device never counts as a peer.
    assert busy_peers(runs) == pytest.approx([1.0, 1.0, 1 / 3, 1.0, 0.0])


def _model_runs(fixed: float, levels: dict[str, float], c: float) -> list:
    """Runs made to ``(fixed + level(kind) · predicted) · (1 + c · peers)``: alone and
    overlapped, of several sizes each."""
    runs: list = []
    t = 0.0
    for i in range(24):  # alternate the kinds, alone and with both devices busy
        kind = "prefill" if i % 2 else "train"
        solo = 0.01 * (1 + i) ** 1.5
        length = fixed + solo * levels[kind]
        if i % 3 == 0:
            runs.append((kind, "a", t, t + length, solo))
        else:
            runs.append((kind, "a", t, t + length * (1 + c), solo))
            runs.append((kind, "b", t, t + length * (1 + c), solo))
        t += 100.0
    return runs


def test_the_worker_path_fit_recovers_the_fixed_cost_levels_and_slowdown() -> None:
    levels = {"prefill": 1.4, "train": 0.9}
    fit = fit_worker_path(_model_runs(0.002, levels, 0.25))
    assert fit.per_peer == pytest.approx(0.25, rel=1e-6)
    assert fit.fixed_s == pytest.approx(0.002, rel=1e-6)
    assert fit.levels == {k: pytest.approx(v, rel=1e-6) for k, v in levels.items()}
    assert sharing_curve(fit.per_peer, 3) == ((1.0, 1.0), (2.0, 0.8), (3.0, round(1 / 1.5, 4)))


def test_a_fixed_cost_is_not_taken_in_as_a_share_of_every_job() -> None:
    """A ratio per kind would price the longest jobs at the mean ratio, which a fixed
    cost pushes up: the fit prices each run at what it took, short and long alike."""
    runs = _model_runs(0.02, {"prefill": 1.0, "train": 1.0}, 0.0)
    fit = fit_worker_path(runs)
    for kind, _, start, end, solo in runs:
        assert fit.fixed_s + fit.levels[kind] * solo == pytest.approx(end - start, rel=1e-6)
    ratio_of_longest = max(runs, key=lambda r: r[4])
    assert (ratio_of_longest[3] - ratio_of_longest[2]) / ratio_of_longest[4] < statistics.median(
        (e - s) / solo for _, _, s, e, solo in runs)  # what a median ratio would charge it


def test_each_kinds_fitted_total_is_what_its_runs_took() -> None:
    """Noisy runs: the weighted fit keeps each kind's total, the load the workers saw."""
    import random

    rng = random.Random(3)
    runs = [(kind, "a", 10.0 * i, 10.0 * i + (0.001 + 1.1 * solo) * rng.uniform(0.7, 1.3), solo)
            for i, (kind, solo) in enumerate(
                (("prefill" if i % 3 else "decode"), 0.001 * (1 + i % 17)) for i in range(90))]
    fit = fit_worker_path(runs)
    assert fit.per_peer == 0.0  # no run overlaps another
    for kind in ("prefill", "decode"):
        mine = [r for r in runs if r[0] == kind]
        fitted = sum(fit.fixed_s + fit.levels[kind] * r[4] for r in mine)
        assert fitted == pytest.approx(sum(r[3] - r[2] for r in mine), rel=1e-6)


def test_a_replay_without_sharing_fits_none() -> None:
    runs = [("prefill", "a", 0.0, 1.0, 1.0), ("prefill", "b", 0.5, 1.5, 1.0)]
    fit = fit_worker_path(runs)  # overlapped, but no slower: c is 0, never negative
    assert fit.per_peer == pytest.approx(0.0, abs=1e-12) and fit.per_peer >= 0
    assert fit.levels == {"prefill": pytest.approx(1.0)}
    assert sharing_curve(0.0, 1) == ((1.0, 1.0), (2.0, 1.0))
    empty = fit_worker_path([])  # no runs: nothing fitted, no fixed cost, no slowdown
    assert (empty.levels, empty.fixed_s, empty.per_peer, empty.counts) == ({}, 0.0, 0.0, {})
    assert fit_worker_path([], fixed_c=0.3).per_peer == 0.3  # a given slowdown is kept


# -- the plan -------------------------------------------------------------------------------


def test_the_progress_bar_total_counts_every_measurement() -> None:
    plan = Plan(lengths=(64,), head_dims=(16,), dtypes=("fp32",), causal=(False,),
                backends=("math",), batch_sizes=(1, 4), packing_lengths=(64,),
                sharing_workers=2, replay_rounds=3)
    device = 3 + 1 + 1 + 2 + 1  # host, step, mask, one SDPA point, matmul, batching, packing
    assert count_steps(replace(plan, ray=False)) == device + 2
    assert count_steps(plan) == device + 6 + 3 * 2 + 3
    assert count_steps(replace(plan, replay_jobs=0)) == device + 6 + 3 * 2
    assert count_steps(replace(plan, device="cuda")) == device + 6
    assert plan.replay == ReplayPlan(jobs=600, rounds=3, workers=2) and plan.replays
    assert not replace(plan, device="cuda").replays and not replace(plan, replay_jobs=0).replays
    with pytest.raises(ValueError, match="at least one job"):
        ReplayPlan(jobs=0)
