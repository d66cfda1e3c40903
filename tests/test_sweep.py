"""attnsched sweep: a grid of simulations as Ray tasks, each what `simulate` would write."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest

from scheduler.presets import get_preset
from scheduler.runs import RunSpec, run_sim
from scheduler.sweeps import Cell, grid, run_grid
from scheduler.traces import write_trace
from scheduler.traces.synth import SynthSpec, generate


@pytest.fixture
def trace(tmp_path):
    path = tmp_path / "t.parquet"
    write_trace(generate(SynthSpec(jobs=150, seed=5, rate=50.0), get_preset("tiny")), path)
    return path


def test_a_sweep_on_two_ray_nodes_matches_each_simulation_run_alone(trace, tmp_path,
                                                                    repo) -> None:
    import ray
    from ray.cluster_utils import Cluster

    base = RunSpec(trace=trace, cluster=repo / "cluster.yaml")
    specs = grid(base, ["greedy", "adaptive"], [0.5, 0.9], [0, 7], tmp_path / "sweep")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        seen: list[Cell] = []
        results = run_grid(specs, cluster.address, lambda cell, _: seen.append(cell))
        assert not ray.is_initialized()  # the sweep let go of the Ray it joined
    finally:
        cluster.shutdown()
    assert list(results) == list(specs) and sorted(seen, key=str) == sorted(specs, key=str)
    for cell, spec in specs.items():
        alone = run_sim(replace(spec, out=tmp_path / "alone" / cell.folder))
        assert alone.summary == results[cell].summary
        for name in ("summary.json", "decisions.jsonl", "jobs.parquet"):
            assert (spec.out / name).read_bytes() == (
                tmp_path / "alone" / cell.folder / name).read_bytes(), (cell, name)
    loads = {c.load: results[c].summary["time_scale"] for c in specs}
    assert loads[0.5] == pytest.approx(loads[0.9] * 0.9 / 0.5)


def test_sweep_from_the_cli_writes_every_cell_and_its_table(cli, trace, tmp_path, repo) -> None:
    out = tmp_path / "s"
    code, text, err = cli("sweep", trace, "--cluster", repo / "cluster.yaml", "--policies",
                          "fifo,adaptive", "--loads", "0.7", "--seeds", "0,1", "--out", out)
    assert code == 0, err
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["policy"], r["load"], r["seed"]) for r in rows] == [
        ("fifo", "0.7", "0"), ("fifo", "0.7", "1"), ("adaptive", "0.7", "0"),
        ("adaptive", "0.7", "1")]
    assert all(r["jobs_completed"] == "150" for r in rows)
    assert (out / "adaptive" / "load-0.7" / "seed-1" / "report.md").exists()
    assert "4 simulations" in text


@pytest.mark.parametrize(("args", "field"), [
    (["--loads", "0.5,fast"], "--loads"), (["--loads", "0"], "--loads"),
    (["--seeds", "-1"], "--seeds"), (["--seeds", "1,x"], "--seeds"),
    (["--policies", "fifo,nosuch"], "nosuch"),
])
def test_bad_sweep_options_fail_in_one_line_before_ray(cli, trace, tmp_path, repo, args,
                                                       field) -> None:
    import ray

    code, _, err = cli("sweep", trace, "--cluster", repo / "cluster.yaml", "--out",
                       tmp_path / "s", *args)
    assert code == 2, err
    assert field in err and len(err.strip().splitlines()) == 1
    assert not ray.is_initialized()


def test_compare_with_an_address_runs_each_policy_as_a_ray_task(cli, trace, tmp_path,
                                                                 repo) -> None:
    import ray
    from ray.cluster_utils import Cluster

    args = ("--cluster", repo / "cluster.yaml", "--policies", "fifo,adaptive", "--load", "0.8")
    assert cli("compare", trace, *args, "--out", tmp_path / "pool")[0] == 0
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        code, _, err = cli("compare", trace, *args, "--address", cluster.address,
                           "--out", tmp_path / "ray")
        assert not ray.is_initialized()
    finally:
        cluster.shutdown()
    assert code == 0, err
    for policy in ("fifo", "adaptive"):
        assert (tmp_path / "ray" / policy / "summary.json").read_bytes() == (
            tmp_path / "pool" / policy / "summary.json").read_bytes()
    assert "adaptive" in (tmp_path / "ray" / "comparison.md").read_text()
