"""``attnsched calibrate``: real torch and Ray on a grid small enough for CI.

The CLI runs once per module with its quick plan shrunk to a few points (one
Ray start, ~15 s); the tests then check the profile it wrote: it validates,
the cost model and the simulator read it, and the live-path figures are the
ones the simulator adds to a job.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scheduler import costmodel
from scheduler.cluster import ClusterSpec
from scheduler.jobs import DType
from scheduler.profiles import DeviceProfile, load_profile, profile_from_dict
from scheduler.sim.executor import LiveCosts
from scheduler.sim.runner import SimConfig, simulate
from tests.builders import attention_job
from tests.simkit import Recorder, Scripted
from workers import calibrate
from workers.calibrate import Plan, build_profile, count_steps
from workers.calibrate_live import (
    REPLAY_LOAD,
    SHARING_ROUNDS,
    ReplayRound,
    batch_call,
    busy_peers,
    can_retime,
    combine_rounds,
    fit_line,
    fit_worker_jobs,
    fit_worker_path,
    fold_scale,
    local_cluster,
    per_peer_slowdown,
    replay_jobs,
    sharing_curve,
    worker_batch,
)
from workers.worker import BatchResult

SHIPPED_CPU = Path(__file__).resolve().parents[1] / "scheduler" / "profile_data" / "cpu.json"
TINY = Plan(lengths=(64, 256), head_dims=(16, 32), dtypes=("fp32",), causal=(False, True),
            point_flops=2.0**21, min_time=0.01, batch_sizes=(1, 4), packing_lengths=(64,),
            worker_batches=(1, 4, 8), worker_repeats=3, sharing_workers=2,
            sharing_batch_s=0.01, sharing_batches=3, decision_devices=2, decision_queue=8,
            decision_rounds=10, replay_jobs=80, replay_rounds=2)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The CLI's ``--quick`` calibration, on the tiny plan."""
    from scheduler.cli.main import main

    out = tmp_path_factory.mktemp("calibrate") / "cpu.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(calibrate, "quick_plan", lambda device, threads: TINY)
        assert main(["calibrate", "--quick", "--name", "tinycpu", "-o", str(out)]) == 0
    return out, json.loads(out.read_text())


def one_device(profile: DeviceProfile) -> ClusterSpec:
    return local_cluster(replace(TINY, decision_devices=1), profile)


def test_quick_calibration_writes_a_profile_that_validates(calibrated) -> None:
    path, data = calibrated
    profile = load_profile(path)  # validates against the schema
    assert profile.name == "tinycpu" and profile.kind == "cpu"
    grid = {(p.backend, p.dtype.value, p.head_dim, p.causal, p.q_len) for p in profile.sdpa}
    assert grid == {(b, dt, d, c, n) for dt, d, c, n, b in TINY.grid()}
    assert all(p.tflops > 0 for p in profile.sdpa)
    assert profile.call_host_s > 0 and profile.bandwidth_bytes_s > 0
    assert profile.actor_call_s > 0 and profile.task_s > 0
    assert profile.telemetry_s > 0 and profile.decision_s > 0 and profile.worker_job_s >= 0
    # The per-job figure is the slope of the Ray-path fit, kept with its data.
    assert data["worker_job_us"] == max(0.0, data["reference"]["worker_through_ray"]
                                        ["per_job_us"])
    assert data["decode_mask_call_us"] >= 0 and data["decode_mask_score_ns"] >= 0
    assert data["decode_step_us"] > 0 and data["decode_element_ns"] >= 0
    assert profile.decode_dtype is DType.FP32 and profile.decode_step_s > 0
    assert profile.decode_mask_call_s == data["decode_mask_call_us"] * 1e-6
    assert [k for k, _ in profile.node_sharing] == [1.0, 2.0]
    assert profile.node_sharing[0] == (1.0, 1.0)
    assert all(0 < e <= 1 for _, e in profile.node_sharing)
    curve = data["reference"]["batching_heads8_headdim64"]
    assert [row["jobs"] for row in curve] == list(TINY.batch_sizes)
    assert data["reference"]["decision"]["jobs_placed"] > 0
    # The live replay ran through the real live path and set each kind's level.
    replay = data["reference"]["live_replay"]
    assert replay["jobs"] == TINY.replay_jobs and sum(replay["lone_batches"].values()) > 0
    levels = replay["worker_level"]
    assert levels and all(r > 0 for r in levels.values())
    # replays back to back, each figure their median (of two: the mean of the pair)
    rounds = replay["per_round"]
    assert replay["rounds"] == len(rounds) == TINY.replay_rounds
    for kind, level in levels.items():
        assert level == pytest.approx(statistics.median(
            r["worker_level"][kind] for r in rounds if kind in r["worker_level"]), abs=1e-4)
    for field in ("round_trip_beyond_worker_us", "worker_fixed_us"):
        assert replay[field] == pytest.approx(statistics.median(r[field] for r in rounds),
                                              abs=1e-3)
    lone = data["reference"]["worker_scale_lone"]
    for kind, curve in data["worker_scale"].items():
        if kind in lone:
            assert curve == [[x, round(y * levels.get(kind, 1.0), 4)] for x, y in lone[kind]]
        else:
            assert [y for _, y in curve] == [levels[kind]]
    # what a lone batch took in its worker whatever its size, less the per-job cost
    assert replay["worker_fixed_us"] >= 0
    assert data["worker_batch_us"] == pytest.approx(
        max(0.0, replay["worker_fixed_us"] - data["worker_job_us"]), abs=1e-3)
    assert profile.worker_batch_s == pytest.approx(data["worker_batch_us"] * 1e-6)
    # node sharing is what the replay's workers did to each other; the looped one is kept
    assert data["node_sharing"] == sharing_curve(replay["slowdown_per_busy_peer"], 2)
    assert len(data["reference"]["node_sharing_looped"]) == 2
    # a batch's round trip is what the replay's batches took beyond their workers' timing
    assert replay["round_trip_beyond_worker_us"] > 0
    # ... and from the decision that placed it: a job's service counts from there
    assert replay["held_beyond_worker_us"] >= replay["round_trip_beyond_worker_us"]
    assert data["batch_call_us"] == pytest.approx(max(data["actor_call_us"], replay[
        "round_trip_beyond_worker_us"], replay["held_beyond_worker_us"] - data["decision_us"]),
        abs=1e-3)
    assert data["reference"]["batch_call_fit_us"] > 0


def test_the_replay_sets_each_kinds_level_and_keeps_its_shape() -> None:
    lone = {"prefill": [[0.001, 1.2], [0.01, 1.0]], "train": [[0.01, 1.1]]}
    folded = fold_scale(lone, {"prefill": 1.5, "decode": 0.9}, {"decode": 0.002, "train": 1.0})
    assert folded == {"prefill": [[0.001, 1.8], [0.01, 1.5]], "train": [[0.01, 1.1]],
                      "decode": [[0.002, 0.9]]}
    assert lone["prefill"] == [[0.001, 1.2], [0.01, 1.0]]  # the input is not changed


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


def test_a_batch_costs_from_the_decision_that_placed_it_less_the_decision() -> None:
    got = ReplayRound({"prefill": 1.1}, 0.1, 4000.0, {"prefill": 20}, 0.4, held_us=5700.0)
    assert batch_call(got, 240.0) == 5460.0
    assert batch_call(replace(got, held_us=0.0), 240.0) == 4000.0  # an old replay
    assert batch_call(replace(got, held_us=4100.0), 240.0) == 4000.0


def test_a_workers_fixed_cost_is_charged_per_batch_less_its_per_job_cost() -> None:
    got = ReplayRound({"prefill": 1.1}, 0.1, 4000.0, {"prefill": 20}, 0.4, fixed_us=1300.0)
    assert worker_batch(got, 200.0) == 1100.0
    assert worker_batch(got, 1500.0) == 0.0  # never negative


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
    assert sharing_curve(fit.per_peer, 3) == [[1, 1.0], [2, 0.8], [3, round(1 / 1.5, 4)]]


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
    assert sharing_curve(0.0, 1) == [[1, 1.0], [2, 1.0]]
    empty = fit_worker_path([])  # no runs: nothing fitted, no fixed cost, no slowdown
    assert (empty.levels, empty.fixed_s, empty.per_peer, empty.counts) == ({}, 0.0, 0.0, {})
    assert fit_worker_path([], fixed_c=0.3).per_peer == 0.3  # a given slowdown is kept


def test_the_replay_offers_the_load_it_aims_at() -> None:
    profile = load_profile(SHIPPED_CPU)
    plan = replace(TINY, replay_jobs=400)
    jobs = replay_jobs(plan, profile)
    per_batch = profile.batch_call_s + profile.decision_s + profile.worker_job_s
    work = sum(costmodel.estimate(j, profile).seconds + per_batch for j in jobs)
    span = jobs[-1].submit_time - jobs[0].submit_time
    # Poisson arrivals: the span of n arrivals is n/rate give or take a few percent.
    assert work / (plan.sharing_workers * span) == pytest.approx(REPLAY_LOAD, rel=0.15)
    assert jobs == replay_jobs(plan, profile)  # seeded: the same jobs every time


def test_the_cost_model_prices_a_small_job_with_it(calibrated) -> None:
    profile = load_profile(calibrated[0])
    for kind in ("prefill", "decode", "train"):
        job = attention_job(kind=kind, heads=2, kv_heads=1, q_len=100 if kind != "decode" else 1,
                            kv_len=100, head_dim=16, dtype="fp32", causal=kind != "decode",
                            steps=3 if kind != "prefill" else 1)
        e = costmodel.estimate(job, profile)
        assert math.isfinite(e.seconds) and e.seconds > 0, kind
        assert e.backend in {"flash", "math"}
    # bf16 was not measured and has no alias: refused, not guessed.
    with pytest.raises(ValueError, match="bf16"):
        costmodel.estimate(attention_job(dtype="bf16"), profile)


def _simulated(profile: DeviceProfile, live: LiveCosts | None) -> tuple[float, float]:
    """(start, end) of one job alone on a one-device cluster timed by ``profile``."""
    spec = one_device(profile)
    device = spec.devices[0].id
    job = attention_job(id="a", heads=2, kv_heads=1, q_len=300, kv_len=300, head_dim=16,
                        dtype="fp32", causal=True)

    def place(view: Any) -> list[Any]:
        from scheduler.decisions import Place

        return [Place((j,), device, "the only device") for j in view.pending if view.free]

    sink = Recorder()
    simulate([job], spec, {profile.name: profile}, Scripted(place), "one", None,
             SimConfig(live=live, observer=sink, telemetry_interval=0))
    (record,) = sink.finished
    assert record.device == device and record.start is not None and record.end is not None
    return record.start, record.end


def test_a_simulated_job_takes_what_the_profile_predicts(calibrated) -> None:
    profile = load_profile(calibrated[0])
    job = attention_job(heads=2, kv_heads=1, q_len=300, kv_len=300, head_dim=16, dtype="fp32",
                        causal=True)
    predicted = costmodel.estimate(job, profile).seconds
    start, end = _simulated(profile, None)
    assert end - start == pytest.approx(predicted, rel=1e-9)
    # Modelling the live path, the job also pays the calibrated batch round trip,
    # decision, per-job setup and the worker's fixed cost per batch.
    assert profile.batch_call_s >= profile.actor_call_s > 0
    start, end = _simulated(profile, LiveCosts.from_profiles([profile]))
    assert end - start == pytest.approx(predicted + profile.batch_call_s + profile.decision_s
                                        + profile.worker_job_s + profile.worker_batch_s,
                                        rel=1e-9)


def test_every_measurement_ticks_the_progress_bar_once() -> None:
    """Without Ray, in-process only: the device grid, the per-job fit and decision time."""
    plan = replace(TINY, ray=False)
    ticks: list[str] = []
    data = build_profile(plan, "noray", ticks.append)
    assert len(ticks) == count_steps(plan) == len(plan.grid()) + 9
    assert len(set(ticks)) == len(ticks)
    profile = profile_from_dict(data)
    assert profile.actor_call_s == 0 and profile.node_sharing == ((1.0, 1.0),)
    assert data["worker_job_us"] == max(0.0, data["reference"]["worker_in_process"]
                                        ["per_job_us"])
    assert count_steps(TINY) == (count_steps(plan) + 4 + TINY.replay_rounds
                                 + SHARING_ROUNDS * TINY.sharing_workers)


def test_paired_difference_takes_the_median_of_back_to_back_pairs(monkeypatch) -> None:
    """On a clock only the timed calls move, one pair disturbed by 50 s: 2 s exactly."""
    now = [0.0]
    monkeypatch.setattr(calibrate.time, "perf_counter", lambda: now[0])
    calls = [0]

    def base() -> None:
        calls[0] += 1
        now[0] += 50.0 if calls[0] == 4 else 1.0

    def other() -> None:
        now[0] += 3.0

    assert calibrate.paired_difference(base, other, min_time=0.0, pairs=5) == 2.0
    assert calls[0] == 6  # a warm-up call, then five pairs


def test_the_mask_cost_fit_recovers_a_known_line(monkeypatch) -> None:
    """Masked minus plain per step = call + score × rows × heads × keys: two lengths give
    both terms back."""
    call, score = 40e-6, 2e-9
    lengths = iter(calibrate.MASK_LENGTHS)

    def difference(plain, masked, min_time, sync) -> float:
        keys = next(lengths) + (calibrate.MASK_STEPS - 1) / 2
        return calibrate.MASK_STEPS * (call + score * 2 * 2 * keys)

    monkeypatch.setattr(calibrate, "paired_difference", difference)
    got = calibrate.measure_decode_mask(TINY)
    assert got == pytest.approx((call, score))


def test_the_decode_step_fit_recovers_a_known_line(monkeypatch) -> None:
    """Per step = call + element × rows × heads × keys × head-dim, timed at two caches."""
    call, element = 30e-6, 0.8e-9
    rows, heads, _ = calibrate.STEP_LAYOUT["cpu"]
    lengths = iter(calibrate.STEP_LENGTHS["cpu"])

    def timed(fn, min_time, sync) -> float:
        keys = next(lengths) + (calibrate.MASK_STEPS - 1) / 2
        return calibrate.MASK_STEPS * (call + element * rows * heads * keys * TINY.head_dims[0])

    monkeypatch.setattr(calibrate, "seconds_per_call", timed)
    assert calibrate.measure_decode_step(TINY) == pytest.approx((call, element))


def test_fit_line_recovers_a_known_line() -> None:
    a, b = fit_line([(1, 5.0), (2, 7.0), (4, 11.0), (8, 19.0)])
    assert (a, b) == pytest.approx((3.0, 2.0))
    with pytest.raises(ValueError, match="two distinct"):
        fit_line([(4, 1.0), (4, 2.0)])


def test_the_per_job_fit_subtracts_the_attention_and_finds_the_slope(calibrated) -> None:
    """A runner that costs the predicted attention plus 2 ms per call and 1 ms per job."""
    import time

    profile = load_profile(calibrated[0])

    def run(batch_id: str, jobs: list[Any], predicted: float, flops: float) -> BatchResult:
        time.sleep(predicted + 0.002 + 0.001 * len(jobs))
        return BatchResult(batch_id, 0.0, "flash", 0.0)

    fit = fit_worker_jobs(run, replace(TINY, worker_batches=(1, 4, 16), worker_repeats=3),
                          profile)
    # Oversleeping adds to every call alike: it moves the intercept, not the slope.
    assert fit["per_job_us"] == pytest.approx(1000, rel=0.15)
    assert fit["per_call_us"] >= 1500


def test_a_failed_worker_batch_stops_the_calibration(calibrated) -> None:
    profile = load_profile(calibrated[0])

    def run(batch_id: str, jobs: list[Any], predicted: float, flops: float) -> BatchResult:
        return BatchResult(batch_id, 0.0, "", 0.0, "out of memory: no room")

    with pytest.raises(RuntimeError, match="out of memory"):
        fit_worker_jobs(run, TINY, profile)


@pytest.mark.parametrize(("args", "field"), [
    (["--name", "Not A Name"], "--name"),
    (["--threads", "0"], "--threads"),
    (["--device", "tpu"], "--device"),
])
def test_bad_options_fail_in_one_line_before_measuring(cli, tmp_path, args, field) -> None:
    code, _, err = cli("calibrate", "-o", tmp_path / "p.json", *args)
    assert code == 2
    assert field in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "p.json").exists()


def test_an_unwritable_output_is_refused_before_measuring(cli, tmp_path) -> None:
    code, _, err = cli("calibrate", "-o", tmp_path / "missing" / "p.json")
    assert code == 2 and "--output" in err and "does not exist" in err
    code, _, err = cli("calibrate", "-o", tmp_path)
    assert code == 2 and "is a folder" in err


def test_cuda_without_a_gpu_is_bad_input(cli, tmp_path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, _, err = cli("calibrate", "--device", "cuda", "-o", tmp_path / "p.json")
    assert code == 2
    assert err.strip().splitlines() == [err.strip()] and "--device" in err and "CUDA" in err


def test_python_m_workers_calibrate_is_the_same_command(capsys, tmp_path) -> None:
    """``python -m workers.calibrate ARGS`` calls this ``main`` with ``ARGS``."""
    assert calibrate.main(["--name", "BAD", "-o", str(tmp_path / "p.json")]) == 2
    assert capsys.readouterr().err.strip() == (
        "attnsched: error: --name: expected lowercase letters, digits, '_', '.', '-' "
        "(e.g. cpu, h100-sxm), got 'BAD'")


def test_plans_are_checked() -> None:
    with pytest.raises(ValueError, match="two batch sizes"):
        Plan(worker_batches=(4, 4))
    with pytest.raises(ValueError, match="grid axis"):
        Plan(lengths=())
    assert DType(calibrate.quick_plan("cpu").reference_dtype) is DType.FP32
