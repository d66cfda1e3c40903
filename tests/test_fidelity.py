"""Fidelity arithmetic and ranking on constructed summaries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler import fidelity
from scheduler.metrics import JOB_SCHEMA


def summary(mean: float | None, p50: float | None = 1.0, p99: float | None = 2.0,
            makespan: float = 10.0, throughput: float | None = 5.0) -> dict[str, object]:
    return {"jct_mean": mean, "jct_p50": p50, "jct_p99": p99, "makespan": makespan,
            "throughput_jobs_per_s": throughput}


def test_relative_error_is_relative_to_live() -> None:
    assert fidelity.relative_error(1.1, 1.0) == pytest.approx(0.1)
    assert fidelity.relative_error(0.9, 1.0) == pytest.approx(0.1)
    assert fidelity.relative_error(3.0, 2.0) == pytest.approx(0.5)
    assert fidelity.relative_error(2.0, 3.0) == pytest.approx(1 / 3)


@pytest.mark.parametrize(("sim", "live"), [(None, 1.0), (1.0, None), (1.0, 0.0),
                                           (1.0, math.inf)])
def test_missing_figures_have_no_error(sim: float | None, live: float | None) -> None:
    assert fidelity.relative_error(sim, live) is None


@given(st.floats(0.001, 1e6), st.floats(0.001, 1e6))
def test_error_is_zero_only_when_equal(sim: float, live: float) -> None:
    err = fidelity.relative_error(sim, live)
    assert err is not None and err >= 0
    assert (err == 0) == (sim == live)


def test_assess_builds_the_documented_shape() -> None:
    runs = {
        "static": (summary(2.0, makespan=100.0), summary(2.2, makespan=90.0)),
        "adaptive": (summary(1.0, throughput=8.0), summary(0.95, throughput=None)),
    }
    result = fidelity.assess(runs)
    assert set(result) >= {"policies", "same_ranking"}
    static = result["policies"]["static"]
    assert static["live"]["jct_mean"] == 2.0 and static["sim"]["jct_mean"] == 2.2
    assert set(static["error"]) == {"jct_mean", "jct_p50", "jct_p99", "makespan", "throughput"}
    assert static["error"]["jct_mean"] == pytest.approx(0.1)
    assert static["error"]["makespan"] == pytest.approx(0.1)
    assert static["error"]["jct_p50"] == 0.0
    assert result["policies"]["adaptive"]["error"]["jct_mean"] == pytest.approx(0.05)
    assert result["policies"]["adaptive"]["error"]["throughput"] is None
    assert result["same_ranking"] is True
    assert result["ranking"]["live"] == ["adaptive", "static"]
    assert fidelity.worst_errors(result)["jct_mean"] == pytest.approx(0.1)


def test_a_swapped_order_is_not_the_same_ranking() -> None:
    runs = {"a": (summary(1.0), summary(1.5)), "b": (summary(1.2), summary(1.1))}
    result = fidelity.assess(runs)
    assert result["ranking"]["live"] == ["a", "b"]
    assert result["ranking"]["sim"] == ["b", "a"]
    assert result["same_ranking"] is False


def test_policies_with_nothing_completed_rank_last() -> None:
    assert fidelity.ranking({"x": summary(None), "y": summary(3.0), "z": summary(1.0)}) == \
        ["z", "y", "x"]


def test_write_and_plot(tmp_path: Path) -> None:
    def jobs(path: Path, jcts: dict[str, float | None]) -> Path:
        path.mkdir(parents=True)
        rows: dict[str, list[object]] = {f.name: [None] * len(jcts) for f in JOB_SCHEMA}
        rows["id"] = list(jcts)
        rows["jct"] = list(jcts.values())
        pq.write_table(pa.table(rows, schema=JOB_SCHEMA), path / "jobs.parquet")
        return path

    live = jobs(tmp_path / "live", {"j1": 0.5, "j2": 1.0, "j3": None})
    sim = jobs(tmp_path / "sim", {"j1": 0.6, "j2": 0.9, "j3": 2.0})
    result = fidelity.assess({"p": (summary(1.0), summary(1.1))})
    path = fidelity.write(tmp_path / "out", result)
    assert json.loads(path.read_text())["same_ranking"] is True
    plot = fidelity.plot_jct(tmp_path / "out", {"p": (live, sim)})
    assert plot is not None and plot.stat().st_size > 1000
    empty = jobs(tmp_path / "empty", {"j9": 1.0})
    assert fidelity.plot_jct(tmp_path / "none", {"p": (empty, sim)}) is None


def test_repeated_live_runs_are_held_to_their_median() -> None:
    runs = [summary(1.0, p99=4.0), summary(3.0, p99=2.0), summary(2.0, p99=None)]
    merged = fidelity.median_summary(runs)
    assert merged["jct_mean"] == 2.0
    assert merged["jct_p99"] == 3.0  # missing values are left out, not counted as zero
    assert merged["repeats"] == 3
    assert fidelity.median_summary([summary(None)])["jct_mean"] is None
    with pytest.raises(ValueError, match="no summaries"):
        fidelity.median_summary([])


def test_live_spread_is_the_farthest_round_from_the_median() -> None:
    rounds = [summary(2.0, p99=4.0), summary(2.5, p99=None), summary(3.0, p99=5.0)]
    spread = fidelity.live_spread(rounds)
    assert spread["jct_mean"] == pytest.approx(0.2)  # median 2.5; 2.0 and 3.0 are 20% off
    assert spread["jct_p99"] == pytest.approx(0.5 / 4.5)  # the missing round is left out
    assert spread["makespan"] == 0.0  # every round alike: no noise
    one = fidelity.live_spread([summary(2.0)])
    assert set(one.values()) == {None}  # one round says nothing about the noise


def test_assess_reports_each_policys_spread_when_given_its_rounds() -> None:
    rounds = {"a": [summary(1.0), summary(1.2), summary(1.1)], "b": [summary(2.0)]}
    runs = {n: (fidelity.median_summary(r), summary(1.0)) for n, r in rounds.items()}
    result = fidelity.assess(runs, rounds)
    assert result["policies"]["a"]["live_spread"]["jct_mean"] == pytest.approx(0.1 / 1.1)
    assert result["policies"]["a"]["error"]["jct_mean"] == pytest.approx(0.1 / 1.1)
    assert result["policies"]["b"]["live_spread"]["jct_mean"] is None
    assert "live_spread" not in fidelity.assess(runs)["policies"]["a"]


def test_the_cache_hit_rate_is_compared_only_where_a_run_has_one() -> None:
    hits = {"static": (summary(1.0) | {"cache_hit_rate": 0.5},
                       summary(1.0) | {"cache_hit_rate": 0.45}),
            "greedy": (summary(1.0) | {"cache_hit_rate": 0.0},
                       summary(1.0) | {"cache_hit_rate": 0.1})}
    result = fidelity.assess(hits)
    assert result["policies"]["static"]["error"]["cache_hit_rate"] == pytest.approx(0.1)
    assert result["policies"]["greedy"]["error"]["cache_hit_rate"] is None  # live 0: no ratio
    assert fidelity.worst_errors(result)["cache_hit_rate"] == pytest.approx(0.1)
    one_side = fidelity.errors(summary(1.0), summary(1.0) | {"cache_hit_rate": 0.3})
    assert "cache_hit_rate" in one_side and one_side["cache_hit_rate"] is None

    # A trace without prefix blocks has no hit rate: no empty error for it anywhere.
    plain = fidelity.assess({"static": (summary(1.0), summary(1.1))}, {"static": [summary(1.0)]})
    assert "cache_hit_rate" not in plain["policies"]["static"]["error"]
    assert "cache_hit_rate" not in plain["policies"]["static"]["live_spread"]
    assert "cache_hit_rate" not in fidelity.median_summary([summary(1.0), summary(2.0)])


def test_repeated_live_hit_rates_are_held_to_their_median() -> None:
    rounds = [summary(1.0) | {"cache_hit_rate": r} for r in (0.4, 0.5, 0.6)]
    assert fidelity.median_summary(rounds)["cache_hit_rate"] == 0.5
    assert fidelity.live_spread(rounds)["cache_hit_rate"] == pytest.approx(0.2)
