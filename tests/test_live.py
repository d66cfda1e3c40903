"""Live runs on a real local Ray (loopback only), CPU compute, emulated GPU slots."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from tests.test_sim import DESIGN_SUMMARY_KEYS, JOB_COLUMNS


@pytest.fixture
def ray_shutdown():
    yield
    import ray

    ray.shutdown()


def test_live_run_completes_every_job_with_the_simulators_outputs(cli, tmp_path,
                                                                  ray_shutdown) -> None:
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "60", "--seed", "2", "--rate", "30",
               "--model", "tiny", "--mix", "prefill=0.5,decode=0.5")[0] == 0
    out = tmp_path / "live"
    code, text, err = cli("run", trace, "--policy", "adaptive", "--emulate-gpus", "2",
                          "--speed", "4", "--telemetry-interval", "0.25", "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "live"
    assert set(summary) >= DESIGN_SUMMARY_KEYS
    assert summary["jobs_completed"] == 60
    jobs = pq.read_table(out / "jobs.parquet")
    assert set(jobs.column_names) >= JOB_COLUMNS
    assert set(jobs["status"].to_pylist()) == {"done"}
    telemetry = pq.read_table(out / "telemetry.parquet")
    workers = json.loads((out / "run.json").read_text())["workers"]
    assert set(telemetry["device"].to_pylist()) == set(workers)
    assert (out / "report.md").exists() and (out / "plots" / "jct_cdf.png").exists()
    assert "ran live" in text


def test_adaptive_moves_work_off_a_slow_worker_static_does_not(cli, tmp_path,
                                                               ray_shutdown) -> None:
    """The documented test knob ``--slow DEVICE=FACTOR`` makes one worker 8x slower."""
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "80", "--seed", "5", "--rate", "40",
               "--model", "tiny", "--mix", "prefill=1")[0] == 0
    share = {}
    for policy in ("static", "adaptive"):
        out = tmp_path / policy
        code, _, err = cli("run", trace, "--policy", policy, "--emulate-gpus", "2",
                           "--speed", "2", "--telemetry-interval", "0.2", "--slow",
                           "head/gpu0=8", "--out", out)
        assert code == 0, err
        devices = pq.read_table(out / "jobs.parquet")["device"].to_pylist()
        assert len(devices) == 80
        share[policy] = devices.count("head/gpu0") / len(devices)
        if policy == "adaptive":
            reasons = [json.loads(x).get("reason", "") for x in (out / "decisions.jsonl").open()]
            speeds = [float(r.split("measured speed ")[1]) for r in reasons
                      if "measured speed" in r]
            assert min(speeds) < 0.8  # the policy saw the slow worker in telemetry
    assert share["static"] > 0.35  # fixed assignment keeps feeding the slow worker
    assert share["adaptive"] < share["static"] - 0.1
