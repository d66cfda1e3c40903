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
from scheduler.calibration.plan import SHARING_ROUNDS, Plan, count_steps
from scheduler.calibration.replay_fit import REPLAY_LOAD, sharing_curve
from scheduler.cluster import ClusterSpec
from scheduler.events import Failure, FailureCode
from scheduler.jobs import DType
from scheduler.profile_json import counts_json
from scheduler.profiles import DeviceProfile, load_profile, profile_from_dict
from scheduler.sim.executor import LiveCosts
from scheduler.sim.runner import SimConfig, simulate
from tests.builders import attention_job
from tests.simkit import Recorder, Scripted
from workers import measure
from workers.calibrate import build_profile, quick_plan
from workers.calibrate_live import replay_jobs
from workers.measure_decision import local_cluster
from workers.measure_live import fit_worker_jobs
from workers.worker import BatchResult

SHIPPED_CPU = Path(__file__).resolve().parents[1] / "scheduler" / "profile_data" / "cpu.json"
TINY = Plan(lengths=(64, 256), head_dims=(16, 32), dtypes=("fp32",), causal=(False, True),
            point_flops=2.0**21, min_time=0.01, batch_sizes=(1, 4), packing_lengths=(64,),
            worker_batches=(1, 4, 8), worker_repeats=3, sharing_workers=2,
            sharing_batch_s=0.01, sharing_batches=3, decision_devices=2, decision_queue=8,
            decision_rounds=10, replay_jobs=80, replay_rounds=2)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The CLI's calibration (what ``--quick`` runs once its plan is chosen), on the tiny
    plan."""
    from scheduler.cli.calibrate_cmd import write_calibration

    out = tmp_path_factory.mktemp("calibrate") / "cpu.json"
    written = write_calibration(TINY, "tinycpu", out, "--quick, ")
    data = json.loads(out.read_text())
    assert data == written and data["source"].endswith(" s") and "--quick, " in data["source"]
    return out, data


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
    assert profile.node_sharing == sharing_curve(replay["slowdown_per_busy_peer"], 2)
    assert data["node_sharing"] == counts_json(profile.node_sharing)  # [[1, 1.0], [2, ...]]
    assert len(data["reference"]["node_sharing_looped"]) == 2
    # a batch's round trip is what the replay's batches took beyond their workers' timing
    assert replay["round_trip_beyond_worker_us"] > 0
    # ... and from the decision that placed it: a job's service counts from there
    assert replay["held_beyond_worker_us"] >= replay["round_trip_beyond_worker_us"]
    assert data["batch_call_us"] == pytest.approx(max(data["actor_call_us"], replay[
        "round_trip_beyond_worker_us"], replay["held_beyond_worker_us"] - data["decision_us"]),
        abs=1e-3)
    assert data["reference"]["batch_call_fit_us"] > 0


def test_the_replay_offers_the_load_it_aims_at() -> None:
    profile = load_profile(SHIPPED_CPU)
    plan = replace(TINY, replay_jobs=400)
    jobs = replay_jobs(plan.replay, profile)
    per_batch = profile.batch_call_s + profile.decision_s + profile.worker_job_s
    work = sum(costmodel.estimate(j, profile).seconds + per_batch for j in jobs)
    span = jobs[-1].submit_time - jobs[0].submit_time
    # Poisson arrivals: the span of n arrivals is n/rate give or take a few percent.
    assert work / (plan.sharing_workers * span) == pytest.approx(REPLAY_LOAD, rel=0.15)
    assert jobs == replay_jobs(plan.replay, profile)  # seeded: the same jobs every time


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
    calibrated = build_profile(plan, "noray", ticks.append)
    assert len(ticks) == count_steps(plan) == len(plan.grid()) + 9
    assert len(set(ticks)) == len(ticks)
    data = calibrated.to_json()
    profile = profile_from_dict(data)  # the file reads back as the profile built
    assert profile == calibrated.profile
    assert profile.actor_call_s == 0 and profile.node_sharing == ((1.0, 1.0),)
    # what was not measured is left out, not written as zeros
    assert not {"actor_call_us", "task_us", "batch_call_us", "telemetry_us", "node_sharing",
                "worker_batch_us"} & set(data)
    assert data["worker_job_us"] == max(0.0, data["reference"]["worker_in_process"]
                                        ["per_job_us"])
    assert count_steps(TINY) == (count_steps(plan) + 4 + TINY.replay_rounds
                                 + SHARING_ROUNDS * TINY.sharing_workers)


def test_paired_difference_takes_the_median_of_back_to_back_pairs() -> None:
    """On a clock only the timed calls move, one pair disturbed by 50 s: 2 s exactly."""
    now = [0.0]
    calls = [0]

    def base() -> None:
        calls[0] += 1
        now[0] += 50.0 if calls[0] == 4 else 1.0

    def other() -> None:
        now[0] += 3.0

    assert measure.paired_difference(base, other, min_time=0.0, pairs=5,
                                     clock=lambda: now[0]) == 2.0
    assert calls[0] == 6  # a warm-up call, then five pairs


def test_the_decode_timings_are_what_the_fits_expect() -> None:
    """The measurements time the layouts and lengths the line fits count elements by."""
    step = measure.measure_decode_step(TINY)
    rows, heads, _ = measure.STEP_LAYOUT["cpu"]
    assert (step.rows, step.heads, step.head_dim, step.steps) == (
        rows, heads, TINY.head_dims[0], measure.MASK_STEPS)
    assert [n for n, _ in step.seconds] == list(measure.STEP_LENGTHS["cpu"])
    assert all(s > 0 for _, s in step.seconds)
    mask = measure.measure_decode_mask(TINY)
    assert (mask.rows, mask.heads) == measure.MASK_LAYOUT[:2]
    assert [n for n, _ in mask.seconds] == list(measure.MASK_LENGTHS)


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
    assert fit.per_job_us == pytest.approx(1000, rel=0.15)
    assert fit.per_call_us >= 1500
    assert [n for n, _ in fit.residual_us] == [1, 4, 16]


def test_a_failed_worker_batch_stops_the_calibration(calibrated) -> None:
    profile = load_profile(calibrated[0])

    def run(batch_id: str, jobs: list[Any], predicted: float, flops: float) -> BatchResult:
        return BatchResult(batch_id, 0.0, "", 0.0,
                           Failure(FailureCode.OUT_OF_MEMORY, "out of memory: no room"))

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


def test_plans_are_checked() -> None:
    with pytest.raises(ValueError, match="two batch sizes"):
        Plan(worker_batches=(4, 4))
    with pytest.raises(ValueError, match="grid axis"):
        Plan(lengths=())
    assert DType(quick_plan("cpu").reference_dtype) is DType.FP32
    assert quick_plan("cpu").replay.rounds == 1 and TINY.replay.workers == TINY.sharing_workers
