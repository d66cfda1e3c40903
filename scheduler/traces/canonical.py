"""The canonical trace format: one row per job, in JSONL, CSV or Parquet.

Columns are the job fields (DESIGN.md) plus the resource fields of duration-only
cluster jobs. A row's ``kind`` says which set applies; the other set is empty.
Rows must be sorted by ``submit_time`` so traces can be streamed.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from scheduler.errors import InputError
from scheduler.inputfiles import clip, shown
from scheduler.jobs import AttentionJob, ClusterJob, Job, JobKind
from scheduler.traces.textio import iter_lines, json_line, parse_float, parse_int

MIB = 1 << 20
IDENTITY = ("id", "submit_time", "kind", "tenant", "priority", "deadline", "depends_on")
SHAPE = ("batch", "heads", "kv_heads", "q_len", "kv_len", "head_dim", "layers", "dtype",
         "causal", "steps")
RESOURCES = ("duration", "gpus", "gpu_fraction", "cpus", "memory_mib")
CACHE = ("prefix_blocks", "block_tokens")  # a prefill's prompt blocks (scheduler/kvcache.py)
FIELDS = IDENTITY + SHAPE + RESOURCES + CACHE
INT_FIELDS = frozenset({"priority", "batch", "heads", "kv_heads", "q_len", "kv_len", "head_dim",
                        "layers", "steps", "gpus", "block_tokens"})
FLOAT_FIELDS = frozenset({"submit_time", "deadline", "duration", "gpu_fraction", "cpus",
                          "memory_mib"})
REQUIRED = {"attention": ("batch", "heads", "q_len", "kv_len", "head_dim"),
            "cluster": ("duration",)}


def column_type(name: str) -> Any:
    """The Arrow type of a canonical column (Parquet traces are written with it)."""
    import pyarrow as pa

    if name in INT_FIELDS:
        return pa.int64()
    if name in FLOAT_FIELDS:
        return pa.float64()
    if name == "prefix_blocks":
        return pa.list_(pa.int64())
    return pa.bool_() if name == "causal" else pa.string()


def _coerce(name: str, value: Any, from_text: bool) -> Any:
    """Turn a cell into the field's type; CSV cells arrive as text."""
    if value is None or (from_text and value == ""):
        return None
    if name in INT_FIELDS:
        if from_text:
            return parse_int(value, name)
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        return value  # the job's own validation reports anything else
    if name in FLOAT_FIELDS:
        if from_text:
            return parse_float(value, name)
        if isinstance(value, int):
            try:
                float(value)  # JSON integers are unbounded; the job's checks need a float
            except OverflowError:
                raise InputError(f"an integer of {len(str(abs(value)))} digits is out of range",
                                 field=name) from None
        return value
    if name == "prefix_blocks" and from_text:  # a CSV cell: ids separated by spaces
        return tuple(parse_int(cell, name) for cell in value.split())
    if name == "causal" and from_text:
        lowered = value.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise InputError(f"expected true or false, got {clip(value)}", field=name)
    return value


def job_from_record(record: Mapping[str, Any], *, from_text: bool = False) -> Job:
    """Build a job from one canonical row; raises InputError naming the field."""
    unknown = [k for k in record if k not in FIELDS]
    if unknown:
        raise InputError(f"unknown column; expected some of {', '.join(FIELDS)}",
                         field=shown(unknown[0]))
    values = {k: _coerce(k, v, from_text) for k, v in record.items()}
    for name in ("id", "submit_time", "kind"):
        if values.get(name) is None:
            raise InputError("missing value", field=name)
    kind = values["kind"]
    family = "cluster" if kind == JobKind.CLUSTER.value else "attention"
    for name in REQUIRED[family]:
        if values.get(name) is None:
            raise InputError(f"missing value (required for kind {clip(kind)})", field=name)
    foreign = RESOURCES if family == "attention" else SHAPE + CACHE
    stray = [k for k in foreign if values.get(k) is not None]
    if stray:
        raise InputError(f"not a field of {clip(kind)} jobs; leave it empty", field=stray[0])
    common: dict[str, Any] = {k: values.get(k)
                              for k in ("id", "submit_time", "depends_on", "deadline")}
    common["tenant"] = values.get("tenant") or "default"
    common["priority"] = 0 if values.get("priority") is None else values["priority"]
    if family == "cluster":
        mib = values.get("memory_mib")
        if mib is not None and not (isinstance(mib, int | float) and 0 <= mib < 2**40):
            raise InputError(f"expected MiB in [0, 2^40), got {clip(mib)}", field="memory_mib")
        optional: dict[str, Any] = {k: values[k] for k in ("gpus", "gpu_fraction", "cpus")
                    if values.get(k) is not None}
        return ClusterJob(duration=values["duration"], memory_bytes=round((mib or 0) * MIB),
                          **common, **optional)
    shape: dict[str, Any] = {k: values[k] for k in SHAPE + CACHE if values.get(k) is not None}
    shape.setdefault("kv_heads", shape["heads"])
    return AttentionJob(kind=kind, **common, **shape)


def record_from_job(job: Job) -> dict[str, Any]:
    """The canonical row of a job, only with the fields of its kind."""
    row: dict[str, Any] = {"id": job.id, "submit_time": job.submit_time, "kind": job.kind.value,
                           "tenant": job.tenant, "priority": job.priority}
    if job.deadline is not None:
        row["deadline"] = job.deadline
    if job.depends_on is not None:
        row["depends_on"] = job.depends_on
    if isinstance(job, ClusterJob):
        row.update(duration=job.duration, gpus=job.gpus, gpu_fraction=job.gpu_fraction,
                   cpus=job.cpus, memory_mib=job.memory_bytes / MIB)
    else:
        row.update(batch=job.batch, heads=job.heads, kv_heads=job.kv_heads, q_len=job.q_len,
                   kv_len=job.kv_len, head_dim=job.head_dim, layers=job.layers,
                   dtype=job.dtype.value, causal=job.causal, steps=job.steps)
        if job.prefix_blocks:
            row.update(prefix_blocks=list(job.prefix_blocks), block_tokens=job.block_tokens)
    return row


def _located(e: InputError, path: Path, line: int) -> InputError:
    return e.located(path=path, line=line)


def read_jsonl(path: Path) -> Iterator[tuple[int, Job]]:
    for line, text in iter_lines(path):
        try:
            record = json_line(text)
        except InputError as e:
            raise _located(e, path, line) from None
        if not isinstance(record, dict):
            raise InputError("expected a JSON object per line", path=path, line=line)
        try:
            yield line, job_from_record(record)
        except InputError as e:
            raise _located(e, path, line) from None


def read_csv(path: Path) -> Iterator[tuple[int, Job]]:
    """Rows with the file's own line numbers (blank lines and CRLF counted as the file has
    them, not as ``csv.reader.line_num`` counts the lines it was given)."""
    pulled: list[int] = []  # file lines of the record being parsed; more than one if quoted

    def texts() -> Iterator[str]:
        for number, text in iter_lines(path):
            pulled.append(number)
            yield text

    def where() -> int | None:
        return pulled[0] if pulled else None

    reader = csv.reader(texts())
    try:
        header = [h.strip() for h in next(reader)]
        if len(set(header)) != len(header):
            raise InputError("duplicate column in header", path=path, line=where())
        for name in header:
            if name not in FIELDS:
                raise InputError(f"unknown column; expected some of {', '.join(FIELDS)}",
                                 path=path, line=where(), field=shown(name))
        pulled.clear()
        for cells in reader:
            line = pulled[0]
            pulled.clear()
            if len(cells) != len(header):
                raise InputError(f"expected {len(header)} fields, got {len(cells)}"
                                 + (" (truncated line?)" if len(cells) < len(header) else ""),
                                 path=path, line=line)
            try:
                yield line, job_from_record(dict(zip(header, cells, strict=True)),
                                            from_text=True)
            except InputError as e:
                raise _located(e, path, line) from None
    except csv.Error as e:
        raise InputError(f"malformed CSV: {shown(e)}", path=path, line=where()) from None


def write_jsonl(jobs: Iterable[Job], path: Path) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as out:
        for job in jobs:
            out.write(json.dumps(record_from_job(job), separators=(",", ":")) + "\n")
            n += 1
    return n


def write_csv(jobs: Iterable[Job], path: Path) -> int:
    n = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
        for job in jobs:
            row = record_from_job(job)
            writer.writerow([_cell(row.get(k)) for k in FIELDS])
            n += 1
    return n


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)
