"""Canonical attention rows checked a column at a time: the fast path of Parquet reading.

A Parquet record batch holds up to 65,536 rows of typed columns. When every
row of a batch is a well-formed attention job in the canonical column types,
pyarrow's compute kernels check each rule of :class:`~scheduler.jobs.AttentionJob`
once per column, and the jobs are built without checking each again
(:func:`scheduler.jobs.attention_unchecked`). Any batch that breaks a rule,
or that this path does not cover (cluster jobs, other column types, an empty
tenant, text outside printable ASCII), returns None and is read row by row,
which names the row and field at fault: the fast path decides only *whether*
a batch is clean, never what an error says.
"""

from __future__ import annotations

import itertools
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from scheduler.jobs import (
    ATTENTION_KINDS,
    LIMITS,
    MAX_ID_LEN,
    MAX_PRIORITY,
    MAX_TIME_S,
    AttentionJob,
    DType,
    attention_unchecked,
)
from scheduler.traces.canonical import CACHE, RESOURCES, column_type

_KINDS = {k.value: k for k in ATTENTION_KINDS}
_DTYPES = {d.value: d for d in DType}
_SHAPE_INTS = ("batch", "heads", "kv_heads", "q_len", "kv_len", "head_dim", "layers", "steps")
_REQUIRED = ("id", "submit_time", "kind", "batch", "heads", "q_len", "kv_len", "head_dim")



def _all(mask: Any) -> bool:
    return bool(pc.all(mask, skip_nulls=True).as_py() is not False)


def _in_range(column: pa.Array, lo: float, hi: float) -> bool:
    bounds = pc.min_max(column)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return low is None or (lo <= low and high <= hi)


def _names_ok(column: pa.Array, optional: bool) -> bool:
    """Non-empty printable ASCII of at most MAX_ID_LEN characters (the row path also
    takes other printable text: such batches go that way)."""
    if not optional and column.null_count:
        return False
    if column.null_count == len(column):
        return True
    lengths = pc.utf8_length(column)
    return (_all(pc.string_is_ascii(column)) and _all(pc.ascii_is_printable(column))
            and _in_range(lengths, 1, MAX_ID_LEN))


def _times_ok(column: pa.Array, open_low: bool) -> bool:
    """Finite seconds in [0, MAX_TIME_S] (``open_low``: above 0); nulls pass."""
    if column.null_count == len(column):
        return True
    if not _all(pc.is_finite(column)) or not _in_range(column, 0.0, MAX_TIME_S):
        return False
    return not open_low or pc.min(column).as_py() > 0


def _checks(cols: dict[str, pa.Array]) -> bool:
    """Every rule of the row path, a column at a time."""
    if any(c.type != column_type(n) for n, c in cols.items()):
        return False
    if any(n not in cols or cols[n].null_count for n in _REQUIRED):
        return False
    if any(not _all(pc.is_null(cols[n])) for n in RESOURCES if n in cols):
        return False
    if not _all(pc.is_in(cols["kind"], value_set=pa.array(list(_KINDS)))):
        return False
    if "dtype" in cols and not _all(pc.or_(pc.is_null(cols["dtype"]), pc.is_in(
            cols["dtype"], value_set=pa.array(list(_DTYPES))))):
        return False
    if any(n in cols and not _in_range(cols[n], 1, LIMITS[n]) for n in _SHAPE_INTS):
        return False
    if "priority" in cols and not _in_range(cols["priority"], -MAX_PRIORITY, MAX_PRIORITY):
        return False
    if not _times_ok(cols["submit_time"], False) or (
            "deadline" in cols and not _times_ok(cols["deadline"], True)):
        return False
    if not _names_ok(cols["id"], False) or any(
            n in cols and not _names_ok(cols[n], True) for n in ("tenant", "depends_on")):
        return False
    if "depends_on" in cols and not _all(pc.not_equal(cols["depends_on"], cols["id"])):
        return False
    heads = cols["heads"]
    kv = pc.coalesce(cols["kv_heads"], heads) if "kv_heads" in cols else heads
    whole = pc.multiply(pc.divide(heads, kv), kv)  # integer division: heads a multiple of kv
    return _all(pc.equal(whole, heads))


def attention_batch(batch: pa.RecordBatch) -> list[AttentionJob] | None:
    """The batch's jobs, or None when the row-by-row path must read it."""
    if batch.num_rows == 0 or "kind" not in batch.schema.names:
        return None
    if any(batch.column(n).null_count < batch.num_rows for n in CACHE
           if n in batch.schema.names):
        return None  # prefix blocks are checked a row at a time

    cols = dict(zip(batch.schema.names, batch.columns, strict=True))
    if not _checks(cols):
        return None
    n = batch.num_rows
    get = cols.get

    def values(name: str, default: Any) -> list[Any]:
        column = get(name)
        if column is None:
            return [default] * n
        out = column.to_pylist()
        return out if not column.null_count else [default if v is None else v for v in out]

    heads = values("heads", None)
    kv = get("kv_heads")
    kv_heads = heads if kv is None else [h if k is None else k
                                         for h, k in zip(heads, kv.to_pylist(), strict=True)]
    kinds = [_KINDS[k] for k in values("kind", None)]
    dtypes = [_DTYPES[d] for d in values("dtype", "bf16")]
    rows = zip(values("id", None), values("submit_time", None), kinds,
               values("batch", None), heads, kv_heads, values("q_len", None),
               values("kv_len", None), values("head_dim", None), values("layers", 1), dtypes,
               values("causal", True), values("steps", 1), values("tenant", "default"),
               values("priority", 0), values("deadline", None), values("depends_on", None),
               itertools.repeat((), n), itertools.repeat(0, n), strict=True)
    return [attention_unchecked(*row) for row in rows]

