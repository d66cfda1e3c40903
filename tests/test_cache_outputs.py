"""The cache hit rate in every table of runs: simulate, compare (and comparison.md), sweep
(and sweep.csv), report, and a job's cached tokens in explain; only where some run has the
figure, so a trace without prefix blocks keeps its tables as they were."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from scheduler.presets import get_preset
from scheduler.report import BEST_MEANS, summary_table_rows
from scheduler.runs import run_sim
from scheduler.sweeps import COLUMNS
from scheduler.traces import write_trace
from scheduler.traces.synth import SharedPrefix, SynthSpec, generate

KINDS = ["blocks", "plain"]  # a trace whose prefills have prefix blocks, and one without
# The comparison table's header before the hit rate existed: a plain trace keeps it.
PLAIN_HEADER = ("| policy | JCT mean | JCT p50 | JCT p99 | makespan | device util | "
                "Jain fairness | SLO attainment |")


@pytest.fixture(scope="module")
def traces(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("traces")
    paths = {}
    for kind, prefix in (("blocks", SharedPrefix()), ("plain", None)):
        paths[kind] = folder / f"{kind}.jsonl"
        write_trace(generate(SynthSpec(jobs=120, seed=1, rate=50.0, prefix=prefix),
                             get_preset("tiny")), paths[kind])
    return paths


@pytest.fixture(scope="module")
def compared(traces: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, tuple[Path, str]]:
    """``attnsched compare`` of two policies on each trace: its folder and what it printed."""
    from scheduler.cli.main import main

    root = Path(__file__).resolve().parents[1]
    done = {}
    for kind, trace in traces.items():
        out, printed = tmp_path_factory.mktemp(f"compare-{kind}"), io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = main(["compare", str(trace), "--cluster", str(root / "cluster.yaml"),
                         "--policies", "fifo,greedy", "--out", str(out)])
        assert code == 0, printed.getvalue()
        done[kind] = (out, printed.getvalue())
    return done


def hit_rate(run: Path) -> float | None:
    return json.loads((run / "summary.json").read_text(encoding="utf-8")).get("cache_hit_rate")


def header_line(text: str) -> str:
    return next(line for line in text.splitlines() if "JCT mean" in line)


@pytest.mark.parametrize("kind", KINDS)
def test_simulate_shows_the_hit_rate_only_for_a_trace_with_prefix_blocks(
        cli, traces, repo, tmp_path, kind: str) -> None:
    out = tmp_path / "run"
    code, text, err = cli("simulate", traces[kind], "--cluster", repo / "cluster.yaml",
                          "--policy", "greedy", "--out", out)
    assert code == 0, err
    rate = hit_rate(out)
    if kind == "plain":
        assert rate is None
        assert "hit rate" not in text and "(utilization not ranked)" in text
        return
    assert rate is not None and 0 < rate < 1
    assert header_line(text).split()[-1:] == ["rate"]  # "hit rate", the last column
    assert f"{rate:.1%}" in text and "(utilization and hit rate not ranked)" in text


@pytest.mark.parametrize("kind", KINDS)
def test_compare_prints_and_writes_the_hit_rate_only_where_a_run_has_one(
        compared, kind: str) -> None:
    out, text = compared[kind]
    md = (out / "comparison.md").read_text(encoding="utf-8")
    rates = {p: hit_rate(out / p) for p in ("fifo", "greedy")}
    if kind == "plain":
        assert rates == {"fifo": None, "greedy": None}
        assert "hit rate" not in text and "hit rate" not in md
        assert PLAIN_HEADER in md.splitlines() and BEST_MEANS in md.splitlines()
        return
    assert header_line(md) == PLAIN_HEADER + " cache hit rate |"
    for policy, rate in rates.items():
        assert rate is not None
        row = next(line for line in md.splitlines() if line.startswith(f"| {policy} |"))
        assert row.endswith(f"| {rate:.1%} |")  # unranked: never bold
        line = next(line for line in text.splitlines() if line.split()[:1] == [policy])
        assert line.split()[-1] == f"{rate:.1%}"
    assert "hit rate" in header_line(text)
    assert "The cache hit rate is not ranked" in md
    assert json.loads((out / "comparison.json").read_text())["fifo"]["cache_hit_rate"] == (
        rates["fifo"])


@pytest.mark.parametrize("kind", KINDS)
def test_the_html_report_shows_the_hit_rate_only_where_a_run_has_one(
        cli, compared, tmp_path, kind: str) -> None:
    out, _ = compared[kind]
    code, _, err = cli("report", out, "--out", tmp_path / "report")
    assert code == 0, err
    page = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    md = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    if kind == "plain":
        assert "hit rate" not in page and "hit rate" not in md
        return
    assert "<th>cache hit rate</th>" in page
    assert "| cache hit rate |" in header_line(md)
    for run in ("fifo", "greedy"):
        assert f"<td>{hit_rate(out / run):.1%}</td>" in page


def test_explain_shows_a_jobs_cached_tokens_when_it_has_some(cli, compared,
                                                             tmp_path) -> None:
    run = compared["blocks"][0] / "greedy"
    jobs = pq.read_table(run / "jobs.parquet", columns=["id", "cached_tokens"])
    hit = jobs.filter(pc.greater(jobs["cached_tokens"], 0)).to_pylist()[0]
    missed = jobs.filter(pc.equal(jobs["cached_tokens"], 0)).to_pylist()[0]
    code, text, err = cli("explain", run, hit["id"])
    assert code == 0, err
    assert f"{hit['id']}: done" in text and f"cached tokens: {hit['cached_tokens']:,}" in text
    code, text, err = cli("explain", run, missed["id"])
    assert code == 0, err
    assert f"{missed['id']}: done" in text and "cached tokens" not in text


def test_explain_reads_a_run_without_the_cached_tokens_column(cli, compared,
                                                              tmp_path) -> None:
    """A run written before jobs.parquet had the column is still explained."""
    run = tmp_path / "old"
    run.mkdir()
    source = compared["plain"][0] / "greedy"
    (run / "decisions.jsonl").write_bytes((source / "decisions.jsonl").read_bytes())
    jobs = pq.read_table(source / "jobs.parquet")
    pq.write_table(jobs.drop_columns(["cached_tokens"]), run / "jobs.parquet")
    job = jobs["id"][0].as_py()
    code, text, err = cli("explain", run, job)
    assert code == 0, err
    assert f"{job}: done" in text and "cached tokens" not in text


@pytest.mark.parametrize("kind", KINDS)
def test_sweep_prints_and_writes_the_hit_rate_only_where_a_run_has_one(
        cli, traces, repo, tmp_path, monkeypatch, kind: str) -> None:
    """The sweep's table and sweep.csv; the cells run in this process (tests/test_sweep.py
    shows a Ray task's result is the same run's)."""
    from scheduler.cli import sweep_cmd

    def in_process(specs, address, progress):
        return {cell: run_sim(spec) for cell, spec in specs.items()}

    monkeypatch.setattr(sweep_cmd, "run_grid", in_process)
    out = tmp_path / "sweep"
    code, text, err = cli("sweep", traces[kind], "--cluster", repo / "cluster.yaml",
                          "--policies", "fifo,greedy", "--loads", "0.7", "--out", out)
    assert code == 0, err
    with (out / "sweep.csv").open(encoding="utf-8", newline="") as f:
        header, *rows = list(csv.reader(f))
    if kind == "plain":
        assert header == list(COLUMNS) and all(len(r) == len(COLUMNS) for r in rows)
        assert "hit rate" not in text
        return
    assert header == [*COLUMNS, "cache_hit_rate"]
    for row in rows:
        rate = hit_rate(out / row[0] / "load-0.7" / "seed-0")
        assert rate is not None and float(row[-1]) == rate  # a plain float, as in the summary
        line = next(line for line in text.splitlines() if line.split()[:1] == [row[0]])
        assert f"{rate:.1%}" in line.split()
    assert "hit rate" in header_line(text)


def test_a_table_of_runs_with_and_without_a_hit_rate_shows_a_dash_for_the_rest() -> None:
    plain = {"policy": "fifo", "jct_mean": 1.0}
    head, *rows = summary_table_rows({"a": plain, "b": {**plain, "cache_hit_rate": 0.25},
                                      "c": {**plain, "cache_hit_rate": 0.5}})
    assert head[-1] == "cache hit rate"
    assert [row[-1] for row in rows] == ["—", "25.0%", "50.0%"]  # not ranked: no star
    head, *_ = summary_table_rows({"a": plain, "b": plain})
    assert "cache hit rate" not in head
