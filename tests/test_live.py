"""Live runs on a real local Ray (loopback only), CPU compute, emulated GPU slots."""

from __future__ import annotations

import itertools
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
    info = json.loads((out / "run.json").read_text())
    assert set(telemetry["device"].to_pylist()) == set(info["workers"])
    # The one loop ran it: decisions timed as in the simulator, and the wall clock's lag
    # (how far behind real time arrivals and ticks were handled) reported, not absorbed.
    assert info["decide_calls"] > 0 and info["decide_ms_p99"] is not None
    assert 0.0 <= info["lag_mean_s"] <= info["lag_max_s"]
    assert (out / "report.md").exists() and (out / "plots" / "jct_cdf.png").exists()
    assert f"ran live in {info['wall_seconds']:.1f}s" in text  # the replay, as in compare


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


def test_multi_node_cluster_places_on_every_node_one_batch_at_a_time(tmp_path) -> None:
    """Head + 2 raylets with emulated GPUs (ray.cluster_utils, all on 127.0.0.1)."""
    import ray
    from ray.cluster_utils import Cluster

    from policies.base import load_policy
    from scheduler.presets import get_preset
    from scheduler.traces.synth import SynthSpec, generate
    from workers.executor import LiveConfig, run_live

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, num_gpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        jobs = generate(SynthSpec(jobs=40, seed=7, rate=40.0, mix={"prefill": 1.0}),
                        get_preset("tiny", token_scale=0.5))
        out = tmp_path / "multi"
        result = run_live(jobs, load_policy("greedy"), "greedy", out,
                          LiveConfig(address=cluster.address, speed=2.0,
                                     telemetry_interval=0.5))
        assert result.exit_code == 0
        assert result.summary["jobs_completed"] == 40
        rows = pq.read_table(out / "jobs.parquet").to_pylist()
        nodes = {r["node"] for r in rows}
        assert len(nodes) == 3, nodes  # the head's CPU worker and both GPU nodes
        by_device: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            by_device.setdefault(r["device"], []).append((r["start"], r["end"]))
        for spans in by_device.values():
            batches = sorted(set(spans))  # jobs packed in one batch share start and end
            for (_, end), (start, _) in itertools.pairwise(batches):
                assert start >= end - 1e-9, "two batches overlapped on one device"
    finally:
        ray.shutdown()
        cluster.shutdown()
