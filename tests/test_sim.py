"""The simulator end to end: outputs, determinism, faults and rebalancing."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from policies.base import load_policy
from scheduler.cluster import make_cluster
from scheduler.presets import get_preset
from scheduler.sim.runner import Fault
from scheduler.traces.synth import SynthSpec, generate
from tests.simkit import run

DESIGN_SUMMARY_KEYS = {"policy", "mode", "jobs_total", "jobs_completed", "jobs_failed",
                       "jct_mean", "jct_p50", "jct_p99", "queue_delay_mean", "slowdown_mean",
                       "makespan", "throughput_jobs_per_s", "achieved_tflops",
                       "device_util_mean", "jain_fairness", "slo_attainment"}
JOB_COLUMNS = {"id", "tenant", "kind", "submit", "start", "end", "jct", "queue_delay", "device",
               "node", "batch_size", "attempts", "status", "flops"}


def trace(n=300, rate=400.0, seed=1, model="llama3-8b"):
    return list(generate(SynthSpec(jobs=n, seed=seed, rate=rate), get_preset(model)))


@pytest.mark.parametrize("policy", ["static", "greedy", "adaptive"])
def test_outputs_have_the_design_schema(tmp_path, policy) -> None:
    result = run(trace(), load_policy(policy), out=tmp_path)
    assert result.exit_code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) >= DESIGN_SUMMARY_KEYS
    assert summary["jobs_completed"] == 300
    jobs = pq.read_table(tmp_path / "jobs.parquet")
    assert set(jobs.column_names) >= JOB_COLUMNS
    assert sorted(jobs["id"].to_pylist()) == sorted(j.id for j in trace())
    telemetry = pq.read_table(tmp_path / "telemetry.parquet")
    assert set(telemetry["device"].to_pylist()) == {"gpu-0/gpu0", "gpu-0/gpu1", "cpu-0/cpu"}
    rows = [json.loads(line) for line in (tmp_path / "decisions.jsonl").open()]
    assert all(r["policy"] == policy for r in rows)
    assert (tmp_path / "report.md").exists() is False  # reports come from the CLI layer


def test_same_inputs_give_byte_identical_outputs(tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    run(trace(), load_policy("adaptive"), out=a, seed=3)
    run(trace(), load_policy("adaptive"), out=b, seed=3)
    for name in ("summary.json", "jobs.parquet", "telemetry.parquet", "decisions.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("kind", ["device", "node"])
def test_injected_failures_requeue_and_complete_elsewhere(tmp_path, kind) -> None:
    cluster = make_cluster(gpu_nodes=2, gpus_per_node=2)
    target = "gpu-0/gpu0" if kind == "device" else "gpu-0"
    jobs = trace(n=400, rate=2000.0)
    result = run(jobs, load_policy("greedy"), cluster, out=tmp_path,
                 faults=(Fault(kind, target, 0.05),))
    assert result.summary["jobs_completed"] == 400
    table = pq.read_table(tmp_path / "jobs.parquet").to_pylist()
    retried = [r for r in table if r["attempts"] > 1]
    assert retried, "the failure hit no running job"
    lost = {"gpu-0/gpu0"} if kind == "device" else {"gpu-0/gpu0", "gpu-0/gpu1"}
    assert all(r["device"] not in lost for r in retried)
    assert all(r["end"] <= 0.05 or r["device"] not in lost for r in table)


def test_adaptive_routes_around_a_slow_device_static_does_not() -> None:
    cluster = make_cluster(gpu_nodes=1, gpus_per_node=4)
    jobs = trace(n=600, rate=3000.0)
    slow = {"gpu-0/gpu0": 8.0}
    counts = {}
    for name in ("static", "adaptive"):
        result = run(jobs, load_policy(name), cluster, slow=slow, telemetry_interval=0.01)
        counts[name] = result
    assert counts["adaptive"].summary["jct_mean"] < counts["static"].summary["jct_mean"] / 2


def test_policy_left_jobs_unplaced_is_reported_not_hung() -> None:
    from tests.simkit import Scripted

    result = run(trace(n=5), Scripted(lambda v: []))
    assert result.exit_code == 1
    assert "left 5 jobs unplaced" in (result.message or "")
    assert result.summary["jobs_failed"] == 5


def test_a_run_that_stops_early_exits_1_from_the_cli(cli, tmp_path, repo) -> None:
    plugin = tmp_path / "lazy.py"
    plugin.write_text("class Lazy:\n    name = 'lazy'\n    def decide(self, view):\n"
                      "        return []\n")
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "3", "--model", "llama3-8b")[0] == 0
    code, _, err = cli("simulate", trace, "--policy", f"{plugin}:Lazy", "--cluster",
                       repo / "cluster.yaml", "--out", tmp_path / "r")
    assert code == 1
    assert "left 3 jobs unplaced" in err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["jobs_failed"] == 3


def test_without_telemetry_an_idle_policy_still_ends() -> None:
    from tests.simkit import Scripted

    result = run(trace(n=2), Scripted(lambda v: []), telemetry_interval=0)
    assert result.exit_code == 1
    assert result.summary["jobs_failed"] == 2


def test_greedy_never_picks_a_device_that_cannot_run_the_job(cli, shared_trace, tmp_path) -> None:
    """The tiny preset's fp32 jobs on cluster.yaml (H100s, whose profile has no fp32, and
    one CPU) at load 0.9: while the CPU is busy, greedy must wait for it, not hand the
    queue to a GPU that cannot time it (it did, raising, until the run stopped)."""
    trace = shared_trace("azure_llm_2023_conv.csv")
    out = tmp_path / "g"
    code, _, err = cli("simulate", trace, "--model", "tiny", "--policy", "greedy", "--limit",
                       "600", "--load", "0.9", "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["jobs_completed"] == 600 and summary["decisions"]["error"] == 0


def test_summary_tallies_why_jobs_failed_most_common_first(tmp_path) -> None:
    """Issue 20 (point 12): the run's summary says how many jobs failed and why."""
    from scheduler.metrics import RunOutputs
    from scheduler.state import JobRecord, JobState

    jobs = trace(n=40)
    outputs = RunOutputs(tmp_path, {})
    long_reason = "gave up: " + "x" * 300
    reasons = (["device gpu0 failed"] * 5 + ["b"] * 3 + ["a"] * 3 + [long_reason] * 2
               + [None] * 2 + ["rare 1", "rare 2"])
    for job, reason in zip(jobs, reasons, strict=False):
        outputs.job_finished(JobRecord(job, state=JobState.FAILED, end=1.0, reason=reason))
    outputs.job_finished(JobRecord(jobs[-1], state=JobState.DONE, start=0.5, end=2.0,
                                   solo_seconds=1.0))
    summary = outputs.summary(policy="p", mode="sim")
    clipped = long_reason[:99] + "…"
    assert summary["jobs_failed"] == len(reasons)
    assert list(summary["failed_reasons"].items()) == [
        ("device gpu0 failed", 5), ("a", 3), ("b", 3), ("(no reason given)", 2), (clipped, 2)]
    assert len(clipped) == 100
    outputs.close(summary, {})
    written = json.loads((tmp_path / "summary.json").read_text())
    assert list(written["failed_reasons"]) == list(summary["failed_reasons"])  # order kept
    assert list(written) == sorted(written)  # the rest as before: sorted keys


def test_a_run_without_failures_tallies_none(tmp_path) -> None:
    result = run(trace(n=50), load_policy("fifo"), out=tmp_path)
    assert result.summary["jobs_failed"] == 0 and result.summary["failed_reasons"] == {}
    assert json.loads((tmp_path / "summary.json").read_text())["failed_reasons"] == {}


def test_a_run_whose_devices_all_fail_names_the_reason(tmp_path) -> None:
    faults = (Fault("device", "gpu-0/gpu0", 0.0), Fault("device", "gpu-0/gpu1", 0.0),
              Fault("device", "cpu-0/cpu", 0.0))
    result = run(trace(n=30), load_policy("fifo"), out=tmp_path, faults=faults)
    tally = result.summary["failed_reasons"]
    assert sum(tally.values()) == result.summary["jobs_failed"] == 30
    assert len(tally) <= 5 and all(len(r) <= 100 for r in tally)


def test_a_failing_policy_hands_over_to_the_fallback_in_the_simulator_too() -> None:
    """The fallback lives in the one run loop: the simulator has it as live runs do."""
    from tests.simkit import Scripted

    def broken(view):
        raise RuntimeError("bug")

    jobs = trace(n=20)
    stopped = run(jobs, Scripted(broken), max_policy_failures=3)
    assert stopped.exit_code == 1 and "failed 3 times in a row" in (stopped.message or "")
    assert stopped.summary["jobs_failed"] == 20  # every job accounted for, none lost
    rescued = run(jobs, Scripted(broken), max_policy_failures=3,
                  fallback=(load_policy("greedy"), "greedy"))
    assert rescued.exit_code == 0 and rescued.summary["jobs_completed"] == 20
    assert "fell back to 'greedy'" in (rescued.run_info["policy_fallback"] or "")
