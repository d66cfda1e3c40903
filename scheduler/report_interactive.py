"""The HTML report's interactive figures: Plotly, its JavaScript inlined once per page.

Hovering a point of the JCT CDF names the job, its kind, the device it ran on
and the reason the policy gave for placing it; the Gantt of batches zooms and
pans; per-device utilization of the runs sits side by side on one time axis.
Each figure carries a fixed element id and no random one, so the same runs give
the same page. Every string from a run (job ids, devices, reasons) is escaped
before it reaches the page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from scheduler.report_data import _done_jct, _floats, _strings

MAX_POINTS = 2_000  # points per CDF curve: every job up to this, evenly spaced above it
MAX_BARS = 3_000  # Gantt bars per run, from the window's start
MAX_DEVICES = 64  # devices per utilization panel (the busiest)
TIME_BINS = 120
MAX_DECISION_LINES = 2_000_000  # decisions.jsonl lines read for placement reasons
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
CONFIG = {"displaylogo": False, "responsive": True}


def plotly_js() -> str:
    """The whole Plotly library, for the page's head: the page works offline."""
    from plotly.offline import get_plotlyjs

    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def _div(fig: Any, div_id: str) -> str:
    return str(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                           config=CONFIG))


def _text(value: object) -> str:
    return html.escape("" if value is None else str(value))


def placement_reasons(run_dir: Path, wanted: Iterable[str]) -> dict[str, str]:
    """The reason the policy gave for the last placement of each ``wanted`` job."""
    want = set(wanted)
    found: dict[str, str] = {}
    path = run_dir / "decisions.jsonl"
    if not want or not path.is_file():
        return found
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f):
            if n >= MAX_DECISION_LINES:
                break
            if '"applied"' not in line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("action") in ("place", "offload"):
                for job in row.get("jobs") or ():
                    if job in want:
                        found[job] = f"{row['action']}: {row.get('reason', '')}"
    return found


def cdf_points(jobs: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row indices, JCTs, fraction of completed jobs at or below) of the CDF's points."""
    jct = _done_jct(jobs)
    done = np.flatnonzero(np.isfinite(jct))
    order = done[np.argsort(jct[done], kind="stable")]
    n = order.size
    ranks = np.arange(n) if n <= MAX_POINTS else np.unique(
        np.linspace(0, n - 1, MAX_POINTS).round().astype(np.int64))
    return order[ranks], jct[order[ranks]], (ranks + 1) / max(n, 1)


def jct_cdf(runs: Sequence[Any], div_id: str) -> str:
    """Every run's JCT CDF on one log axis; a point's hover tells its job."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, run in enumerate(runs):
        rows, x, y = cdf_points(run.jobs)
        ids, kinds = _strings(run.jobs, "id"), _strings(run.jobs, "kind")
        devices = _strings(run.jobs, "device")
        reasons = placement_reasons(run.path, (ids[r] for r in rows if ids[r] is not None))
        custom = [[_text(ids[r]), _text(kinds[r]), _text(devices[r]),
                   _text(reasons.get(ids[r] or "", "—"))] for r in rows]
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=_text(run.label), customdata=custom,
            line={"dash": DASHES[i % len(DASHES)], "width": 2},
            marker={"size": 5, "symbol": i % 24},
            hovertemplate=("<b>%{customdata[0]}</b> (%{customdata[1]})<br>JCT %{x:.4g} s, "
                           "%{y:.1%} of jobs done by then<br>ran on %{customdata[2]}<br>"
                           "%{customdata[3]}<extra>%{fullData.name}</extra>")))
    fig.update_layout(height=420, margin={"t": 30}, legend={"orientation": "h", "y": -0.2},
                      xaxis={"type": "log", "title": "job completion time (s)"},
                      yaxis={"title": "completed jobs", "tickformat": ".0%"})
    return _div(fig, div_id)


def gantt(run: Any, window: tuple[float, float], div_id: str) -> str:
    """One run's batches per device, the window shown first (zoom and pan for the rest)."""
    import plotly.graph_objects as go

    ids, devices = _strings(run.jobs, "id"), _strings(run.jobs, "device")
    start, end = _floats(run.jobs, "start"), _floats(run.jobs, "end")
    groups: dict[tuple[str, float], list[int]] = {}
    for i in np.flatnonzero(np.isfinite(start) & np.isfinite(end) & (end >= window[0])):
        device = devices[i]
        if device is not None:
            groups.setdefault((device, float(start[i])), []).append(int(i))
    keys = sorted(groups, key=lambda k: (k[1], k[0]))[:MAX_BARS]
    custom = [[_text(", ".join(str(ids[j]) for j in groups[k][:8])
                     + (" …" if len(groups[k]) > 8 else "")), len(groups[k]),
               float(end[groups[k][0]])] for k in keys]
    fig = go.Figure(go.Bar(
        base=[k[1] for k in keys], x=[float(end[groups[k][0]]) - k[1] for k in keys],
        y=[_text(k[0]) for k in keys], orientation="h", customdata=custom,
        marker={"color": [len(groups[k]) for k in keys], "colorscale": "Viridis",
                "colorbar": {"title": "jobs"}},
        hovertemplate=("%{y}<br>%{base:.4g} – %{customdata[2]:.4g} s<br>"
                       "%{customdata[1]} jobs: %{customdata[0]}<extra></extra>")))
    fig.update_layout(height=max(260, 22 * len({k[0] for k in keys}) + 120), margin={"t": 30},
                      xaxis={"title": "time (s)", "range": list(window)},
                      yaxis={"autorange": "reversed"}, bargap=0.15)
    return _div(fig, div_id)


def utilization(runs: Sequence[Any], div_id: str) -> str:
    """Each run's per-device utilization over time, side by side on one time axis."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(runs), shared_yaxes=True, horizontal_spacing=0.02,
                        subplot_titles=[_text(r.label) for r in runs])
    spans = [_floats(r.telemetry, "time") for r in runs if r.telemetry.num_rows]
    edges = np.linspace(min(float(s.min()) for s in spans), max(float(s.max()) for s in spans),
                        TIME_BINS + 1) if spans else np.linspace(0.0, 1.0, TIME_BINS + 1)
    for col, run in enumerate(runs, start=1):
        names, z = _util_grid(run.telemetry, edges)
        fig.add_trace(go.Heatmap(
            z=z, x=(edges[:-1] + edges[1:]) / 2, y=[_text(n) for n in names], zmin=0, zmax=1,
            colorscale="Blues", showscale=col == len(runs), name=_text(run.label),
            hovertemplate="%{y}<br>t=%{x:.4g} s<br>utilization %{z:.0%}<extra></extra>"),
            row=1, col=col)
    fig.update_layout(height=max(260, 14 * MAX_DEVICES // 2), margin={"t": 40})
    fig.update_xaxes(title_text="time (s)")
    return _div(fig, div_id)


def _util_grid(telemetry: pa.Table, edges: np.ndarray) -> tuple[list[str], np.ndarray]:
    """(devices, mean utilization per device and time bin): the busiest devices first."""
    if not telemetry.num_rows:
        return [], np.zeros((0, len(edges) - 1))
    time, util = _floats(telemetry, "time"), _floats(telemetry, "util")
    device = np.array([d or "?" for d in _strings(telemetry, "device")])
    names = sorted(set(device.tolist()))
    mean = {n: float(np.nanmean(util[device == n])) for n in names}
    names = sorted(names, key=lambda n: (-mean[n], n))[:MAX_DEVICES]
    column = np.clip(np.searchsorted(edges, time, side="right") - 1, 0, len(edges) - 2)
    z = np.full((len(names), len(edges) - 1), np.nan)
    for row, name in enumerate(names):
        sel = device == name
        sums = np.bincount(column[sel], weights=np.nan_to_num(util[sel]), minlength=z.shape[1])
        counts = np.bincount(column[sel], minlength=z.shape[1])
        z[row] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return names, z


def tenants_of(jobs: pa.Table) -> int:
    return len({t for t in _strings(jobs, "tenant") if t is not None})


__all__ = ["gantt", "jct_cdf", "placement_reasons", "plotly_js", "tenants_of", "utilization"]

