"""What reports compute from a run directory's files: columns, queue series, shares, groups.

Reads ``summary.json``, ``jobs.parquet`` and ``telemetry.parquet`` with the checks a
report needs (missing files and columns are :class:`InputError`), and reduces them to
the arrays and per-tenant / per-kind figures that the tables and plots show. Jobs are
added one bounded batch at a time (:class:`JobStats`, :class:`TenantShares`), so a
report of a million jobs fits where the run did.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scheduler.errors import InputError
from scheduler.metrics import PARTIAL
from scheduler.report_text import fmt_seconds

Floats = npt.NDArray[np.float64]

JOB_COLUMNS = ("id", "tenant", "kind", "submit", "start", "end", "jct", "status")
TELEMETRY_COLUMNS = ("time", "device", "util", "queue_len")
MAX_TENANT_AREAS = 10  # more tenants than this: the smallest are summed into "other"
SHARE_BINS = 50
MAX_REASONS = 1_000  # distinct failure reasons counted one by one; the rest share a bucket


def require_output(path: Path) -> Path:
    if not path.exists():
        if path.with_name(path.name + PARTIAL).exists():
            raise InputError(f"missing: the run was stopped before it finished ({path.name}"
                             f"{PARTIAL} holds what it wrote)", path=path)
        raise InputError("missing; expected a run directory written by `attnsched run`",
                         path=path)
    return path


def _read_table(path: Path, required: Sequence[str],
                columns: Sequence[str] | None = None) -> pa.Table:
    """Read and check columns; an empty table may lack them (a run with no telemetry).

    ``columns``: read only these (those present), the rest are never decoded.
    """
    names = pq.read_schema(require_output(path)).names
    table = pq.read_table(path, columns=None if columns is None else
                          [c for c in columns if c in names])
    missing = [c for c in required if c not in table.column_names]
    if missing and table.num_rows:
        raise InputError(f"missing columns {missing}; expected at least {list(required)}",
                         path=path)
    return table


def _floats(table: pa.Table, name: str) -> Floats:
    """A column as float64 with NaN for nulls; an absent optional column is all NaN."""
    if name not in table.column_names:
        return np.full(table.num_rows, np.nan)
    column = table.column(name).cast(pa.float64())
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def _strings(table: pa.Table, name: str) -> list[str | None]:
    if name not in table.column_names:
        return [None] * table.num_rows
    return [None if v is None else str(v) for v in table.column(name).to_pylist()]


def _done(jobs: pa.Table) -> npt.NDArray[np.bool_]:
    if "status" not in jobs.column_names:
        return np.zeros(jobs.num_rows, dtype=bool)
    done = pc.fill_null(pc.equal(jobs.column("status"), "done"), False)
    return np.asarray(done.to_numpy(zero_copy_only=False), dtype=bool)


def _done_jct(jobs: pa.Table) -> Floats:
    """JCTs of completed jobs, NaN elsewhere: a failed job's time is not a completion time."""
    return np.where([s == "done" for s in _strings(jobs, "status")], _floats(jobs, "jct"), np.nan)


def _read_summary(run_dir: Path) -> dict[str, Any]:
    path = require_output(run_dir / "summary.json")
    summary = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(summary, dict):
        raise InputError("expected a JSON object of summary metrics", path=path)
    return summary


def _pending_from_jobs(submit: Floats, start: Floats, end: Floats) -> tuple[Floats, Floats]:
    """Pending count over time when no telemetry was recorded.

    A job is pending from submit to start; one that never started leaves the
    queue when it failed (its end), or never, if it has no end either.
    """
    leave = np.where(np.isfinite(start), start, end)
    times, steps = np.r_[submit, leave], np.r_[np.ones(submit.size), -np.ones(leave.size)]
    ok = np.isfinite(times)
    uniq, inverse = np.unique(times[ok], return_inverse=True)
    return uniq, np.cumsum(np.bincount(inverse, weights=steps[ok], minlength=uniq.size))


def _by_time(time: Floats, values: Floats) -> tuple[Floats, Floats, Floats, Floats]:
    """Per distinct tick time: (time, min, mean, max) over the rows of that tick."""
    ok = np.isfinite(time) & np.isfinite(values)
    order = np.argsort(time[ok], kind="stable")
    t, v = time[ok][order], values[ok][order]
    if t.size == 0:
        return np.empty(0), np.empty(0), np.empty(0), np.empty(0)
    starts = np.flatnonzero(np.r_[True, np.diff(t) > 0])
    mean = np.add.reduceat(v, starts) / np.diff(np.r_[starts, t.size])
    return t[starts], np.minimum.reduceat(v, starts), mean, np.maximum.reduceat(v, starts)


def area_under(begin: Floats, end: Floats, x: Floats) -> Floats:
    """At each ``x``: the area under the count of intervals [begin, end) open before it.

    Its difference over a bin is the time the intervals spent in the bin, found
    by sorting, in memory linear in the intervals (not intervals × bins).
    """
    def under(points: Floats) -> Floats:
        order = np.sort(points)
        cumulative = np.r_[0.0, np.cumsum(order)]
        n = np.searchsorted(order, x, side="right")
        result: Floats = n * x - cumulative[n]
        return result

    return under(begin) - under(end)


def _share_rows(jobs: pa.Table) -> tuple[Floats, Floats, npt.NDArray[Any]]:
    """(start, end, tenant) of the completed jobs of ``jobs`` with a valid span."""
    start, end = _floats(jobs, "start"), _floats(jobs, "end")
    ok = _done(jobs) & np.isfinite(start) & np.isfinite(end) & (end >= start)
    tenants = np.array(["—" if t is None else t for t in _strings(jobs, "tenant")],
                       dtype=object)
    return start[ok], end[ok], tenants[ok]


@dataclass
class TenantShares:
    """Each tenant's completed device-time per time bin, added one batch of jobs at a time."""

    edges: Floats
    busy: dict[str, Floats] = field(default_factory=dict)

    @classmethod
    def spanning(cls, lo: float, hi: float, bins: int = SHARE_BINS) -> TenantShares:
        return cls(np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1))

    def add(self, jobs: pa.Table) -> None:
        s, e, tenants = _share_rows(jobs)
        if not s.size:
            return
        names, inverse = np.unique(tenants.astype(str), return_inverse=True)
        for i, tenant in enumerate(names.tolist()):
            sel = inverse == i
            time = np.clip(np.diff(area_under(s[sel], e[sel], self.edges)), 0, None)
            self.busy[tenant] = self.busy.get(tenant, 0.0) + time

    def shares(self) -> tuple[Floats, dict[str, Floats]]:
        """Bin edges and shares (0..1) per bin; past MAX_TENANT_AREAS, the smallest
        tenants are summed into ``other``."""
        busy = {t: self.busy[t] for t in sorted(self.busy)}
        if not busy:
            return np.empty(0), {}
        if len(busy) > MAX_TENANT_AREAS:
            ranked = sorted(busy, key=lambda t: (-busy[t].sum(), t))
            kept = {t: busy[t] for t in ranked[:MAX_TENANT_AREAS - 1]}
            kept["other"] = np.sum([busy[t] for t in ranked[MAX_TENANT_AREAS - 1:]], axis=0)
            busy = kept
        total = np.sum(list(busy.values()), axis=0)
        scale = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
        return self.edges, {t: v * scale for t, v in busy.items()}


def tenant_shares(jobs: pa.Table, bins: int = SHARE_BINS) -> tuple[Floats, dict[str, Floats]]:
    """Bin edges and each tenant's share (0..1) of completed device-time per bin.

    Counts the overlap of each finished job's [start, end] with each bin, so a
    long job spreads over the bins it ran in rather than landing in one.
    """
    s, e, _ = _share_rows(jobs)
    if not s.size:
        return np.empty(0), {}
    acc = TenantShares.spanning(float(s.min()), float(e.max()), bins)
    acc.add(jobs)
    return acc.shares()


@dataclass
class _Group:
    """One tenant's or kind's jobs, summed batch by batch (JCTs kept for the p99)."""

    jobs: int = 0
    done: int = 0
    jct: list[Floats] = field(default_factory=list)
    slowdown_sum: float = 0.0
    slowdown_n: int = 0

    def row(self, name: str) -> list[str]:
        j = np.concatenate(self.jct) if self.jct else np.empty(0)
        return [name, f"{self.jobs:,}", f"{self.done:,}",
                fmt_seconds(j.mean()) if j.size else "—",
                fmt_seconds(np.percentile(j, 99)) if j.size else "—",
                f"{self.slowdown_sum / self.slowdown_n:.3g}×" if self.slowdown_n else "—"]


def _add_groups(groups: dict[str, _Group], keys: list[str | None], done: npt.NDArray[Any],
                jct: Floats, slowdown: Floats) -> None:
    names, inverse = np.unique(np.array(["—" if k is None else k for k in keys], dtype=str),
                               return_inverse=True)
    for i, name in enumerate(names.tolist()):
        sel = inverse == i
        group = groups.setdefault(name, _Group())
        j, sd = jct[sel & np.isfinite(jct)], slowdown[sel & np.isfinite(slowdown)]
        group.jobs += int(sel.sum())
        group.done += int((sel & done).sum())
        group.jct += [j] if j.size else []
        group.slowdown_sum += float(sd.sum())
        group.slowdown_n += sd.size


@dataclass
class JobStats:
    """What report.md needs from jobs.parquet, gathered one bounded batch at a time.

    Per completed job it keeps only its JCT (8 bytes, twice: by tenant and by
    kind); submit/start/end are kept only when there is no telemetry to plot
    the queue from. Everything else is sums.
    """

    keep_times: bool = False
    tenants: dict[str, _Group] = field(default_factory=dict)
    kinds: dict[str, _Group] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    span: tuple[float, float] = (math.inf, -math.inf)
    times: list[tuple[Floats, Floats, Floats]] = field(default_factory=list)
    batches: int = 0

    def add(self, jobs: pa.Table) -> None:
        self.batches += 1
        done = _done(jobs)
        jct, slowdown = np.where(done, _floats(jobs, "jct"), np.nan), _floats(jobs, "slowdown")
        _add_groups(self.tenants, _strings(jobs, "tenant"), done, jct, slowdown)
        _add_groups(self.kinds, _strings(jobs, "kind"), done, jct, slowdown)
        for reason, failed in zip(_strings(jobs, "reason"), done, strict=True):
            if not failed:
                self._count(reason or "(no reason given)")
        s, e, _ = _share_rows(jobs)
        if s.size:
            self.span = (min(self.span[0], float(s.min())), max(self.span[1], float(e.max())))
        if self.keep_times:
            self.times.append((_floats(jobs, "submit"), _floats(jobs, "start"),
                               _floats(jobs, "end")))

    def _count(self, reason: str) -> None:
        self.failed += 1
        if reason not in self.reasons and len(self.reasons) >= MAX_REASONS:
            reason = "(other reasons)"
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def jct(self) -> Floats:
        return np.concatenate([j for g in self.kinds.values() for j in g.jct] or [np.empty(0)])

    def pending(self) -> pa.Table:
        """submit, start and end of every job, for the queue plot without telemetry."""
        cols = [np.concatenate([t[i] for t in self.times] or [np.empty(0)]) for i in range(3)]
        return pa.table(dict(zip(("submit", "start", "end"), cols, strict=True)))
