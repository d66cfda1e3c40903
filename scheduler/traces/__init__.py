"""Reading and writing job traces: the canonical format and real-trace importers.

``open_trace(path)`` detects the format and returns a :class:`Trace` whose
``jobs()`` streams validated jobs in submit order. Unsorted times, duplicate
ids and dependencies on a job not listed earlier are errors located at the
offending line, not silent reorders or failures at run time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from scheduler.errors import InputError
from scheduler.idset import IdSet
from scheduler.inputfiles import clip, regular_file
from scheduler.jobs import Job
from scheduler.presets import ModelPreset, get_preset
from scheduler.traces import canonical, importers
from scheduler.traces.textio import first_line

FORMATS = ("auto", "canonical", "azure", "mooncake", "alibaba")
TEXT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
PARQUET_SUFFIXES = (".parquet", ".pq")
DEFAULT_MODEL = "llama3-8b"


@dataclass(frozen=True)
class Trace:
    """A trace file, its detected format and the preset that shapes token traces."""

    path: Path
    format: str  # azure | mooncake | alibaba | jsonl | csv | parquet
    preset: ModelPreset

    def jobs(self) -> Iterator[Job]:
        """Validated jobs in submit order; raises InputError at the first bad row."""
        for _, job in self.rows():
            yield job

    def rows(self, *, ordered: bool = True) -> Iterator[tuple[int, Job]]:
        """``(line, job)`` pairs, checked for unique ids and (if ``ordered``) time order
        and dependencies; a trace without a single job is an error.

        A job may depend only on a job listed before it, so the ids already
        seen are all a check needs: a missing or later job, or a cycle (whose
        first member must name a later one), is refused at its line, and any
        prefix of the trace (``--limit``) is complete. Unordered rows are for
        sorting first: :meth:`sorted_rows` checks their dependencies after.
        """
        reader = self._reader()
        last = 0.0
        seen = IdSet()
        for line, job in reader(self.path):
            if ordered and job.submit_time < last:
                raise InputError(f"{job.submit_time:g} is earlier than the previous row's "
                                 f"{last:g}; traces must be sorted by time "
                                 "(`attnsched trace convert --sort` fixes it)",
                                 path=self.path, line=line, field="submit_time")
            if job.id in seen:
                raise InputError(f"duplicate id {clip(job.id)}", path=self.path, line=line,
                                 field="id")
            if ordered:
                _check_dependency(self.path, line, job, seen)
            seen.add(job.id)
            last = job.submit_time
            yield line, job
        if not seen:
            raise InputError("no jobs: the trace has a header but no rows", path=self.path)

    def sorted_rows(self) -> list[tuple[int, Job]]:
        """Every row sorted by submit time (stable: ties keep file order), in memory,
        with dependencies checked in the sorted order."""
        rows = sorted(self.rows(ordered=False), key=lambda row: row[1].submit_time)
        seen = IdSet()
        for line, job in rows:
            _check_dependency(self.path, line, job, seen)
            seen.add(job.id)
        return rows

    def _reader(self) -> Callable[[Path], Iterable[tuple[int, Job]]]:
        if self.format == "azure":
            return lambda p: importers.read_azure(p, self.preset)
        if self.format == "mooncake":
            return lambda p: importers.read_mooncake(p, self.preset)
        if self.format == "alibaba":
            return importers.read_alibaba_pods
        if self.format == "parquet":
            from scheduler.traces.parquet import read_parquet
            return read_parquet
        return canonical.read_jsonl if self.format == "jsonl" else canonical.read_csv


def _check_dependency(path: Path, line: int, job: Job, seen: IdSet) -> None:
    if job.depends_on is not None and job.depends_on not in seen:
        raise InputError(f"{clip(job.depends_on)} is not a job earlier in the trace; a job "
                         "may depend only on a job listed before it (not a missing or later "
                         "job, nor a cycle)", path=path, line=line, field="depends_on")


def detect_format(path: Path, hint: str = "auto") -> str:
    """The concrete format of ``path``: from ``hint``, the suffix and the header."""
    if hint not in FORMATS:
        raise InputError(f"expected one of {', '.join(FORMATS)}, got {hint!r}", field="--format")
    suffix = path.suffix.lower()
    regular_file(path, what="trace file")  # a FIFO or device is refused before any open
    if suffix in PARQUET_SUFFIXES:
        if hint not in ("auto", "canonical"):
            raise InputError(f"Parquet traces are canonical, not {hint}", path=path,
                             field="--format")
        return "parquet"
    if suffix not in TEXT_SUFFIXES:
        raise InputError("unknown file type; expected .jsonl, .csv or .parquet", path=path)
    encoding = TEXT_SUFFIXES[suffix]
    if hint == "canonical":
        return encoding
    if hint != "auto":
        return hint
    head = first_line(path)
    if encoding == "csv":
        columns = {c.strip() for c in head.split(",")}
        if {"TIMESTAMP", "ContextTokens"} <= columns:
            return "azure"
        if {"name", "cpu_milli", "creation_time"} <= columns:
            return "alibaba"
        if {"sn", "gpu", "model"} <= columns:
            raise InputError("this is a node list, not a trace; see `attnsched cluster show`",
                             path=path, line=1)
        return "csv"
    try:
        record = json.loads(head)
    except (ValueError, RecursionError):
        return "jsonl"  # the canonical reader reports the error with its line
    if isinstance(record, dict) and "input_length" in record:
        return "mooncake"
    return "jsonl"


def open_trace(path: str | Path, fmt: str = "auto", model: str | None = None,
               token_scale: float = 1.0) -> Trace:
    """Open a trace, detecting its format; ``model`` shapes token traces."""
    p = Path(path)
    preset = get_preset(model or DEFAULT_MODEL, token_scale)
    return Trace(p, detect_format(p, fmt), preset)


def write_trace(jobs: Iterable[Job], path: str | Path) -> int:
    """Write jobs in the canonical format chosen by the suffix; returns the count."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        from scheduler.traces.parquet import write_parquet
        return write_parquet(jobs, p)
    if TEXT_SUFFIXES.get(suffix) == "jsonl":
        return canonical.write_jsonl(jobs, p)
    if suffix == ".csv":
        return canonical.write_csv(jobs, p)
    raise InputError("unknown output type; expected .jsonl, .csv or .parquet", path=p)


__all__ = ["FORMATS", "Trace", "detect_format", "open_trace", "write_trace"]
