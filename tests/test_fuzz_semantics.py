"""Valid-looking traces that are semantically wrong, replayed by ``attnsched simulate``.

Every row parses, but the trace as a whole is wrong: a duplicated id, an
arrival earlier than the row before it, a job bigger than every device, a
dependency on a job that never arrives, that fails, or that comes later. The
documented behaviour is asserted: duplicates, disorder and a dependency on a
job not listed earlier exit 2 naming the line and field of the first
offending row; everything else runs, and every job ends exactly once in
``jobs.parquet``, failed ones with the reason.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.malformed import FUZZ, assert_clean, examples, run_cli
from tests.test_fuzz_configs import SMALL_CLUSTER

SMALL = {"batch": 1, "heads": 8, "kv_heads": 2, "q_len": 128, "kv_len": 128, "head_dim": 64}
# 192 TiB of Q, K and V: no device anywhere holds it.
HUGE = {"batch": 4096, "heads": 64, "kv_heads": 8, "q_len": 1 << 20, "kv_len": 1 << 20,
        "head_dim": 128}


@pytest.fixture(autouse=True)
def _no_report(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip report.md and its plots: seconds per run, and not what is under test."""
    monkeypatch.setattr("scheduler.report.write_report", lambda out: None)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cluster") / "c.yaml"
    path.write_text(yaml.safe_dump(SMALL_CLUSTER))
    return path


@st.composite
def trace(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str, int | None, set[str]]:
    """Rows, the fault injected (``none``, ``duplicate``, ``unsorted``), its row index,
    and the ids of the jobs no device can hold."""
    n, step = draw(st.integers(2, 8)), draw(st.sampled_from([0, 0.001, 0.5]))
    rows: list[dict[str, Any]] = []
    huge: set[str] = set()
    for i in range(n):
        row = {"id": f"r{i}", "submit_time": round(i * step, 6),
               "kind": draw(st.sampled_from(["prefill", "decode", "train"])), **SMALL}
        if draw(st.integers(0, 3)) == 0:
            row.update(HUGE)
            huge.add(row["id"])
        if row["kind"] == "decode":
            row.update(q_len=1, steps=draw(st.integers(1, 8)), causal=False)
        dep = draw(st.sampled_from([None, None, "earlier", "later", "unknown"]))
        if dep == "earlier" and i:
            row["depends_on"] = f"r{draw(st.integers(0, i - 1))}"
        elif dep == "later" and i < n - 1:
            row["depends_on"] = f"r{draw(st.integers(i + 1, n - 1))}"
        elif dep == "unknown":
            row["depends_on"] = "nobody"
        rows.append(row)
    fault = draw(st.sampled_from(["none", "none", "duplicate", "unsorted"]))
    at: int | None = None
    if fault == "duplicate":
        at = draw(st.integers(1, n - 1))
        rows[at]["id"] = rows[draw(st.integers(0, at - 1))]["id"]
        if rows[at].get("depends_on") == rows[at]["id"]:
            del rows[at]["depends_on"]  # a self-dependency is another error, found first
    elif fault == "unsorted":
        at = draw(st.integers(1, n - 1))
        for k, row in enumerate(rows):
            row["submit_time"] = 10.0 + k
        rows[at]["submit_time"] = rows[at - 1]["submit_time"] - draw(st.sampled_from([0.5, 9.0]))
    return rows, fault, at, huge


def first_fault(rows: list[dict[str, Any]]) -> tuple[int, str] | None:
    """The row and field the reader refuses first, checking each row as it does:
    its time against the row before, its id, then its dependency."""
    seen: set[str] = set()
    last = 0.0
    for k, row in enumerate(rows):
        if row["submit_time"] < last:
            return k, "submit_time"
        if row["id"] in seen:
            return k, "id"
        if row.get("depends_on") is not None and row["depends_on"] not in seen:
            return k, "depends_on"
        seen.add(row["id"])
        last = row["submit_time"]
    return None


def write(path: Path, rows: list[dict[str, Any]]) -> int:
    """Write ``rows`` in the suffix's format; returns the line of row 0 (1 in CSV's header)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return 1
    if path.suffix == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(["" if r.get(c) is None else str(r.get(c)).lower()
                          if isinstance(r.get(c), bool) else r.get(c) for c in columns]
                         for r in rows)
        path.write_text(buf.getvalue())
        return 2
    pq.write_table(pa.table({c: [r.get(c) for r in rows] for c in columns}), path)
    return 1


@settings(FUZZ, max_examples=examples(70))
@given(case=trace(), suffix=st.sampled_from([".jsonl", ".csv", ".parquet"]),
       policy=st.sampled_from(["greedy", "adaptive", "static"]))
def test_semantically_wrong_traces(cluster: Path, tmp_path: Path,
                                   case: tuple[list[dict[str, Any]], str, int | None, set[str]],
                                   suffix: str, policy: str) -> None:
    rows, fault, _, huge = case
    path = tmp_path / f"t{suffix}"
    first = write(path, rows)
    out = tmp_path / "run"
    code, text = run_cli("simulate", path, "--cluster", cluster, "--policy", policy,
                         "--out", out, "--no-live-costs")
    refused = first_fault(rows)
    assert fault == "none" or refused is not None  # an injected fault is always found
    if refused is not None:
        row, field = refused
        assert_clean(code, text, path, must_fail=True, line=True)
        assert f"{path}:{first + row}: {field}: " in text, text
        return
    assert_clean(code, text, path)
    jobs = {j["id"]: j for j in pq.read_table(out / "jobs.parquet").to_pylist()}
    assert len(jobs) == pq.read_metadata(out / "jobs.parquet").num_rows  # no duplicates
    assert sorted(jobs) == sorted(r["id"] for r in rows)  # none lost
    by_id = {r["id"]: r for r in rows}
    for job_id, job in jobs.items():
        row = by_id[job_id]
        dep = row.get("depends_on")
        if job_id in huge:
            assert job["status"] == "failed" and "fits no device" in job["reason"], job
        elif dep is not None and jobs[dep]["status"] == "failed":
            assert job["status"] == "failed" and "dependency" in job["reason"], job
        elif dep is None:
            assert job["status"] == "done", job
        if job["status"] == "done" and dep is not None:
            assert job["start"] >= jobs[dep]["end"], (job, jobs[dep])
