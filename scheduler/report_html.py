"""One self-contained HTML page (and a Markdown twin) comparing finished runs.

A page that embeds its plots as base64 PNGs opens anywhere, offline, from a mail
attachment or a CI artifact, and never goes stale when the run folders move. The
page and the Markdown are built from the run directories alone (the files
``simulate``, ``compare`` and ``run`` write), with no date or version in them, so
the same runs give the same bytes.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from scheduler.errors import InputError
from scheduler.metrics import PARTIAL
from scheduler.report_data import (
    JOB_COLUMNS,
    TELEMETRY_COLUMNS,
    _done_jct,
    _read_summary,
    _read_table,
)
from scheduler.report_figures import plot_jct_cdf, plot_tenant_share
from scheduler.report_interactive import gantt, jct_cdf, plotly_js, tenants_of, utilization
from scheduler.report_plots import (
    batches,
    default_window,
    plot_device_timeline,
    plot_gantt,
    plot_slo,
    plot_slowdown_by_size,
    slo_by_tenant,
)
from scheduler.report_text import (
    BEST,
    _compared_rows,
    _md_table,
    best_means,
    fmt_value,
    md_text,
    policy_label,
)

log = logging.getLogger(__name__)

RUN_FILES = ("summary.json", "jobs.parquet", "telemetry.parquet")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: .92em; }
th, td { padding: .3em .7em; border-bottom: 1px solid #e4e4e4; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f6f6; } td.best { font-weight: 700; }
figure { margin: 1em 0 2em; } figure img { max-width: 100%; height: auto; }
figcaption { color: #555; font-size: .9em; } code { background: #f3f3f3; padding: 0 .2em; }
p.warn { color: #8a4b00; font-weight: 600; }
"""


@dataclass(frozen=True)
class Run:
    """A finished run as the report reads it; ``label`` names it in legends and tables."""

    label: str
    path: Path
    summary: dict[str, Any]
    jobs: pa.Table
    telemetry: pa.Table


def run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Each path as run folders: itself, or its subfolders when it holds a ``compare``.

    A path that is neither raises :class:`InputError`, so a typo fails before any plot.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise InputError("no such directory; expected the --out of attnsched simulate, "
                             "compare or run", path=path)
        if not path.is_dir():
            raise InputError("not a directory; expected a run directory", path=path)
        if (path / "summary.json").is_file():
            found.append(path)
            continue
        inner = sorted(p for p in path.iterdir() if (p / "summary.json").is_file())
        if not inner and any(path.glob(f"*{PARTIAL}")):
            raise InputError(f"the run was stopped before it finished (its *{PARTIAL} "
                             "files hold what it wrote); run it again", path=path)
        if not inner:
            raise InputError("not a run directory: no summary.json here or in its subfolders "
                             "(expected the --out of attnsched simulate, compare or run)",
                             path=path)
        found += inner
    return found


def _load(path: Path) -> tuple[dict[str, Any], pa.Table, pa.Table]:
    """Read one run's files; unreadable ones are bad input, not internal errors."""
    for name in RUN_FILES:
        if not (path / name).is_file():
            raise InputError(f"missing {name}; is this a finished run directory?", path=path)
    try:
        summary = _read_summary(path)
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=path / "summary.json",
                         line=e.lineno) from None
    tables = []
    for name, columns in (("jobs.parquet", JOB_COLUMNS), ("telemetry.parquet",
                                                           TELEMETRY_COLUMNS)):
        try:
            tables.append(_read_table(path / name, columns))
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"not a readable Parquet file: {e}", path=path / name) from None
    return summary, tables[0], tables[1]


def _labels(loaded: Sequence[tuple[Path, dict[str, Any]]]) -> list[str]:
    """Short unique names: the policy; where two collide, with mode, then with folder."""
    forms: list[Callable[[Path, dict[str, Any]], str]] = [
        lambda p, s: str(s.get("policy", p.name)),
        lambda p, s: f"{s.get('policy', '?')} ({s.get('mode', '?')})",
        lambda p, s: f"{s.get('policy', '?')} ({s.get('mode', '?')}, "
                     f"{'/'.join(p.parts[-2:])})",
        lambda p, s: f"{s.get('policy', '?')} ({s.get('mode', '?')}, {p})"]
    labels = [forms[0](p, s) for p, s in loaded]
    for form in forms[1:]:
        clash = {label for label in labels if labels.count(label) > 1}
        labels = [form(p, s) if label in clash else label
                  for label, (p, s) in zip(labels, loaded, strict=True)]
    clash = {label for label in labels if labels.count(label) > 1}
    return [f"{label} #{i + 1}" if label in clash else label for i, label in enumerate(labels)]


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """Every run under ``paths`` (compare folders expanded), labelled for legends."""
    loaded = [(path, *_load(path)) for path in run_dirs(paths)]
    labels = _labels([(p, s) for p, s, _, _ in loaded])
    return [Run(label, p, s, jobs, tel)
            for label, (p, s, jobs, tel) in zip(labels, loaded, strict=True)]


def parse_window(text: str) -> tuple[float, float]:
    """``START:END`` in seconds of the runs' clock, START < END."""
    start, sep, end = text.partition(":")
    try:
        lo, hi = float(start), float(end)
        if not sep or not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise ValueError
    except ValueError:
        raise InputError(f"expected START:END seconds with START < END, got {text!r}",
                         field="--window") from None
    return lo, hi


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


@dataclass(frozen=True)
class Plot:
    file: str
    caption: str


def trace_groups(runs: Sequence[Run]) -> dict[str, list[Run]]:
    """Runs by the workload they replayed (the trace, and the load it was rescaled to):
    runs are compared only with runs of the same workload."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        load = run.summary.get("load")
        key = str(run.summary.get("trace", "—")) + ("" if load is None else f" at load {load}")
        groups.setdefault(key, []).append(run)
    return groups


def draw_plots(runs: Sequence[Run], plots: Path, window: tuple[float, float] | None
               ) -> tuple[dict[str, list[Plot]], dict[str, list[Plot]], tuple[float, float]]:
    """Write every PNG (report.md's figures); returns each trace's cross-run plots, each
    run's plots and the Gantt window."""
    plots.mkdir(parents=True, exist_ok=True)
    groups = trace_groups(runs)
    shared: dict[str, list[Plot]] = {}
    for g, (trace, group) in enumerate(groups.items()):
        stem = "" if len(groups) == 1 else f"trace{g + 1}_"
        jobs = {r.label: r.jobs for r in group}
        plot_jct_cdf({r.label: _done_jct(r.jobs) for r in group}, plots / f"{stem}jct_cdf.png",
                     "JCT CDF by run")
        plot_slowdown_by_size(jobs, plots / f"{stem}slowdown_by_size.png")
        plot_slo(jobs, plots / f"{stem}slo.png")
        shared[trace] = [
            Plot(f"{stem}jct_cdf.png", "Job completion time CDF (completed jobs)"),
            Plot(f"{stem}slowdown_by_size.png", "Mean slowdown by job size (log-spaced bins)"),
            Plot(f"{stem}slo.png", "SLO attainment per tenant and overall")]
    grouped = {r.label: batches(r.jobs) for r in runs}
    window = window or default_window(list(grouped.values()))
    per_run: dict[str, list[Plot]] = {}
    for i, run in enumerate(runs):
        stem = f"run{i + 1}_{_slug(run.label)}"
        plot_device_timeline(run.telemetry, run.jobs, plots / f"{stem}_timeline.png", run.label)
        plot_gantt(grouped[run.label], window, plots / f"{stem}_gantt.png", run.label)
        per_run[run.label] = [
            Plot(f"{stem}_timeline.png", "Pending jobs, jobs waiting per device, utilization"),
            Plot(f"{stem}_gantt.png", f"Batches per device, {window[0]:.4g}–{window[1]:.4g} s "
                                      "(the number is the batch's job count)")]
        if tenants_of(run.jobs) > 1:  # one tenant's share of everything says nothing
            plot_tenant_share(run.jobs, plots / f"{stem}_tenant_share.png", run.label)
            per_run[run.label].insert(1, Plot(f"{stem}_tenant_share.png",
                                              "Tenant shares of completed device-time"))
    return shared, per_run, window


def _run_rows(runs: Sequence[Run]) -> list[list[str]]:
    rows = [["run", "policy", "mode", "trace", "jobs", "folder"]]
    for r in runs:
        s = r.summary
        rows.append([r.label, policy_label(str(s.get("policy", "?")), s),
                     str(s.get("mode", "?")),
                     str(s.get("trace", "—")), fmt_value("jobs_total", s.get("jobs_total")),
                     str(r.path)])
    return rows


def _slo_rows(runs: Sequence[Run]) -> list[list[str]]:
    tables = {r.label: slo_by_tenant(r.jobs) for r in runs}
    tenants = sorted({t for table in tables.values() for t in table if t != "all"})
    rows = [["run", *tenants, "all"]]
    for label, table in tables.items():
        rows.append([label, *(f"{100 * met / n:.1f}% of {n:,}" if n else "—"
                              for n, met in (table.get(t, (0, 0)) for t in [*tenants, "all"]))])
    return rows if tenants else []


def _html_table(rows: Sequence[Sequence[str]]) -> str:
    head, *body = rows
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in body:
        cells = (f'<td class="best">{html.escape(c[1:])}</td>' if c.startswith(BEST)
                 else f"<td>{html.escape(c)}</td>" for c in row)
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join([*out, "</table>"])


def _figure(plots: Path, plot: Plot) -> str:
    data = base64.b64encode((plots / plot.file).read_bytes()).decode("ascii")
    caption = html.escape(plot.caption)
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>")


def write_html_report(paths: Sequence[Path], out: Path,
                      window: tuple[float, float] | None = None) -> tuple[Path, Path]:
    """Write ``report.html``, ``report.md`` and ``plots/`` into ``out``; returns both pages.

    ``window`` is the Gantt view's (start, end) in seconds; by default the first
    couple of hundred batches. Raises :class:`InputError` for a path that is not a
    run directory, before anything is written. Runs of different workloads (trace,
    load) are compared only among runs of the same one (a warning says so).
    """
    runs = load_runs(paths)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", path=out, field="--out")
    plots = out / "plots"
    shared, per_run, window = draw_plots(runs, plots, window)
    groups = trace_groups(runs)
    if len(groups) > 1:
        log.warning("these runs replay %d different workloads (trace and load): each is "
                    "compared only with the runs of its own", len(groups))
    title = "attnsched report: " + ", ".join(r.label for r in runs)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(_page(title, runs, groups, plots, shared, per_run, window),
                         encoding="utf-8")
    md_path.write_text("\n".join(_markdown(title, runs, groups, shared, per_run)).rstrip("\n")
                       + "\n", encoding="utf-8")
    log.info("wrote %s and %s (Gantt window %.4g–%.4g s)", html_path, md_path, *window)
    return html_path, md_path


MIXED = ("These runs replay different workloads (trace and load): each section compares "
         "only the runs of one, and marks the best among them.")


def _compared(group: Sequence[Run]) -> list[list[str]]:
    rows = _compared_rows({r.label: r.summary for r in group}, lambda cell: BEST + cell)
    rows[0][0] = "run"
    return rows


def _best_means(group: Sequence[Run]) -> str:
    return best_means({r.label: r.summary for r in group})


def _markdown(title: str, runs: Sequence[Run], groups: dict[str, list[Run]],
              shared: dict[str, list[Plot]], per_run: dict[str, list[Plot]]) -> list[str]:
    md = [f"# {md_text(title)}", "", "## Runs", "", *_md_table(*_split(_run_rows(runs))), ""]
    if len(groups) > 1:
        md += [MIXED, ""]
    for trace, group in groups.items():
        head = "##" if len(groups) == 1 else "###"
        if len(groups) > 1:
            md += [f"## Trace {md_text(trace)}", ""]
        md += [f"{head} Summary", "", *_md_table(*_split(_compared(group))), "",
               _best_means(group), ""]
        slo = _slo_rows(group)
        if slo:
            md += [f"{head} SLO attainment per tenant", "", *_md_table(*_split(slo)), ""]
        md += [line for p in shared[trace] for line in (f"![{p.caption}](plots/{p.file})", "")]
    md += ["## Plots per run", ""]
    for label, items in per_run.items():
        md += [f"### {md_text(label)}", ""]
        md += [line for p in items for line in (f"![{p.caption}](plots/{p.file})", "")]
    return md


def _page(title: str, runs: Sequence[Run], groups: dict[str, list[Run]], plots: Path,
          shared: dict[str, list[Plot]], per_run: dict[str, list[Plot]],
          window: tuple[float, float]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>", "<h2>Runs</h2>", _html_table(_run_rows(runs))]
    if len(groups) > 1:
        body.append(f'<p class="warn">{html.escape(MIXED)}</p>')
    for g, (trace, group) in enumerate(groups.items()):
        if len(groups) > 1:
            body.append(f"<h2>Trace {html.escape(trace)}</h2>")
        body += ["<h3>Summary</h3>", _html_table(_compared(group)),
                 f"<p>{html.escape(_best_means(group))}</p>"]
        slo = _slo_rows(group)
        if slo:
            body += ["<h3>SLO attainment per tenant</h3>", _html_table(slo)]
        body += ["<h3>Job completion time CDF</h3>",
                 "<p>Hover a point for its job, where it ran and why it was placed there.</p>",
                 jct_cdf(group, f"jct_cdf_{g + 1}"),
                 "<h3>Utilization per device, side by side</h3>",
                 utilization(group, f"utilization_{g + 1}"),
                 *(_figure(plots, p) for p in shared[trace][1:])]
    for i, run in enumerate(runs):
        body += [f"<h2>{html.escape(run.label)}</h2>",
                 "<p>Batches per device (drag to zoom, double-click to reset).</p>",
                 gantt(run, window, f"gantt_{i + 1}"),
                 *(_figure(plots, p) for p in per_run[run.label] if "_gantt" not in p.file)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n{plotly_js()}\n"
            "</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def _split(rows: Sequence[Sequence[str]]) -> tuple[Sequence[str], Sequence[Sequence[str]]]:
    return rows[0], rows[1:]
