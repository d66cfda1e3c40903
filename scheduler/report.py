"""Reports of finished runs (``report.md`` with four plots) and comparisons of policies.

The run directory (DESIGN.md, "Outputs of a run") is the only input, so a report can be
rebuilt long after a sim or live run. Same inputs give the same ``report.md`` bytes, and the
PNGs embed no date or version, so regenerating them is a no-op in diffs. Importing this
module loads no matplotlib at all.

This module writes the pages and reads ``jobs.parquet`` in batches; the parts it is built
from sit beside it, and every name they export is importable from here too:
:mod:`scheduler.report_text` (values formatted, Markdown escaped, comparison rows),
:mod:`scheduler.report_data` (run files read and reduced to figures) and
:mod:`scheduler.report_figures` (the plots of ``report.md``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scheduler.errors import InputError
from scheduler.report_data import (
    JOB_COLUMNS,
    MAX_REASONS,
    MAX_TENANT_AREAS,
    SHARE_BINS,
    TELEMETRY_COLUMNS,
    Floats,
    JobStats,
    TenantShares,
    _done_jct,
    _read_summary,
    _read_table,
    area_under,
    require_output,
    tenant_shares,
)
from scheduler.report_figures import (
    DPI,
    MAX_CDF_POINTS,
    MAX_DEVICE_LINES,
    F,
    cdf_points,
    plain_text,
    plot_jct_cdf,
    plot_queue,
    plot_shares,
    plot_tenant_share,
    plot_text,
    plot_utilization,
)
from scheduler.report_text import (
    BEST,
    BEST_MEANS,
    COMPARED,
    OPTIONAL,
    PERCENT,
    SECONDS,
    SUMMARY_ORDER,
    UNITS,
    WORDED,
    _compared_rows,
    _md_table,
    best_means,
    compared_columns,
    fmt_seconds,
    fmt_value,
    md_text,
    placed_by_text,
    policy_label,
    summary_table_rows,
)

__all__ = [
    "BATCH_ROWS", "BEST", "BEST_MEANS", "COMPARED", "DPI", "JOB_COLUMNS", "MAX_CDF_POINTS",
    "MAX_DEVICE_LINES", "MAX_REASONS", "MAX_TENANT_AREAS", "OPTIONAL", "PERCENT", "PLOTS",
    "REPORT_COLUMNS", "SECONDS", "SHARE_BINS", "SUMMARY_ORDER", "TELEMETRY_COLUMNS", "UNITS", "F",
    "Floats", "JobStats", "TenantShares", "area_under", "best_means", "cdf_points",
    "compared_columns", "fmt_seconds", "fmt_value", "job_batches", "md_text", "plain_text",
    "plot_jct_cdf", "plot_queue", "plot_shares", "plot_tenant_share", "plot_text",
    "plot_utilization", "read_jobs", "summary_table_rows", "tenant_shares", "write_comparison",
    "write_report"]

log = logging.getLogger(__name__)

PLOTS = {"jct_cdf": "JCT CDF", "queue": "Queue length over time",
         "utilization": "Device utilization over time",
         "tenant_share": "Tenant share of device-time"}
BATCH_ROWS = 65_536  # rows of jobs.parquet the report holds at a time
REPORT_COLUMNS = (*JOB_COLUMNS, "slowdown", "reason")


def job_batches(path: Path, columns: Sequence[str] = JOB_COLUMNS,
                required: Sequence[str] = JOB_COLUMNS) -> Iterator[pa.Table]:
    """``jobs.parquet`` in tables of at most BATCH_ROWS rows, only ``columns`` read."""
    file = pq.ParquetFile(require_output(path))
    names = file.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing and file.metadata.num_rows:
        raise InputError(f"missing columns {missing}; expected at least {list(required)}",
                         path=path)
    present = [c for c in columns if c in names]
    for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=present):
        yield pa.Table.from_batches([batch])


def _summary_lines(summary: Mapping[str, Any]) -> list[str]:
    keys = [k for k in SUMMARY_ORDER if k in summary]
    keys += sorted(k for k in summary if k not in SUMMARY_ORDER and k not in WORDED)
    rows = [[k, fmt_value(k, summary[k])] for k in keys]
    fallback = summary.get("fallback")
    if isinstance(fallback, Mapping):
        rows.insert(1, ["fallback", f"{fallback.get('policy')} took over: "
                                    f"{fallback.get('why')}"])
    placed = placed_by_text(summary)
    if placed is not None:
        rows.insert(1, ["placed by", placed])
    return _md_table(["metric", "value"], rows)


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
    policy = policy_label(str(summary.get("policy", "?")), summary)
    mode = str(summary.get("mode", "?"))
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
    lines += [*_md_table(header, rows), "", best_means(summaries), "",
              "![JCT CDF by policy](plots/jct_cdf.png)"]
    path = out_dir / "comparison.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "comparison.json").write_text(
        json.dumps(summaries, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("wrote %s", path)
    return path
