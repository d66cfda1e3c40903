"""No job lost or duplicated when workers, nodes or the controller die (real Ray).

Every test replays a small tiny-preset trace live and, mid-run, breaks
something for real: ``ray.kill`` of a worker actor, SIGKILL of a worker's
process, removal of a raylet from a ``ray.cluster_utils.Cluster``, or SIGKILL
of the driver followed by ``--resume``. Each then checks that the outputs hold
every job of the trace exactly once, all done, and that the journal agrees.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from scheduler.jobs import Job
from scheduler.journal import FILE, read_results, running_transitions
from tests.conftest import REPO


def tiny_jobs(n: int, seed: int, rate: float) -> list[Job]:
    from scheduler.presets import get_preset
    from scheduler.traces.synth import SynthSpec, generate

    return list(generate(SynthSpec(jobs=n, seed=seed, rate=rate,
                                   mix={"prefill": 0.6, "decode": 0.4}),
                         get_preset("tiny", token_scale=0.5)))


def assert_exactly_once(out: Path, jobs: list[Job]) -> list[dict[str, Any]]:
    rows = pq.read_table(out / "jobs.parquet").to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "a job was reported twice"
    assert set(ids) == {j.id for j in jobs}, "a job was lost"
    assert {r["status"] for r in rows} == {"done"}, [r["reason"] for r in rows
                                                     if r["status"] != "done"][:3]
    assert set(read_results(out / FILE)) == set(ids)
    return rows


@pytest.fixture
def local_ray() -> Iterator[None]:
    yield
    import ray

    ray.shutdown()


def breaker(after: int, action: Callable[[], None]) -> tuple[Callable[[Any], None], list[float]]:
    """A progress callback that runs ``action`` once ``after`` jobs are done; records when."""
    when: list[float] = []

    def progress(p: Any) -> None:
        if not when and p.done >= after:
            when.append(p.clock)
            action()

    return progress, when


@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_a_killed_worker_is_restarted_and_every_job_completes_once(tmp_path, local_ray,
                                                                   how) -> None:
    import ray

    from policies.base import load_policy
    from workers.executor import LiveConfig, run_live
    from workers.fleet import actor_name

    jobs = tiny_jobs(150, seed=11, rate=15.0)

    def kill() -> None:
        worker = ray.get_actor(actor_name("head/gpu0"))
        if how == "ray.kill":
            ray.kill(worker)
        else:
            os.kill(ray.get(worker.pid.remote()), signal.SIGKILL)

    progress, when = breaker(20, kill)
    out = tmp_path / "run"
    config = LiveConfig(emulate_gpus=2, speed=1.0, telemetry_interval=0.2, progress=progress)
    result = run_live(jobs, load_policy("greedy"), "greedy", out, config)
    assert when, "the run ended before the worker was killed"
    assert result.exit_code == 0, result.message
    rows = assert_exactly_once(out, jobs)
    info = json.loads((out / "run.json").read_text())
    assert info["worker_deaths"] >= 1 and info["worker_restarts"] >= 1
    # The device came back: the restarted worker ran jobs after the kill.
    assert any(r["device"] == "head/gpu0" and r["start"] > when[0] for r in rows)
    assert max(r["attempts"] for r in rows) <= 2  # only the killed batch ran twice
    decisions = [json.loads(line) for line in (out / "decisions.jsonl").open()]
    assert any(d["outcome"] == "applied" for d in decisions)


def test_losing_a_node_moves_its_work_to_the_others(tmp_path) -> None:
    """Head + 2 GPU raylets; one raylet is removed mid-run."""
    import ray
    from ray.cluster_utils import Cluster

    from policies.base import load_policy
    from workers.executor import LiveConfig, run_live

    fast_detection = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                      "health_check_initial_delay_ms": 0}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "_system_config": fast_detection})
    try:
        victims = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        jobs = tiny_jobs(120, seed=3, rate=20.0)
        victim_id = victims[0].node_id
        progress, when = breaker(25, lambda: cluster.remove_node(victims[0],
                                                                 allow_graceful=False))
        out = tmp_path / "nodes"
        result = run_live(jobs, load_policy("greedy"), "greedy", out,
                          LiveConfig(address=cluster.address, speed=2.0,
                                     telemetry_interval=0.3, progress=progress))
        assert when, "the run ended before the node was removed"
        assert result.exit_code == 0, result.message
        rows = assert_exactly_once(out, jobs)
        spec_nodes = {n["NodeID"]: n for n in ray.nodes()}
        assert spec_nodes[victim_id]["Alive"] is False
        info = json.loads((out / "run.json").read_text())
        assert info["worker_deaths"] >= 1 and len(info["nodes_lost"]) == 1
        decisions = [json.loads(line) for line in (out / "decisions.jsonl").open()]
        down = min(d["t"] for d in decisions if d["action"] == "device_down")
        after = [r for r in rows if r["start"] > down]
        assert after, "nothing ran after the node was lost"
        assert not [r for r in after if r["node"] in info["nodes_lost"]], \
            "the lost node was given work after the controller knew it was gone"
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_killed_controller_resumes_from_its_journal(cli, tmp_path) -> None:
    """SIGKILL the driver of ``attnsched run``, then run the same command with --resume."""
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "240", "--seed", "4", "--rate", "30",
               "--model", "tiny", "--mix", "prefill=0.6,decode=0.4")[0] == 0
    out = tmp_path / "run"
    command = [sys.executable, "-m", "scheduler.cli", "run", str(trace), "--policy", "greedy",
               "--emulate-gpus", "2", "--speed", "2", "--telemetry-interval", "0.3"]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    driver = subprocess.Popen([*command, "--out", str(out)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)
            if (out / FILE).exists() and len(read_results(out / FILE)) >= 60:
                break
        assert driver.poll() is None, "the run ended before it could be killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    before = read_results(out / FILE)
    assert 60 <= len(before) < 240
    code, _, err = cli(*command[3:], "--resume", out)
    assert code == 0, err
    jobs = [json.loads(line) for line in trace.open()]
    rows = {r["id"]: r for r in pq.read_table(out / "jobs.parquet").to_pylist()}
    assert len(rows) == 240 and {r["status"] for r in rows.values()} == {"done"}
    after = read_results(out / FILE)
    assert set(after) == {j["id"] for j in jobs}
    for job_id, (_, attempts, session) in before.items():
        assert after[job_id][2] == session == 1  # its outcome is the first session's
        assert rows[job_id]["attempts"] == attempts
    rerun = {job for job, _, session in running_transitions(out / FILE) if session == 2}
    assert not rerun & set(before), "a job finished before the crash ran again"
    assert rerun, "the resumed run did not run anything"
    info = json.loads((out / "run.json").read_text())
    assert info["jobs_restored"] == len(before) and info["resumed_from_session"] == 1
    assert (out / "session-1").is_dir()
    # The killed session's decisions, written as they were made, are kept aside.
    kept = (out / "session-1" / "decisions.jsonl.partial").read_text().splitlines()
    assert kept and all(json.loads(line)["t"] >= 0 for line in kept[:-1])


# -- policy faults ------------------------------------------------------------------------


def test_a_hanging_decide_counts_as_a_failure_and_loses_nothing() -> None:
    from scheduler.controller import PolicyFailure
    from tests.builders import attention_job
    from tests.simkit import Scripted, controller

    release = __import__("threading").Event()

    def hang(view: Any) -> list[Any]:
        release.wait(30)
        return []

    ctl, sink = controller(Scripted(hang), max_policy_failures=2, decide_timeout=0.2)
    try:
        ctl.submit(attention_job(id="j0", submit_time=0.0), 0.0)
        started = time.monotonic()
        ctl.decide(0.0, "arrival")
        assert time.monotonic() - started < 10  # the call was abandoned, not awaited
        assert sink.rows[-1]["outcome"] == "error" and "ran past 0.2 s" in sink.rows[-1]["why"]
        assert list(ctl.pending) == ["j0"]
        with pytest.raises(PolicyFailure, match="2 times in a row"):
            ctl.decide(1.0, "telemetry")
    finally:
        release.set()


HANGING_PLUGIN = '''
import time


class Hangs:
    name = "hangs"

    def decide(self, view):
        time.sleep(60)
        return []
'''


def test_a_live_run_falls_back_to_greedy_when_its_policy_hangs(cli, tmp_path) -> None:
    plugin = tmp_path / "hangs.py"
    plugin.write_text(HANGING_PLUGIN)
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "40", "--seed", "8", "--rate", "20",
               "--model", "tiny")[0] == 0
    out = tmp_path / "run"
    try:
        code, _, err = cli("run", trace, "--policy", f"{plugin}:Hangs", "--emulate-gpus", "2",
                           "--speed", "4", "--decide-timeout", "0.1", "--fallback-policy",
                           "greedy", "--out", out)
    finally:
        import ray

        ray.shutdown()
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["jobs_completed"] == 40
    info = json.loads((out / "run.json").read_text())
    assert "fell back to 'greedy'" in info["policy_fallback"]
    lines = [json.loads(line) for line in (out / "decisions.jsonl").open()]
    rows = [r for r in lines for _ in range(r.get("count", 1))]  # alike records share a line
    assert [r["outcome"] for r in rows[:10]] == ["error"] * 10
    assert rows[10]["action"] == "fallback"
    assert {r["policy"] for r in rows if r["outcome"] == "applied"} == {"greedy"}


# -- the journal itself -------------------------------------------------------------------


def test_an_outcome_is_journalled_once_and_a_second_is_counted(tmp_path) -> None:
    from scheduler.journal import Journal, RunIdentity
    from scheduler.state import JobRecord, JobState
    from tests.builders import attention_job

    identity = RunIdentity(policy="p", trace="t", trace_digest="d")
    journal = Journal(tmp_path / FILE, identity)
    record = JobRecord(attention_job(id="a", submit_time=0.0), state=JobState.RUNNING,
                       attempts=1, batch="b1", device="d")
    journal.transition(0.5, record)
    record.state, record.end = JobState.DONE, 1.0
    assert journal.finished(1.0, record)
    assert not journal.finished(1.2, record)
    assert journal.duplicates == 1
    pending = JobRecord(attention_job(id="b", submit_time=0.1), state=JobState.RUNNING,
                        attempts=2, batch="b2", device="d")
    journal.transition(1.5, pending)
    journal.close()
    resumed = Journal(tmp_path / FILE, identity, resume=True).resumed
    assert set(resumed.finished) == {"a"} and resumed.finished["a"].end == 1.0
    assert resumed.finished["a"].job == record.job
    assert resumed.attempts == {"b": 2}
    assert resumed.clock == 1.5 and resumed.session == 1


def test_resume_refuses_another_runs_folder_with_exit_2(cli, tmp_path) -> None:
    from scheduler.journal import Journal, RunIdentity

    Journal(tmp_path / FILE, RunIdentity(policy="greedy", trace="a.jsonl",
                                         trace_digest="0123456789abcdef0123")).close()
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "5", "--model", "tiny")[0] == 0
    code, _, err = cli("run", trace, "--policy", "greedy", "--resume", tmp_path)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "a different trace (content changed: digest 0123456789abcdef not" in err
    code, _, err = cli("run", trace, "--resume", tmp_path / "nothing")
    assert code == 2 and "no journal here" in err


# -- safe defaults ------------------------------------------------------------------------


def test_a_local_run_binds_loopback_keeps_token_auth_and_starts_no_dashboard(local_ray) -> None:
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    from workers.executor import LiveConfig, start_ray

    start_ray(LiveConfig(num_cpus=1))
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    assert is_token_auth_enabled()
    assert not ray._private.worker.global_worker.node.address_info.get("webui_url")


def test_the_cluster_launcher_config_keeps_the_dashboard_on_loopback() -> None:
    import yaml

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    everything = json.dumps(config)
    assert "RAY_AUTH_MODE=disabled" not in everything and "0.0.0.0" not in everything


# -- out of memory ------------------------------------------------------------------------


def test_jobs_no_device_can_hold_fail_with_their_reason_and_the_workers_survive(
        tmp_path, local_ray) -> None:
    """Every worker's budget is one byte (devices far smaller than the spec says): each
    batch comes back out of memory, the controller learns, and once no device can hold
    a job it fails with that reason; nothing is lost and the workers stay up."""
    import ray

    from policies.base import load_policy
    from workers.executor import LiveConfig, close_session, open_session, run_live

    config = LiveConfig(emulate_gpus=2, speed=4.0, telemetry_interval=0.25,
                        worker_budget={"head/gpu0": 1, "head/gpu1": 1})
    session = open_session(config)
    try:
        jobs = tiny_jobs(12, seed=1, rate=20.0)
        result = run_live(jobs, load_policy("adaptive"), "adaptive", tmp_path / "oom", config,
                          session=session)
        assert result.exit_code == 0, result.message
        rows = pq.read_table(tmp_path / "oom" / "jobs.parquet").to_pylist()
        assert sorted(r["id"] for r in rows) == sorted(j.id for j in jobs)
        assert all(r["status"] == "failed" and r["reason"].startswith("fits no device that is up")
                   for r in rows), [r["reason"] for r in rows]
        assert any(r["attempts"] >= 1 for r in rows)  # it was tried, then given up on
        assert ray.get([w.ping.remote() for w in session.workers.values()], timeout=30)
    finally:
        close_session(session)


def test_a_reused_session_whose_worker_died_between_runs_still_runs(tmp_path, local_ray) -> None:
    """compare --mode live reuses workers across policies: one dead since the last run is
    restarted, not a crash."""
    import ray

    from policies.base import load_policy
    from workers.executor import LiveConfig, close_session, open_session, run_live

    config = LiveConfig(emulate_gpus=2, speed=4.0, telemetry_interval=0.25)
    session = open_session(config)
    try:
        ray.kill(session.workers["head/gpu0"])
        jobs = tiny_jobs(60, seed=5, rate=20.0)
        result = run_live(jobs, load_policy("greedy"), "greedy", tmp_path / "r", config,
                          session=session)
        assert result.exit_code == 0, result.message
        assert_exactly_once(tmp_path / "r", jobs)
        info = json.loads((tmp_path / "r" / "run.json").read_text())
        assert info["worker_restarts"] == 1
        assert ray.get(session.workers["head/gpu0"].ping.remote(), timeout=30) == "head/gpu0"
    finally:
        close_session(session)


def test_a_fresh_run_over_a_finished_runs_journal_says_it_replaces_it(tmp_path,
                                                                       caplog) -> None:
    from scheduler.journal import Journal, RunIdentity
    from scheduler.state import JobRecord, JobState
    from tests.builders import attention_job

    journal = Journal(tmp_path / FILE, RunIdentity(policy="p"))
    journal.transition(0.0, JobRecord(attention_job(id="a", submit_time=0.0),
                                      state=JobState.RUNNING, attempts=1, batch="b", device="d"))
    journal.finish()
    with caplog.at_level("WARNING", logger="scheduler.journal"):
        Journal(tmp_path / FILE, RunIdentity(policy="p")).close()
    assert "starting afresh replaces it" in caplog.text
    assert not running_transitions(tmp_path / FILE)
