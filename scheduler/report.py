"""Reports of finished runs (``report.md`` with four plots) and comparisons of policies.

The run directory (DESIGN.md, "Outputs of a run") is the only input, so a report can be
rebuilt long after a sim or live run. Same inputs give the same ``report.md`` bytes, and the
PNGs embed no date or version, so regenerating them is a no-op in diffs. Plots draw on an
Agg canvas through matplotlib's object API, not ``pyplot``: no global backend switch, no
figure registry to leak, and importing this module loads no matplotlib at all.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
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
    return text.replace("|", "\\|").replace("\n", " ")


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


def _read_table(path: Path, required: Sequence[str]) -> pa.Table:
    """Read and check columns; an empty table may lack them (a run with no telemetry)."""
    table = pq.read_table(_require(path))
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
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, alpha=0.3)
    return ax


def _save(ax: Any, path: Path) -> None:
    """Write without date or version metadata so reruns give identical files."""
    ax.figure.savefig(path, format="png", metadata={"Software": None}, bbox_inches="tight")


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="gray")


def plot_jct_cdf(series: Mapping[str, Floats], path: Path, title: str) -> None:
    """Empirical CDFs; log x once the JCTs span more than two decades, else the tail hides."""
    ax = _new_axes(title, "job completion time (s)", "fraction of completed jobs")
    finite = {name: np.sort(v[np.isfinite(v)]) for name, v in series.items()}
    values = np.concatenate(list(finite.values()) or [np.empty(0)])
    if values.size == 0:
        _note(ax, "no completed jobs")
    else:
        positive = values[values > 0]
        if positive.size and positive.max() / positive.min() > 100:
            ax.set_xscale("log")
        for name, v in finite.items():
            if v.size:
                y = np.arange(1, v.size + 1) / v.size
                ax.step(v, y, where="post", label=f"{name} (n={v.size:,})")
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


def plot_queue(telemetry: pa.Table, jobs: pa.Table, path: Path, title: str) -> None:
    """Queue length per tick; queue_len is cluster-wide, so one value per tick time."""
    if telemetry.num_rows:
        times, _, _, queue = _by_time(_floats(telemetry, "time"), _floats(telemetry, "queue_len"))
        source = "telemetry"
    else:
        times, queue = _pending_from_jobs(_floats(jobs, "submit"), _floats(jobs, "start"),
                                          _floats(jobs, "end"))
        source = "derived from job submit/start times"
    ax = _new_axes(f"{title}\npending jobs ({source})", "time (s)", "pending jobs")
    if times.size:
        from matplotlib.ticker import MaxNLocator

        ax.step(times, queue, where="post", color="tab:blue")
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        _note(ax, "no queue data")
    _save(ax, path)


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
            ax.plot(time[sel][order], util[sel][order], label=name, linewidth=1)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  ncol=1 if len(names) <= 8 else 2, title="device")
    else:
        times, low, mean, high = _by_time(time, util)
        ax.fill_between(times, low, high, alpha=0.25, label="min..max across devices")
        ax.plot(times, mean, label=f"mean of {len(names)} devices")
        ax.legend(loc="lower right")
    ax.set_ylim(0, 105)
    _save(ax, path)


def tenant_shares(jobs: pa.Table, bins: int = SHARE_BINS) -> tuple[Floats, dict[str, Floats]]:
    """Bin edges and each tenant's share (0..1) of completed device-time per bin.

    Counts the overlap of each finished job's [start, end] with each bin, so a
    long job spreads over the bins it ran in rather than landing in one.
    """
    start, end = _floats(jobs, "start"), _floats(jobs, "end")
    done = np.array([s == "done" for s in _strings(jobs, "status")], dtype=bool)
    ok = done & np.isfinite(start) & np.isfinite(end) & (end >= start)
    if not ok.any():
        return np.empty(0), {}
    lo, hi = float(start[ok].min()), float(end[ok].max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    tenants = np.array(_strings(jobs, "tenant"), dtype=object)[ok]
    s, e = start[ok], end[ok]
    busy: dict[str, Floats] = {}
    for tenant in sorted({str(t) for t in tenants}):
        sel = tenants == tenant
        overlap = (np.minimum(e[sel, None], edges[None, 1:])
                   - np.maximum(s[sel, None], edges[None, :-1]))
        busy[tenant] = np.clip(overlap, 0, None).sum(axis=0)
    if len(busy) > MAX_TENANT_AREAS:
        ranked = sorted(busy, key=lambda t: (-busy[t].sum(), t))
        kept = {t: busy[t] for t in ranked[:MAX_TENANT_AREAS - 1]}
        kept["other"] = np.sum([busy[t] for t in ranked[MAX_TENANT_AREAS - 1:]], axis=0)
        busy = kept
    total = np.sum(list(busy.values()), axis=0)
    scale = np.divide(1.0, total, out=np.zeros_like(total), where=total > 0)
    return edges, {t: v * scale for t, v in busy.items()}


def plot_tenant_share(jobs: pa.Table, path: Path, title: str) -> None:
    """Stacked steps, not interpolated areas: each bin is a measured total, not a sample."""
    edges, shares = tenant_shares(jobs)
    ax = _new_axes(f"{title}\nshare of completed device-time per tenant", "time (s)",
                   "share of device-time (%)", width=9.5)
    if shares:
        ax.stackplot(edges, *(100 * np.append(v, v[-1]) for v in shares.values()),
                     labels=list(shares), alpha=0.85, step="post")
        ax.set_ylim(0, 100)
        ax.set_xlim(edges[0], edges[-1])
        handles, labels = ax.get_legend_handles_labels()  # reversed: legend reads like the stack
        ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize="small", title="tenant")
    else:
        _note(ax, "no completed jobs")
    _save(ax, path)


def _group_rows(keys: list[str | None], status: list[str | None], jct: Floats,
                slowdown: Floats) -> list[list[str]]:
    rows = []
    names = np.array(["—" if k is None else k for k in keys], dtype=object)
    done = np.array([s == "done" for s in status], dtype=bool)
    for name in sorted(set(names.tolist())):
        sel = names == name
        j = jct[sel & np.isfinite(jct)]
        sd = slowdown[sel & np.isfinite(slowdown)]
        rows.append([str(name), f"{int(sel.sum()):,}", f"{int((sel & done).sum()):,}",
                     fmt_seconds(j.mean()) if j.size else "—",
                     fmt_seconds(np.percentile(j, 99)) if j.size else "—",
                     f"{sd.mean():.3g}×" if sd.size else "—"])
    return rows


def _summary_lines(summary: Mapping[str, Any]) -> list[str]:
    keys = [k for k in SUMMARY_ORDER if k in summary]
    keys += sorted(k for k in summary if k not in SUMMARY_ORDER)
    return _md_table(["metric", "value"], [[k, fmt_value(k, summary[k])] for k in keys])


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` into ``run_dir``; returns the report's path.

    Rewrites both on every call (idempotent). Raises :class:`InputError` when a
    run file is missing or lacks the columns the report needs.
    """
    run_dir = Path(run_dir)
    summary = _read_summary(run_dir)
    jobs = _read_table(run_dir / "jobs.parquet", JOB_COLUMNS)
    telemetry = _read_table(run_dir / "telemetry.parquet", TELEMETRY_COLUMNS)
    policy, mode = str(summary.get("policy", "?")), str(summary.get("mode", "?"))
    title = f"{policy} ({mode})"
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    jct, status = _done_jct(jobs), _strings(jobs, "status")
    plot_jct_cdf({policy: jct}, plots / "jct_cdf.png", f"{title}\nJCT CDF")
    plot_queue(telemetry, jobs, plots / "queue.png", title)
    plot_utilization(telemetry, plots / "utilization.png", title)
    plot_tenant_share(jobs, plots / "tenant_share.png", title)

    slowdown = _floats(jobs, "slowdown")
    group_header = ["jobs", "completed", "mean JCT", "p99 JCT", "mean slowdown"]
    failed = [r or "(no reason given)" for r, s in zip(_strings(jobs, "reason"), status,
                                                         strict=True) if s != "done"]
    lines = [f"# Run report: {policy} ({mode})", "", "## Summary", "", *_summary_lines(summary),
             "", "## Per tenant", "",
             *_md_table(["tenant", *group_header],
                        _group_rows(_strings(jobs, "tenant"), status, jct, slowdown)),
             "", "## Per kind", "",
             *_md_table(["kind", *group_header],
                        _group_rows(_strings(jobs, "kind"), status, jct, slowdown)),
             "", "## Failures", ""]
    if failed:
        top = sorted(Counter(failed).items(), key=lambda kv: (-kv[1], kv[0]))
        lines += [f"{len(failed):,} failed, by reason (most common first, at most 10):",
                  "", *_md_table(["reason", "jobs"], [[r, f"{n:,}"] for r, n in top[:10]])]
    else:
        lines.append("No failures.")
    lines += ["", "## Plots", ""]
    for name, caption in PLOTS.items():
        lines += [f"### {caption}", "", f"![{caption}](plots/{name}.png)", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    log.info("wrote %s", path)
    return path


def write_comparison(run_dirs: Mapping[str, Path], out_dir: Path) -> Path:
    """Compare runs of several policies on one trace; returns the path of ``comparison.md``.

    Rows keep the mapping's order, so the caller decides how policies are listed.
    """
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    summaries = {name: _read_summary(Path(d)) for name, d in run_dirs.items()}
    series = {name: _done_jct(_read_table(Path(d) / "jobs.parquet", JOB_COLUMNS))
              for name, d in run_dirs.items()}
    plot_jct_cdf(series, out_dir / "plots" / "jct_cdf.png", "JCT CDF by policy")

    header, *rows = _compared_rows(summaries, lambda cell: f"**{cell}**")
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
