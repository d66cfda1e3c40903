"""Memory that follows the jobs in flight, not the trace: counted in objects and bytes held.

Issue 20 (point 14): a run's peak RSS grew with the trace (578 MiB at 200,000 jobs)
and the report added ~230 MiB on top. These tests pin down what is left once jobs
finish, and that the report reads jobs.parquet in bounded batches; the peak RSS
figures themselves are bench/memory_scale.py's (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.base import load_policy
from scheduler import metrics, report
from scheduler.admission import FIT_MEMO_SIZE
from scheduler.controller import Controller
from scheduler.idset import DigestSet
from scheduler.presets import get_preset
from scheduler.sim import runner
from scheduler.state import FinishedIds
from scheduler.traces.synth import SynthSpec, generate
from tests.simkit import run

JOBS = 3_000


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Controller, Path, list[int]]:
    """One simulated run of JOBS generated jobs, its controller kept for inspection."""
    out = tmp_path_factory.mktemp("run")
    kept: list[Controller] = []
    flushed: list[int] = []

    class Kept(Controller):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            kept.append(self)

    original_flush = metrics._Table.flush

    def flush(table: Any) -> None:
        flushed.append(len(table.columns["device"]))
        original_flush(table)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "Controller", Kept)
        patch.setattr(metrics._Table, "flush", flush)
        jobs = generate(SynthSpec(jobs=JOBS, seed=5, rate=400.0), get_preset("llama3-8b"))
        result = run(jobs, load_policy("fifo"), out=out)
    assert result.exit_code == 0 and result.summary["jobs_completed"] == JOBS
    return kept[0], out, flushed


def test_the_controller_holds_nothing_of_a_finished_job_but_8_bytes(finished_run) -> None:
    controller, _, _ = finished_run
    assert not controller.records and not controller.pending and not controller.batches
    assert not controller._jobs.tenants and not controller._jobs.blocked  # its internals
    cost = controller.cost
    assert not cost._by_job and not cost._best and not any(cost._terms.values())
    assert len(controller._fit.memo) <= FIT_MEMO_SIZE
    # Every finished job is still known (for dependents arriving later), at 8 bytes
    # once folded and up to 4 of bitmap; a dict of id strings held ~100 bytes a job.
    assert len(controller.finished) == JOBS
    assert controller.finished.nbytes <= 12 * JOBS + 64 * 4_096 + 10_000


def test_finished_ids_answer_like_a_dict_across_folds() -> None:
    ids = FinishedIds()
    n = 3 * 4_096 + 17  # past several folds into the sorted array
    for i in range(n):
        ids[f"job-{i}"] = i % 7 != 0
    assert len(ids) == n
    assert all(f"job-{i}" in ids for i in range(0, n, 97))
    assert all(ids[f"job-{i}"] is (i % 7 != 0) for i in range(0, n, 89))
    assert "job-x" not in ids and f"job-{n}" not in ids and 7 not in ids
    with pytest.raises(KeyError):
        ids["never"]
    assert ids.nbytes < 40 * n  # digests (8 bytes once folded), not ~100-byte strings


def test_finished_rows_leave_memory_in_bounded_row_groups(finished_run) -> None:
    _, out, flushed = finished_run
    assert flushed and max(flushed) <= metrics.ROWS_PER_GROUP <= 16_384
    assert pq.read_metadata(out / "jobs.parquet").num_rows == JOBS


def test_the_report_reads_jobs_parquet_a_bounded_batch_at_a_time(finished_run,
                                                                  monkeypatch) -> None:
    _, out, _ = finished_run
    (out / "summary.json").write_text(json.dumps(
        {"policy": "fifo", "mode": "sim", "jobs_failed": 0, "failed_reasons": {}}))
    monkeypatch.setattr(report, "BATCH_ROWS", 500)
    sizes: list[int] = []
    original = report.JobStats.add

    def spy(self: Any, jobs: pa.Table) -> None:
        sizes.append(jobs.num_rows)
        assert set(jobs.column_names) <= set(report.REPORT_COLUMNS)  # columns projected
        original(self, jobs)

    monkeypatch.setattr(report.JobStats, "add", spy)
    text = report.write_report(out).read_text()
    assert sum(sizes) == JOBS and max(sizes) <= 500 and len(sizes) >= JOBS // 500
    tenants = text.split("## Per tenant")[1].split("## Per kind")[0]
    rows = [r.split(" | ") for r in tenants.splitlines() if r.startswith("| ")][1:]
    rows = [r for r in rows if not r[1].startswith("-")]
    assert sum(int(r[1].replace(",", "")) for r in rows) == JOBS  # every batch counted once


def test_a_cdf_of_a_million_points_is_drawn_through_a_bounded_few() -> None:
    import numpy as np

    x, y = report.cdf_points(np.arange(1_000_000, dtype=np.float64)[::-1].copy())
    assert x.size <= report.MAX_CDF_POINTS and x[0] == 0 and x[-1] == 999_999
    assert y[-1] == 1.0 and np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(n=st.integers(0, 3 * 4_096 + 50), seed=st.integers(0, 2**32 - 1),
       edges=st.lists(st.sampled_from([0, 1, 7, 8, 2**63, 2**64 - 1]), max_size=4))
def test_a_digest_set_answers_like_a_set_as_its_bitmap_grows(n: int, seed: int,
                                                             edges: list[int]) -> None:
    rng = random.Random(seed)
    kept = {rng.getrandbits(64) for _ in range(n)} | set(edges)
    digests = DigestSet()
    for d in kept:
        digests.add(d)
    assert len(digests) == len(kept)
    assert all(d in digests for d in kept)  # the bitmap never answers a false "no"
    asked = [rng.getrandbits(64) for _ in range(500)] + [0, 2**64 - 1]
    assert all((d in digests) is (d in kept) for d in asked)
