"""compare --mode live, live progress and the workers' memory budget, on one local Ray.

One Ray (loopback, 2 CPUs, 2 declared GPU slots) serves the whole module:
the CLI and ``open_session`` join a Ray that is already up instead of
starting their own, which keeps these tests to seconds each.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests import rayenv
from tests.test_sim import DESIGN_SUMMARY_KEYS
from tests.test_sim_cli import OUTPUTS

GPUS = 2


@pytest.fixture(scope="module")
def local_ray():
    with rayenv.local_ray(gpus=GPUS) as ray:
        yield ray


def tiny_jobs(n: int, seed: int = 3, rate: float = 40.0) -> list:
    from scheduler.presets import get_preset
    from scheduler.traces.synth import SynthSpec, generate

    return list(generate(SynthSpec(jobs=n, seed=seed, rate=rate,
                                   mix={"prefill": 0.5, "decode": 0.5}),
                         get_preset("tiny", token_scale=0.5)))


def write_trace(path: Path, n: int) -> Path:
    from scheduler.traces import write_trace as write

    write(tiny_jobs(n), path)
    return path


def worker(ray, **kw):
    from workers.worker import AttentionWorker

    return ray.remote(AttentionWorker).options(num_cpus=0, max_concurrency=2).remote(
        "test/gpu0", "gpu", emulate=True, seed=1, **kw)


# -- compare --mode live ---------------------------------------------------------------------

def test_compare_live_runs_each_policy_with_the_sim_outputs(cli, local_ray, tmp_path) -> None:
    trace = write_trace(tmp_path / "t.jsonl", 30)
    out = tmp_path / "cmp"
    code, text, err = cli("compare", trace, "--mode", "live", "--policies", "static,adaptive",
                          "--emulate-gpus", GPUS, "--speed", "4", "--telemetry-interval",
                          "0.25", "--out", out)
    assert code == 0, err
    runs = {}
    for policy in ("static", "adaptive"):
        for name in OUTPUTS:
            assert (out / policy / name).exists(), (policy, name)
        summary = json.loads((out / policy / "summary.json").read_text())
        assert set(summary) >= DESIGN_SUMMARY_KEYS
        assert (summary["mode"], summary["policy"], summary["jobs_completed"]) == (
            "live", policy, 30)
        runs[policy] = json.loads((out / policy / "run.json").read_text())
    assert runs["static"]["workers"] == runs["adaptive"]["workers"]
    comparison = (out / "comparison.md").read_text()
    assert "static" in comparison and "adaptive" in comparison
    assert set(json.loads((out / "comparison.json").read_text())) == {"static", "adaptive"}
    assert "comparison.md" in text and text.count("ran live") == 2
    for policy in ("static", "adaptive"):  # the replay's own wall time, as `run` prints it
        assert f"{policy}: 30/30 jobs done, 0 failed; ran live in " \
               f"{runs[policy]['wall_seconds']:.1f}s" in text


@pytest.mark.parametrize(("args", "field"), [
    (["--speed", "2"], "--speed"),
    (["--emulate-gpus", "1"], "--emulate-gpus"),
    (["--memory-fraction", "0.5"], "--memory-fraction"),
    (["--address", "auto", "--jobs", "2"], "--jobs"),
    (["--mode", "live", "--load", "0.5"], "--load"),
    (["--mode", "live", "--nodes", "gpu_h100=1"], "--nodes"),
    (["--mode", "live", "--fail", "x@1"], "--fail"),
    (["--mode", "live", "--slots", "2"], "--slots"),
    (["--mode", "live", "--jobs", "2"], "--jobs"),
    (["--mode", "live", "--cluster", "cluster.yaml"], "--cluster"),
    (["--mode", "live", "--memory-fraction", "0"], "--memory-fraction"),
    (["--mode", "live", "--speed", "-1"], "--speed"),
    (["--mode", "fast"], "--mode"),
])
def test_compare_rejects_options_of_the_other_mode(cli, tmp_path, args, field) -> None:
    """Checked before Ray or any process starts: no Ray fixture here."""
    trace = write_trace(tmp_path / "t.jsonl", 3)
    code, _, err = cli("compare", trace, *args, "--out", tmp_path / "never")
    assert code == 2, err
    assert field in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists()


def test_run_rejects_a_bad_memory_fraction(cli, tmp_path) -> None:
    trace = write_trace(tmp_path / "t.jsonl", 3)
    for value in ("0", "1.01", "nan"):
        code, _, err = cli("run", trace, "--memory-fraction", value)
        assert code == 2 and "--memory-fraction" in err and err.count("\n") == 1


# -- progress --------------------------------------------------------------------------------

def test_live_progress_reports_jobs_done_rate_and_utilization(local_ray, tmp_path) -> None:
    from policies.base import load_policy
    from workers.executor import LiveConfig, LiveProgress, run_live

    seen: list[LiveProgress] = []
    config = LiveConfig(emulate_gpus=GPUS, speed=4.0, telemetry_interval=0.2,
                        progress=seen.append)
    result = run_live(tiny_jobs(40), load_policy("greedy"), "greedy", None, config)
    assert result.exit_code == 0
    assert seen, "no progress reported"
    done = [p.done for p in seen]
    assert done == sorted(done) and done[-1] == 40
    last = seen[-1]
    assert last.rate > 0 and last.failed == 0
    assert last.util is not None and 0.0 <= last.util <= 1.0


def test_live_bar_shows_jobs_done_rate_utilization_and_failures() -> None:
    from rich.progress import TextColumn

    from scheduler.cli.live_cmd import NO_PROGRESS, live_progress_bar, track
    from workers.executor import LiveProgress

    def shown(bar) -> str:
        return " ".join(str(c.render(bar.tasks[0])) for c in bar.columns
                        if isinstance(c, TextColumn))

    bar = live_progress_bar()
    task = bar.add_task("run adaptive", total=10, start=False, **NO_PROGRESS)
    assert "0/10 jobs, 0.0 jobs/s, util -" in shown(bar)
    assert bar.tasks[0].start_time is None  # Ray's start-up is not the run's time
    track(bar, task)(LiveProgress(7, 2, 3.0, 12.5, 0.436, 5, {
        "head/gpu0": (0.5, 2, True), "head/gpu1": (None, 0, False)}))
    assert "7/10 jobs, 12.5 jobs/s, util 44%, queue 5, 2 failed" in shown(bar)
    assert bar.tasks[0].start_time is not None
    from rich.console import Console

    console = Console(record=True, width=100)
    for renderable in bar.get_renderables():
        console.print(renderable)
    lines = console.export_text().splitlines()
    gpu0 = next(line for line in lines if "head/gpu0" in line)
    gpu1 = next(line for line in lines if "head/gpu1" in line)
    assert "50%" in gpu0 and "2 running" in gpu0
    assert "down" in gpu1


# -- reused workers --------------------------------------------------------------------------

def test_a_reset_worker_starts_like_a_fresh_one(local_ray) -> None:
    """What compare --mode live relies on to run every policy on the same workers."""
    job = tiny_jobs(1)[0]
    w = worker(local_ray)
    first = local_ray.get(w.run.remote("b1", [job], 1e-6, 1e9))
    sample = local_ray.get(w.telemetry.remote(1.0, 0))
    assert sample.achieved_flops > 0  # the batch was counted
    local_ray.get(w.run.remote("b2", [job], 1e-6, 1e9))
    local_ray.get(w.reset.remote())
    again = local_ray.get(w.run.remote("b3", [job], 1e-6, 1e9))
    assert again.checksum == first.checksum  # same tensors as a fresh worker's first batch
    local_ray.get(w.reset.remote())
    assert local_ray.get(w.telemetry.remote(2.0, 0)).achieved_flops == 0.0


# -- memory budget ---------------------------------------------------------------------------

def test_worker_refuses_a_batch_over_its_budget_without_running_it(local_ray) -> None:
    job = tiny_jobs(1)[0]
    w = worker(local_ray, memory_budget=1 << 20)
    refused = local_ray.get(w.run.remote("big", [job], 0.01, 1e9, 2 << 20))
    assert refused.error is not None and refused.error.startswith("out of memory")
    assert "2 MiB" in refused.error and "1 MiB budget" in refused.error
    assert refused.seconds == 0.0
    assert local_ray.get(w.telemetry.remote(1.0, 0)).achieved_flops == 0.0  # nothing ran
    fits = local_ray.get(w.run.remote("small", [job], 0.01, 1e9, 1 << 19))
    assert fits.error is None and fits.seconds > 0


def test_memory_fraction_is_what_the_controller_plans_with_and_workers_enforce(
        local_ray) -> None:
    from scheduler.cluster import for_live_run, from_ray_nodes
    from workers.executor import LiveConfig, close_session, open_session

    whole = for_live_run(from_ray_nodes(local_ray.nodes()), emulated_gpus=True, cpu_workers=0)
    session = open_session(LiveConfig(emulate_gpus=GPUS, memory_fraction=0.5))
    try:
        for device in whole.devices:
            planned = session.spec.device(device.id).memory_bytes
            assert planned == int(device.memory_bytes * 0.5) > 0
            enforced = local_ray.get(session.workers[device.id].memory_budget.remote())
            assert enforced == planned
    finally:
        close_session(session)


@pytest.mark.parametrize("policy", ["greedy", "adaptive"])
def test_a_refused_batch_is_handled_like_an_oom_and_the_work_moves(local_ray, tmp_path,
                                                                   policy) -> None:
    """The test knob ``worker_budget`` gives head/gpu0 a 1-byte budget the controller
    does not know about (as a device smaller than the spec says): the first batch
    sent there comes back out of memory, the controller learns the device holds
    less, and every job ends done on the other device; none is lost."""
    from policies.base import load_policy
    from workers.executor import LiveConfig, run_live

    out = tmp_path / "oom"
    config = LiveConfig(emulate_gpus=GPUS, speed=4.0, telemetry_interval=0.25,
                        worker_budget={"head/gpu0": 1})
    result = run_live(tiny_jobs(30), load_policy(policy), policy, out, config)
    assert result.exit_code == 0, result.message
    rows = pq.read_table(out / "jobs.parquet").to_pylist()
    assert len(rows) == 30 and {r["id"] for r in rows} == {j.id for j in tiny_jobs(30)}
    assert all(r["status"] == "done" and r["device"] == "head/gpu1" for r in rows), \
        [(r["id"], r["status"], r["device"], r["reason"]) for r in rows]
    assert any(r["attempts"] > 1 for r in rows), "no batch was refused"
    learned = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()
               if '"oom"' in line]
    assert learned and all(r["device"] == "head/gpu0" for r in learned)


# -- which GPUs are real ---------------------------------------------------------------------

def _node(node_id: str, **resources: float) -> dict:
    return {"NodeID": node_id * 28, "Alive": True, "NodeManagerAddress": "10.0.0.1",
            "Resources": {"memory": 64e9, **resources}}


CLUSTER_NODES = [
    # cluster.yaml's head: no CPU for workers, no GPU, so no CUDA where the driver runs
    _node("99", CPU=0.0, **{"node:__internal_head__": 1.0}),
    _node("11", CPU=192.0, GPU=8.0, **{"accelerator_type:H100": 1.0}),  # GPUs Ray detected
    _node("22", CPU=4.0, GPU=2.0),  # slots declared with --num-gpus: no accelerator label
]


def test_on_a_cluster_gpus_ray_detected_are_real_even_from_a_gpu_less_head() -> None:
    from workers.executor import LiveConfig, live_cluster

    spec = live_cluster(CLUSTER_NODES, LiveConfig(address="auto", memory_fraction=1.0),
                        local_cuda=False)
    models = {d.id: (d.model, d.profile) for d in spec.devices}
    assert all(models[f"11111111/gpu{i}"] == ("H100", "h100") for i in range(8))
    assert models["22222222/gpu0"] == models["22222222/gpu1"] == ("emulated", "cpu")
    assert not [d for d in spec.devices if d.node == "head"]


def test_a_local_ray_without_cuda_emulates_every_gpu() -> None:
    from workers.executor import LiveConfig, live_cluster

    spec = live_cluster(CLUSTER_NODES, LiveConfig(), local_cuda=False)
    assert {d.model for d in spec.devices if d.kind == "gpu"} == {"emulated"}
    spec = live_cluster(CLUSTER_NODES, LiveConfig(), local_cuda=True)
    assert "H100" in {d.model for d in spec.devices}


# -- issue 20: --slow names live devices, failed jobs exit 3 ---------------------------------

def _local_head(**resources: float) -> list[dict]:
    return [_node("aa", **{"node:__internal_head__": 1.0, **resources})]


@pytest.mark.parametrize(("emulate", "cpu_workers", "resources"), [
    (2, 0, {"CPU": 2.0, "GPU": 2.0}), (0, 0, {"CPU": 2.0}), (0, 2, {"CPU": 2.0}),
    (0, 1, {"CPU": 2.0}), (0, 0, {"CPU": 1.0}), (0, 4, {"CPU": 2.0}), (0, 0, {"CPU": 40.0})])
def test_the_devices_a_local_run_expects_are_those_ray_will_give_it(
        emulate: int, cpu_workers: int, resources: dict, monkeypatch) -> None:
    """``--slow`` is checked against these names before Ray starts: they must agree."""
    from scheduler import live_runs
    from workers.executor import LiveConfig, live_cluster

    monkeypatch.setattr(live_runs, "_cuda_devices", lambda: 0)
    monkeypatch.setattr("os.cpu_count", lambda: int(resources["CPU"]))
    spec = live_cluster(_local_head(**resources),
                        LiveConfig(emulate_gpus=emulate, cpu_workers=cpu_workers),
                        local_cuda=False)
    assert sorted(d.id for d in spec.devices) == sorted(live_runs.local_devices(emulate,
                                                                             cpu_workers))


@pytest.mark.parametrize("args", [
    ["--emulate-gpus", "2", "--slow", "head/gpu2=2"],
    ["--emulate-gpus", "2", "--slow", "gpu_h100-0/gpu0=2"],
    ["--cpu-workers", "2", "--slow", "head/cpu9=2"],
])
def test_run_refuses_slow_for_a_device_the_live_run_will_not_have(cli, tmp_path, args) -> None:
    """``simulate`` refused these already; live accepted them and slowed nothing.

    Refused before the run: its folder is never made (this module's Ray may be up,
    so that is the sign; tests/test_fuzz_options.py checks Ray never loads)."""
    trace = write_trace(tmp_path / "t.jsonl", 3)
    code, _, err = cli("run", trace, *args, "--out", tmp_path / "r")
    assert code == 2, err
    assert err.startswith("attnsched: error: --slow: no device ") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_a_live_run_with_a_job_that_fits_no_device_exits_3(cli, local_ray, tmp_path) -> None:
    from tests.test_sim_cli import HUGE

    trace = write_trace(tmp_path / "t.jsonl", 4)
    trace.write_text(trace.read_text() + json.dumps(HUGE) + "\n")
    code, out, err = cli("run", trace, "--emulate-gpus", GPUS, "--speed", "8", "--out",
                         tmp_path / "r")
    assert code == 3, err
    assert "1 of 5 jobs failed: fits no device" in " ".join(err.split())
    assert "4/5 jobs done, 1 failed" in out
    assert (tmp_path / "r" / "report.md").exists()


def test_telemetry_follows_the_wall_clock_at_any_speed(cli, local_ray, tmp_path) -> None:
    """At --speed 1000 a one-second telemetry interval is a wall second, not a trace
    second: the driver polls its workers a few times, not a thousand times a second; the
    summary names both time bases."""
    from scheduler.traces import write_trace as write

    trace, out = tmp_path / "slow.jsonl", tmp_path / "r"
    write(tiny_jobs(40, rate=0.05), trace)  # 40 jobs over ~800 trace seconds
    code, _, err = cli("run", trace, "--policy", "greedy", "--emulate-gpus", GPUS, "--speed",
                       "1000", "--out", out)
    assert code == 0, err
    info = json.loads((out / "run.json").read_text())
    samples = pq.read_table(out / "telemetry.parquet").num_rows
    ticks = info["wall_seconds"] / 1.0 + 2  # one a wall second, and the first and last
    assert samples <= GPUS * ticks, (samples, info["wall_seconds"])  # was ~1,600
    summary = json.loads((out / "summary.json").read_text())
    assert summary["makespan_trace_s"] == summary["makespan"] > 500
    assert summary["makespan_wall_s"] == pytest.approx(summary["makespan"] / 1000)
    assert summary["throughput_jobs_per_wall_s"] == pytest.approx(
        40 / summary["makespan_wall_s"])
    # Compute per real second: the flops the jobs did over the wall clock's span.
    flops = sum(pq.read_table(out / "jobs.parquet").column("flops").to_pylist())
    assert summary["achieved_tflops"] == pytest.approx(flops / summary["makespan_wall_s"] / 1e12)
    assert info["driver_cpu_s"] > 0 and 0 < info["driver_cpu_share"] == pytest.approx(
        info["driver_cpu_s"] / info["wall_seconds"], abs=1e-3)
