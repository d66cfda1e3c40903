"""Canonical traces as Parquet: typed, compressed, read in record batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from scheduler.errors import InputError
from scheduler.inputfiles import regular_file, shown
from scheduler.jobs import Job
from scheduler.traces.canonical import FIELDS, column_type, job_from_record, record_from_job
from scheduler.traces.columns import attention_batch

BATCH_ROWS = 65_536



SCHEMA = pa.schema([pa.field(name, column_type(name), nullable=True) for name in FIELDS])


def read_parquet(path: Path) -> Iterator[tuple[int, Job]]:
    """Yield ``(row_number, job)``; row numbers are 1-based, like lines."""
    regular_file(path, what="trace file")
    try:
        handle = pq.ParquetFile(path)
    except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
        raise InputError(f"not a readable Parquet file: {shown(e)}", path=path) from None
    names = handle.schema_arrow.names
    twice = [n for n in names if names.count(n) > 1]
    if twice:  # a row would keep one of the values silently (CSV refuses this too)
        raise InputError("duplicate column", path=path, field=shown(twice[0]))
    unknown = [n for n in names if n not in FIELDS]
    if unknown:
        raise InputError(f"unknown column; expected some of {', '.join(FIELDS)}", path=path,
                         field=shown(unknown[0]))
    if handle.metadata.num_rows == 0:
        raise InputError("file has no rows", path=path)
    row = 0
    try:
        for batch in handle.iter_batches(batch_size=BATCH_ROWS):
            checked = attention_batch(batch)  # a clean batch, checked a column at a time
            if checked is not None:
                for job in checked:
                    row += 1
                    yield row, job
                continue
            for record in batch.to_pylist():
                row += 1
                clean = {k: v for k, v in record.items() if v is not None}
                try:
                    yield row, job_from_record(clean)
                except InputError as e:
                    raise e.located(path=path, line=row) from None
    except (OSError, pa.ArrowException, UnicodeDecodeError) as e:
        raise InputError(f"corrupt Parquet data: {shown(e)}", path=path,
                         line=row + 1) from None


def write_parquet(jobs: Iterable[Job], path: Path) -> int:
    n = 0
    columns: dict[str, list[Any]] = {k: [] for k in FIELDS}
    with pq.ParquetWriter(path, SCHEMA, compression="zstd") as writer:
        for job in jobs:
            row = record_from_job(job)
            for k in FIELDS:
                columns[k].append(row.get(k))
            n += 1
            if len(columns["id"]) >= BATCH_ROWS:
                writer.write_table(pa.table(columns, schema=SCHEMA))
                columns = {k: [] for k in FIELDS}
        if columns["id"] or n == 0:
            writer.write_table(pa.table(columns, schema=SCHEMA))
    return n
