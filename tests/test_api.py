"""The Python API: the CLI's runs, returned as objects instead of printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import scheduler
from scheduler.errors import InputError
from tests.conftest import REPO

GPUS = 2


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    from scheduler.presets import get_preset
    from scheduler.traces import write_trace
    from scheduler.traces.synth import SynthSpec, generate

    path = tmp_path_factory.mktemp("api") / "trace.jsonl"
    write_trace(generate(SynthSpec(jobs=120, seed=4, rate=30.0), get_preset("tiny")), path)
    return path


def test_importing_scheduler_loads_no_api_until_used() -> None:
    probe = ("import sys, scheduler; from scheduler import simulate, run, compare, load_trace; "
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'torch', 'pyarrow'}),"
             " 'scheduler.api' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == ["[]", "True"]
    bare = subprocess.run([sys.executable, "-c", "import sys, scheduler; "
                           "print('scheduler.api' in sys.modules)"],
                          cwd=REPO, capture_output=True, text=True, check=True)
    assert bare.stdout.strip() == "False"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = scheduler.nope  # type: ignore[attr-defined]


def test_load_trace_gives_the_jobs_as_a_table_and_the_stats(trace: Path) -> None:
    loaded = scheduler.load_trace(trace)
    assert len(loaded) == 120
    assert loaded.jobs.column("id").to_pylist()[:2] == ["j0", "j1"]
    assert {"submit_time", "kind", "tenant", "q_len", "kv_len"} <= set(loaded.jobs.column_names)
    assert loaded.summary["jobs"] == 120
    assert len(scheduler.load_trace(trace, limit=7)) == 7


def test_a_loaded_trace_replays_the_jobs_it_holds(trace: Path) -> None:
    """``load_trace(limit=N)`` then a run: the N jobs loaded, not the whole file; a run's
    own smaller limit takes the first that many of them."""
    loaded = scheduler.load_trace(trace, limit=30, model="tiny")
    result = scheduler.simulate(loaded, "greedy")
    assert result.summary["jobs_total"] == 30
    assert result.jobs.column("id").to_pylist() == loaded.jobs.column("id").to_pylist()
    assert scheduler.simulate(loaded, "greedy", limit=12).summary["jobs_total"] == 12
    assert scheduler.simulate(loaded, "greedy", limit=500).summary["jobs_total"] == 30
    both = scheduler.compare(loaded, ["static", "greedy"], processes=1)
    assert [both[p].summary["jobs_total"] for p in both] == [30, 30]


def test_simulate_matches_the_cli_run_byte_for_byte(trace: Path, cli, tmp_path: Path) -> None:
    result = scheduler.simulate(trace, "greedy", nodes={"gpu_h100": 1}, out=tmp_path / "api")
    code, _, err = cli("simulate", trace, "--policy", "greedy", "--nodes", "gpu_h100=1",
                       "--out", tmp_path / "cli")
    assert code == 0, err
    for name in ("summary.json", "jobs.parquet", "telemetry.parquet", "decisions.jsonl"):
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    assert result.ok and result.out == tmp_path / "api"
    assert result.summary == json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert isinstance(result.jobs, pa.Table) and result.jobs.num_rows == 120
    assert (tmp_path / "api" / "report.md").exists()


def test_simulate_without_out_keeps_the_tables_and_leaves_no_folder(trace: Path) -> None:
    result = scheduler.simulate(scheduler.load_trace(trace), "static", limit=40, seed=1)
    assert result.out is None
    assert result.summary["jobs_total"] == 40 and result.summary["policy"] == "static"
    assert result.jobs.num_rows == 40 and result.telemetry.num_rows > 0
    assert set(result.jobs.column("status").to_pylist()) == {"done"}
    assert "jct_mean" in repr(result)


def test_simulate_takes_a_policy_object(trace: Path) -> None:
    from policies.greedy import GreedyPolicy

    by_object = scheduler.simulate(trace, GreedyPolicy(), limit=30)
    by_name = scheduler.simulate(trace, "greedy", limit=30)
    assert by_object.summary["policy"] == "greedy"
    assert by_object.jobs.equals(by_name.jobs)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"nodes": {"gpu_h100": "x"}}, "--nodes"),
    ({"slots": 0}, "--slots"),
    ({"policy": "nope"}, "--policy"),
    ({"policy": object()}, "policy"),
    ({"fail": ["gpu_h100-0/gpu0"]}, "--fail"),
    ({"policy_options": {"a": 1}, "policy": "greedy", "slow": ["bad"]}, "--slow"),
])
def test_bad_arguments_raise_the_clis_input_error(trace: Path, kwargs, field) -> None:
    with pytest.raises(InputError) as info:
        scheduler.simulate(trace, **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"speed": 0}, "--speed"),
    ({"memory_fraction": 1.5}, "--memory-fraction"),
    ({"decide_timeout": -1}, "--decide-timeout"),
    ({"out": "a", "resume": "b"}, "--resume"),
    ({"metrics_port": 0}, "--metrics-port"),
    ({"metrics_port": 9000, "address": "auto"}, "--metrics-port"),
    ({"decide_timeout": float("inf")}, "--decide-timeout"),
    ({"speed": 1e-320}, "--speed"),
    ({"telemetry_interval": 1e-9}, "--telemetry-interval"),
    ({"emulate_gpus": 2, "slow": {"head/gpu7": 2}}, "--slow"),
    ({"emulate_gpus": 2, "slow": {"head/gpu0": float("nan")}}, "--slow"),
    ({"out": "/proc/attnsched-x"}, "--out"),
])
def test_bad_live_options_fail_before_ray_starts(trace: Path, tmp_path: Path, kwargs,
                                                 field) -> None:
    import ray

    with pytest.raises(InputError) as info:
        scheduler.run(trace, **kwargs)
    assert info.value.field == field
    assert not ray.is_initialized()


def test_a_run_with_failed_jobs_is_not_ok_and_exits_3_as_the_cli_does(trace: Path, cli,
                                                                     tmp_path: Path) -> None:
    every_node = ["gpu_h100-0@1", "cpu-0@1"]
    clean = scheduler.simulate(trace, "greedy", limit=60)
    assert (clean.ok, clean.exit_code) == (True, 0)
    result = scheduler.simulate(trace, "greedy", fail_node=every_node)
    failed = result.summary["jobs_failed"]
    assert failed > 0 and not result.ok and result.exit_code == 3
    assert result.message is not None and f"{failed} of 120 jobs failed" in result.message
    assert "no device that can run it is up" in result.message
    args = [a for node in every_node for a in ("--fail-node", node)]
    assert cli("simulate", trace, "--policy", "greedy", *args)[0] == result.exit_code
    both = scheduler.compare(trace, ["static", "greedy"], fail_node=every_node, processes=1)
    assert both.exit_code == 3 and not both.ok


def test_missing_trace_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        scheduler.load_trace(tmp_path / "none.jsonl")
    with pytest.raises(InputError):
        scheduler.simulate(tmp_path / "none.jsonl")


def test_compare_runs_each_policy_and_writes_the_comparison(trace: Path, tmp_path: Path) -> None:
    both = scheduler.compare(trace, ["static", "adaptive"], limit=60, processes=1,
                             out=tmp_path / "cmp")
    assert list(both) == list(both.keys()) == list(both.summaries) == ["static", "adaptive"]
    assert both["adaptive"].summary["policy"] == "adaptive"
    assert dict(both.items())["static"] is both["static"] and len(both) == 2
    table = both.summary
    assert table.column("policy").to_pylist() == ["static", "adaptive"]
    assert table.column("jct_mean").to_pylist() == [both[p].summary["jct_mean"] for p in both]
    assert (tmp_path / "cmp" / "comparison.md").exists()
    assert (tmp_path / "cmp" / "static" / "jobs.parquet").exists()
    jobs = both.jobs
    assert jobs.column_names[0] == "policy" and jobs.num_rows == 120
    assert sorted(set(jobs.column("policy").to_pylist())) == ["adaptive", "static"]
    alone = scheduler.simulate(trace, "adaptive", limit=60)
    assert alone.jobs.equals(both["adaptive"].jobs)  # same run as simulate's
    with pytest.raises(InputError):
        scheduler.compare(trace, ["static", "static"])


def test_run_live_on_local_ray(trace: Path, tmp_path: Path) -> None:
    import ray

    ray.init(num_cpus=2, num_gpus=GPUS, include_dashboard=False, log_to_driver=False,
             configure_logging=False, _node_ip_address="127.0.0.1")
    try:
        result = scheduler.run(trace, "adaptive", limit=30, emulate_gpus=GPUS, speed=8,
                               out=tmp_path / "live")
        again = scheduler.run(trace, "greedy", limit=10, emulate_gpus=GPUS, speed=8)
    finally:
        ray.shutdown()
    assert result.ok, result.message
    assert result.summary["mode"] == "live" and result.summary["jobs_total"] == 30
    assert result.jobs.num_rows == 30
    assert set(result.jobs.column("status").to_pylist()) == {"done"}
    assert (tmp_path / "live" / "report.md").exists()
    assert again.out is None and again.summary["jobs_completed"] == 10


def test_api_tour_example_runs(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "examples/api_tour.py", "--jobs", "80", "--out",
                             str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("LoadedTrace(") and "jobs=80" in lines[0]
    assert any(line.startswith("lowest mean JCT: ") for line in lines)
    assert lines[-1] == f"report: {tmp_path / 'report' / 'report.html'}"
    assert (tmp_path / "compare" / "comparison.md").exists()
