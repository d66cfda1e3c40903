"""The column-wise fast path of Parquet reading agrees with the row-by-row path: on any
batch it either builds the very jobs the rows give, or declines and lets the rows speak
(errors keep naming their row and field)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.errors import InputError
from scheduler.jobs import AttentionJob, retimed
from scheduler.traces.canonical import job_from_record
from scheduler.traces.columns import attention_batch
from scheduler.traces.parquet import SCHEMA, read_parquet

_GOOD = st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "t-1", "x y"]), "submit_time": st.sampled_from([0.0, 1.5]),
     "kind": st.sampled_from(["prefill", "decode", "train", "model"]),
     "batch": st.integers(1, 3), "heads": st.sampled_from([2, 4, 8]), "q_len": st.integers(1, 5),
     "kv_len": st.integers(1, 5), "head_dim": st.sampled_from([16, 64])},
    optional={"kv_heads": st.none() | st.sampled_from([1, 2]), "layers": st.none() | st.just(2),
              "steps": st.none() | st.just(2),
              "dtype": st.none() | st.sampled_from(["bf16", "fp16", "fp32"]),
              "causal": st.none() | st.booleans(), "tenant": st.none() | st.just("t"),
              "priority": st.none() | st.integers(-3, 3),
              "deadline": st.none() | st.just(2.0), "depends_on": st.none() | st.just("b")})
# One rule broken at a time, in a row of the batch: each must send the batch to the rows.
_BAD = st.sampled_from([
    ("id", ""), ("id", "é"), ("id", "a\tb"), ("id", "j" * 257), ("id", None),
    ("submit_time", -1.0), ("submit_time", float("nan")), ("submit_time", 1e11),
    ("kind", "cluster"), ("kind", "x"), ("batch", 0), ("heads", 0), ("kv_heads", 3),
    ("kv_heads", 0), ("q_len", 0), ("head_dim", 2000), ("layers", 0), ("steps", 0),
    ("dtype", "fp64"), ("tenant", ""), ("priority", 2_000_000), ("deadline", 0.0),
    ("deadline", float("inf")), ("depends_on", "a"), ("duration", 1.0), ("heads", None)])


@st.composite
def _rows(draw: st.DrawFn) -> list[dict[str, Any]]:
    rows = draw(st.lists(_GOOD, min_size=1, max_size=6))
    if draw(st.booleans()):
        field, value = draw(_BAD)
        row = rows[draw(st.integers(0, len(rows) - 1))]
        row[field] = value
        if field == "depends_on" and value == "a":
            row["id"] = "a"  # a job depending on itself
    return rows


def _rows_jobs(rows: list[dict[str, Any]]) -> list[AttentionJob] | None:
    try:
        jobs = [job_from_record({k: v for k, v in r.items() if v is not None}) for r in rows]
    except InputError:
        return None
    return [j for j in jobs if isinstance(j, AttentionJob)]


@settings(max_examples=300, deadline=None)
@given(_rows())
def test_the_fast_path_builds_what_the_rows_build_or_declines(rows) -> None:
    names = sorted({k for r in rows for k in r})
    schema = pa.schema([SCHEMA.field(n) for n in names])
    batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    fast = attention_batch(batch)
    slow = _rows_jobs(rows)
    if slow is None:  # a batch the rows refuse is never taken
        assert fast is None
    elif fast is not None:  # ... and one it takes gives the very jobs the rows give
        assert fast == slow and len(fast) == len(rows)
        assert [type(j.submit_time) for j in fast] == [float] * len(fast)
    else:  # it declines a clean batch only for what it does not cover: non-ASCII text,
        # and an empty tenant (which the rows read as "default")
        assert any(not str(r.get(k) or "").isascii() for r in rows
                   for k in ("id", "tenant", "depends_on")) or any(
                       r.get("tenant") == "" for r in rows)


def test_a_clean_file_takes_the_fast_path_and_a_bad_row_is_still_named(tmp_path: Path
                                                                       ) -> None:
    rows = [{"id": f"j{i}", "submit_time": float(i), "kind": "prefill", "batch": 1,
             "heads": 4, "kv_heads": 2, "q_len": 8, "kv_len": 8, "head_dim": 16}
            for i in range(5)]
    batch = pa.RecordBatch.from_pylist(rows, schema=pa.schema(
        [SCHEMA.field(n) for n in rows[0]]))
    assert attention_batch(batch) == _rows_jobs(rows)  # clean: taken whole
    rows[3]["kv_heads"] = 3  # 4 heads are not a multiple of 3
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=batch.schema), path)
    with pytest.raises(InputError) as e:
        list(read_parquet(path))
    assert (e.value.line, e.value.field) == (4, "kv_heads")


def test_retimed_checks_the_time_and_keeps_every_other_field() -> None:
    job = _rows_jobs([{"id": "a", "submit_time": 1.0, "kind": "decode", "batch": 2, "heads": 4,
                       "q_len": 1, "kv_len": 8, "head_dim": 16, "steps": 3, "tenant": "t",
                       "deadline": 5.0}])[0]  # type: ignore[index]
    moved = retimed(job, 7)
    assert moved == AttentionJob(**{**{f: getattr(job, f) for f in job.__slots__},
                                    "submit_time": 7.0})
    with pytest.raises(InputError, match="submit_time"):
        retimed(job, float("nan"))
