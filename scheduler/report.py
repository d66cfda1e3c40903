"""Reports of finished runs (``report.md`` with four plots) and comparisons of policies.

The run directory (DESIGN.md, "Outputs of a run") is the only input, so a report can be
rebuilt long after a sim or live run. Same inputs give the same ``report.md`` bytes, and the
PNGs embed no date or version, so regenerating them is a no-op in diffs. Plots draw on an
Agg canvas through matplotlib's object API, not ``pyplot``: no global backend switch, no
figure registry to leak, and importing this module loads no matplotlib at all.
"""

from __future__ import annotations

import functools
import html
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from scheduler.errors import InputError

log = logging.getLogger(__name__)

Floats = npt.NDArray[np.float64]

PLOTS = {"jct_cdf": "JCT CDF", "queue": "Queue length over time",
         "utilization": "Device utilization over time",
         "tenant_share": "Tenant share of device-time"}
JOB_COLUMNS = ("id", "tenant", "kind", "submit", "start", "end", "jct", "status")
TELEMETRY_COLUMNS = ("time", "device", "util", "queue_len")
# Comparison columns in table order: (summary key, header, which way is better).
COMPARED = (("jct_mean", "JCT mean", min), ("jct_p50", "JCT p50", min),
            ("jct_p99", "JCT p99", min), ("makespan", "makespan", min),
            ("device_util_mean", "device util", max), ("jain_fairness", "Jain fairness", max),
            ("slo_attainment", "SLO attainment", max))
SECONDS = ("jct_mean", "jct_p50", "jct_p99", "queue_delay_mean", "makespan", "wall_seconds")
PERCENT = ("device_util_mean", "jain_fairness", "slo_attainment")
UNITS = {"slowdown_mean": "×", "throughput_jobs_per_s": " jobs/s", "achieved_tflops": " TFLOP/s"}
SUMMARY_ORDER = ("policy", "mode", "jobs_total", "jobs_completed", "jobs_failed", "jct_mean",
                 "jct_p50", "jct_p99", "queue_delay_mean", "slowdown_mean", "makespan",
                 "throughput_jobs_per_s", "achieved_tflops", "device_util_mean",
                 "jain_fairness", "slo_attainment", "wall_seconds")
MAX_DEVICE_LINES = 16
MAX_TENANT_AREAS = 10  # more tenants than this: the smallest are summed into "other"
SHARE_BINS = 50
DPI = 110
BATCH_ROWS = 65_536  # rows of jobs.parquet the report holds at a time
MAX_CDF_POINTS = 2_000  # a CDF drawn through this many exact ranks looks the same as all
MAX_REASONS = 1_000  # distinct failure reasons counted one by one; the rest share a bucket
BEST = "\x00"  # marks a best cell in table rows until a table renders it (bold or *)
# Markdown punctuation that can start a link, emphasis, code, math or a table cell;
# a backslash before it makes it a literal character everywhere in CommonMark/GFM. An
# ``_`` between two letters or digits (``jobs_total``) never opens emphasis: left as is.
_MD_SPECIAL = re.compile(r"[\\`*{}\[\]()#!|~$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
F = TypeVar("F", bound=Callable[..., Any])


def md_text(text: str) -> str:
    """``text`` as literal Markdown inline text: no link, HTML, emphasis or table break.

    Every run name, tenant, job id, device and reason that reaches a ``.md`` file
    passes through here, so a tenant called ``<script>`` or ``[x](javascript:…)``
    reads as those characters, the way the HTML report shows them.
    """
    escaped = _MD_SPECIAL.sub(r"\\\g<0>", " ".join(text.splitlines()) if text else "")
    return html.escape(escaped, quote=False)


def plot_text(text: str) -> str:
    """``text`` for a matplotlib label, title or tick, drawn as its characters.

    A ``$`` pair would start mathtext (and ``$\\undefined$`` raise at draw time);
    ``\\$`` is matplotlib's literal dollar. A leading ``_`` would hide a legend entry.
    """
    text = text.replace("$", "\\$")
    return " " + text if text.startswith("_") else text


def plain_text(fn: F) -> F:
    """Draw with ``text.usetex`` off whatever the user's matplotlibrc says: under LaTeX
    every ``_``, ``%`` or ``&`` in a tenant name would be markup."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from matplotlib import rc_context

        with rc_context({"text.usetex": False}):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _number(value: Any) -> float | None:
    """The value as a finite float, or None: bools, strings and NaN are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def fmt_seconds(value: Any) -> str:
    """Three significant digits in the unit a person reads fastest; never scientific."""
    x = _number(value)
    if x is None:
        return "—"
    x = float(f"{x:.3g}")  # round first, so 0.9999 reads "1 s", not "1,000 ms"
    scale, unit = ((1.0, "s") if abs(x) >= 1 or x == 0 else
                   (1e-3, "ms") if abs(x) >= 1e-3 else (1e-6, "µs"))
    v = float(f"{x / scale:.3g}")
    return f"{v:,.0f} {unit}" if abs(v) >= 100 else f"{v:.3g} {unit}"


def fmt_value(key: str, value: Any) -> str:
    """Format one summary value by what its key measures; unknown keys get a generic form."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if key in SECONDS:
        return fmt_seconds(value)
    x = _number(value)
    if x is None:
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if key in PERCENT:
        return f"{100 * x:.1f}%"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{x:.3g}{UNITS[key]}" if key in UNITS else f"{x:.4g}"


def _cell(text: str) -> str:
    return f"**{md_text(text[1:])}**" if text.startswith(BEST) else md_text(text)


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _best_flags(summaries: Mapping[str, Mapping[str, Any]]) -> list[list[bool]]:
    """Which cells hold the best value of their column.

    Ties all count as best; a column with fewer than two numbers, or where all
    numbers are equal, marks nothing, since nobody did better there.
    """
    flags = [[False] * len(COMPARED) for _ in summaries]
    for col, (key, _, better) in enumerate(COMPARED):
        values = [_number(s.get(key)) for s in summaries.values()]
        present = [v for v in values if v is not None]
        if len(present) < 2 or min(present) == max(present):
            continue
        best = better(present)
        for row, v in enumerate(values):
            flags[row][col] = v == best
    return flags


def _compared_rows(summaries: Mapping[str, Mapping[str, Any]],
                   mark: Callable[[str], str]) -> list[list[str]]:
    rows = [["policy", *(header for _, header, _ in COMPARED)]]
    for (name, summary), marks in zip(summaries.items(), _best_flags(summaries), strict=True):
        rows.append([name, *(mark(fmt_value(key, summary.get(key))) if best
                             else fmt_value(key, summary.get(key))
                             for (key, _, _), best in zip(COMPARED, marks, strict=True))])
    return rows


def summary_table_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """Header plus one formatted row per run, best cells suffixed with ``*``.

    Plain strings so the CLI can hand them to rich as they are; comparison.md
    has the same columns and order, with bold instead of the marker.
    """
    return _compared_rows(summaries, lambda cell: cell + "*")


def _require(path: Path) -> Path:
    if not path.exists():
        raise InputError("missing; expected a run directory written by `attnsched run`",
                         path=path)
    return path


def _read_table(path: Path, required: Sequence[str],
                columns: Sequence[str] | None = None) -> pa.Table:
    """Read and check columns; an empty table may lack them (a run with no telemetry).

    ``columns``: read only these (those present), the rest are never decoded.
    """
    names = pq.read_schema(_require(path)).names
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


def _done_jct(jobs: pa.Table) -> Floats:
    """JCTs of completed jobs, NaN elsewhere: a failed job's time is not a completion time."""
    return np.where([s == "done" for s in _strings(jobs, "status")], _floats(jobs, "jct"), np.nan)


def _read_summary(run_dir: Path) -> dict[str, Any]:
    path = _require(run_dir / "summary.json")
    summary = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(summary, dict):
        raise InputError("expected a JSON object of summary metrics", path=path)
    return summary


def _new_axes(title: str, xlabel: str, ylabel: str, width: float = 8.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, 4.5), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(title=plot_text(title), xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    return ax


def _save(ax: Any, path: Path) -> None:
    """Write without date or version metadata so reruns give identical files."""
    ax.figure.savefig(path, format="png", metadata={"Software": None}, bbox_inches="tight")


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def cdf_points(values: Floats) -> tuple[Floats, Floats]:
    """Sorted ``values`` and their CDF, thinned to at most MAX_CDF_POINTS exact ranks.

    A million-point step line costs hundreds of MiB to draw and looks like this one.
    """
    v = np.sort(values)
    rank = np.arange(v.size)
    if v.size > MAX_CDF_POINTS:
        rank = np.unique(np.linspace(0, v.size - 1, MAX_CDF_POINTS).round().astype(np.int64))
    return v[rank], (rank + 1) / v.size


@plain_text
def plot_jct_cdf(series: Mapping[str, Floats], path: Path, title: str) -> None:
    """Empirical CDFs; log x once the JCTs span more than two decades, else the tail hides."""
    ax = _new_axes(title, "job completion time (s)", "fraction of completed jobs")
    finite = {name: v[np.isfinite(v)] for name, v in series.items()}
    positive = [v[v > 0] for v in finite.values()]
    lows = [float(v.min()) for v in positive if v.size]
    if not any(v.size for v in finite.values()):
        _note(ax, "no completed jobs")
    else:
        if lows and max(float(v.max()) for v in positive if v.size) / min(lows) > 100:
            ax.set_xscale("log")
        for name, v in finite.items():
            if v.size:
                x, y = cdf_points(v)
                ax.step(x, y, where="post", label=plot_text(f"{name} (n={v.size:,})"))
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right")
    _save(ax, path)


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


def _queue_series(telemetry: pa.Table, jobs: pa.Table | None) -> tuple[Floats, Floats, str]:
    if telemetry.num_rows or jobs is None:
        times, _, _, queue = _by_time(_floats(telemetry, "time"), _floats(telemetry, "queue_len"))
        return times, queue, "telemetry"
    times, queue = _pending_from_jobs(_floats(jobs, "submit"), _floats(jobs, "start"),
                                      _floats(jobs, "end"))
    return times, queue, "derived from job submit/start times"


@plain_text
def plot_queue(telemetry: pa.Table, jobs: pa.Table | None, path: Path, title: str) -> None:
    """Queue length per tick; queue_len is cluster-wide, so one value per tick time.

    ``jobs`` (submit, start and end suffice) stands in when no telemetry was recorded.
    """
    times, queue, source = _queue_series(telemetry, jobs)
    ax = _new_axes(f"{title}\npending jobs ({source})", "time (s)", "pending jobs")
    if times.size:
        from matplotlib.ticker import MaxNLocator

        ax.step(times, queue, where="post", color="tab:blue")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        _note(ax, "no queue data")
    _save(ax, path)


@plain_text
def plot_utilization(telemetry: pa.Table, path: Path, title: str) -> None:
    """One line per device while that stays legible, else the mean with a min..max band."""
    devices = _strings(telemetry, "device")
    names = sorted({d for d in devices if d is not None})
    wide = len(names) <= MAX_DEVICE_LINES
    ax = _new_axes(f"{title}\ndevice utilization", "time (s)", "utilization (%)",
                   width=9.5 if wide and names else 8.0)
    time, util = _floats(telemetry, "time"), 100 * _floats(telemetry, "util")
    if not names:
        _note(ax, "no telemetry recorded")
    elif wide:
        dev = np.array(devices, dtype=object)
        for name in names:
            sel = dev == name
            order = np.argsort(time[sel], kind="stable")
            ax.plot(time[sel][order], util[sel][order], label=plot_text(name), linewidth=1)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  ncol=1 if len(names) <= 8 else 2, title="device")
    else:
        times, low, mean, high = _by_time(time, util)
        ax.fill_between(times, low, high, alpha=0.25, label="min..max across devices")
        ax.plot(times, mean, label=f"mean of {len(names)} devices")
        ax.legend(loc="lower right")
    ax.set_ylim(0, 105)
    _save(ax, path)


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


@plain_text
def plot_shares(edges: Floats, shares: Mapping[str, Floats], path: Path, title: str) -> None:
    """Stacked steps, not interpolated areas: each bin is a measured total, not a sample."""
    ax = _new_axes(f"{title}\nshare of completed device-time per tenant", "time (s)",
                   "share of device-time (%)", width=9.5)
    if shares:
        ax.stackplot(edges, *(100 * np.append(v, v[-1]) for v in shares.values()),
                     labels=[plot_text(t) for t in shares], alpha=0.85, step="post")
        ax.set_ylim(0, 100)
        ax.set_xlim(edges[0], edges[-1])
        handles, labels = ax.get_legend_handles_labels()  # reversed: legend reads like the stack
        ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize="small", title="tenant")
    else:
        _note(ax, "no completed jobs")
    _save(ax, path)


def plot_tenant_share(jobs: pa.Table, path: Path, title: str) -> None:
    plot_shares(*tenant_shares(jobs), path, title)


def _done(jobs: pa.Table) -> npt.NDArray[np.bool_]:
    if "status" not in jobs.column_names:
        return np.zeros(jobs.num_rows, dtype=bool)
    done = pc.fill_null(pc.equal(jobs.column("status"), "done"), False)
    return np.asarray(done.to_numpy(zero_copy_only=False), dtype=bool)


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


def job_batches(path: Path, columns: Sequence[str] = JOB_COLUMNS,
                required: Sequence[str] = JOB_COLUMNS) -> Iterator[pa.Table]:
    """``jobs.parquet`` in tables of at most BATCH_ROWS rows, only ``columns`` read."""
    file = pq.ParquetFile(_require(path))
    names = file.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing and file.metadata.num_rows:
        raise InputError(f"missing columns {missing}; expected at least {list(required)}",
                         path=path)
    present = [c for c in columns if c in names]
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=present):
        yield pa.Table.from_batches([batch])


REPORT_COLUMNS = (*JOB_COLUMNS, "slowdown", "reason")


def _summary_lines(summary: Mapping[str, Any]) -> list[str]:
    keys = [k for k in SUMMARY_ORDER if k in summary]
    keys += sorted(k for k in summary if k not in SUMMARY_ORDER and k != "failed_reasons")
    return _md_table(["metric", "value"], [[k, fmt_value(k, summary[k])] for k in keys])


def _failure_lines(summary: Mapping[str, Any], stats: JobStats) -> list[str]:
    """The summary's tally of reasons (the run's own); counted from the jobs for runs
    written before the summary had one."""
    tally = summary.get("failed_reasons")
    failed = summary.get("jobs_failed")
    if not isinstance(tally, dict) or not isinstance(failed, int) or isinstance(failed, bool):
        tally, failed, most = stats.reasons, stats.failed, 10
    else:
        most = len(tally)
    if not failed:
        return ["No failures."]
    top = sorted(((str(r), n) for r, n in tally.items()), key=lambda kv: (-kv[1], kv[0]))
    return [f"{failed:,} failed, by reason (most common first, at most {most}):", "",
            *_md_table(["reason", "jobs"], [[r, fmt_value("jobs", n)] for r, n in top[:most]])]


def read_jobs(path: Path, keep_times: bool) -> tuple[JobStats, TenantShares]:
    """Two bounded passes over ``jobs.parquet``: the figures, then tenant shares (their
    time bins need the span the first pass found)."""
    stats = JobStats(keep_times=keep_times)
    for batch in job_batches(path, REPORT_COLUMNS):
        stats.add(batch)
    lo, hi = stats.span
    shares = TenantShares.spanning(lo, hi) if lo <= hi else TenantShares(np.empty(0))
    if lo <= hi:
        for batch in job_batches(path, ("tenant", "status", "start", "end")):
            shares.add(batch)
    return stats, shares


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` into ``run_dir``; returns the report's path.

    Rewrites both on every call (idempotent). Raises :class:`InputError` when a
    run file is missing or lacks the columns the report needs. Reads jobs.parquet
    in bounded batches, so a report of a million jobs fits where the run did.
    """
    run_dir = Path(run_dir)
    summary = _read_summary(run_dir)
    telemetry = _read_table(run_dir / "telemetry.parquet", TELEMETRY_COLUMNS,
                            TELEMETRY_COLUMNS)
    stats, shares = read_jobs(run_dir / "jobs.parquet", keep_times=not telemetry.num_rows)
    policy, mode = str(summary.get("policy", "?")), str(summary.get("mode", "?"))
    title = f"{policy} ({mode})"
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_jct_cdf({policy: stats.jct()}, plots / "jct_cdf.png", f"{title}\nJCT CDF")
    plot_queue(telemetry, stats.pending() if stats.keep_times else None,
               plots / "queue.png", title)
    plot_utilization(telemetry, plots / "utilization.png", title)
    plot_shares(*shares.shares(), plots / "tenant_share.png", title)

    group_header = ["jobs", "completed", "mean JCT", "p99 JCT", "mean slowdown"]
    lines = [f"# Run report: {md_text(policy)} ({md_text(mode)})", "", "## Summary", "",
             *_summary_lines(summary), "", "## Per tenant", "",
             *_md_table(["tenant", *group_header],
                        [g.row(n) for n, g in sorted(stats.tenants.items())]),
             "", "## Per kind", "",
             *_md_table(["kind", *group_header],
                        [g.row(n) for n, g in sorted(stats.kinds.items())]),
             "", "## Failures", "", *_failure_lines(summary, stats), "", "## Plots", ""]
    for name, caption in PLOTS.items():
        lines += [f"### {caption}", "", f"![{caption}](plots/{name}.png)", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    log.info("wrote %s", path)
    return path


def _completed_jct(path: Path) -> Floats:
    """JCTs of a run's completed jobs, read a batch (and two columns) at a time."""
    chunks = [_done_jct(batch) for batch in job_batches(path, ("status", "jct"))]
    jct = np.concatenate(chunks or [np.empty(0)])
    return jct[np.isfinite(jct)]


def write_comparison(run_dirs: Mapping[str, Path], out_dir: Path) -> Path:
    """Compare runs of several policies on one trace; returns the path of ``comparison.md``.

    Rows keep the mapping's order, so the caller decides how policies are listed.
    """
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    summaries = {name: _read_summary(Path(d)) for name, d in run_dirs.items()}
    series = {name: _completed_jct(Path(d) / "jobs.parquet") for name, d in run_dirs.items()}
    plot_jct_cdf(series, out_dir / "plots" / "jct_cdf.png", "JCT CDF by policy")

    header, *rows = _compared_rows(summaries, lambda cell: BEST + cell)
    traces = {json.dumps(s.get("trace"), sort_keys=True) for s in summaries.values()}
    lines = ["# Policy comparison", ""]
    if len(traces) > 1:
        log.warning("comparing runs of different traces: %s", sorted(traces))
        lines += ["Warning: these runs used different traces.", ""]
    lines += [*_md_table(header, rows), "", "Best value per column in bold.", "",
              "![JCT CDF by policy](plots/jct_cdf.png)"]
    path = out_dir / "comparison.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "comparison.json").write_text(
        json.dumps(summaries, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("wrote %s", path)
    return path
