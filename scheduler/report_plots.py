"""The plots only a report across runs needs: slowdown by size, SLOs, device timelines, Gantt.

They read the same run files as :mod:`scheduler.report` and draw the same way (an Agg
canvas, no ``pyplot``, no metadata in the PNG), so a page rebuilt from the same runs
has the same bytes. A batch is the set of jobs that started together on one device:
the controller places a packed batch in one action, so its jobs share device and start
time, and ``jobs.parquet`` alone shows batches without reading every decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from scheduler.report_data import Floats, _floats, _strings, area_under
from scheduler.report_figures import DPI, _note, _queue_series, plain_text, plot_text

SIZE_BINS = 10
MAX_HEATMAP_ROWS = 48  # more devices than this: neighbouring devices share a row
MAX_GANTT_ROWS = 24  # the busiest devices of the window
GRID = 300  # time cells of the per-device waiting-jobs heatmap
Ints = npt.NDArray[np.int64]
KIND_COLORS = {"prefill": "tab:blue", "decode": "tab:orange", "train": "tab:green",
               "model": "tab:purple", "cluster": "tab:brown", "mixed": "tab:gray"}


@dataclass(frozen=True)
class Batches:
    """One run's batches: device, start, end, job count and kind (``mixed`` when several)."""

    device: tuple[str, ...]
    start: Floats
    end: Floats
    size: Ints
    kind: tuple[str, ...]


def _figure(rows: int, height: float, ratios: Sequence[float] | None = None,
            width: float = 9.5) -> tuple[Any, list[Any]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": list(ratios or [1] * rows)})
    return fig, [row[0] for row in axes]


def _finish(fig: Any, path: Path) -> None:
    fig.savefig(path, format="png", metadata={"Software": None}, bbox_inches="tight")


def job_sizes(jobs: pa.Table, by_flops: bool) -> Floats:
    """Each completed job's size, NaN for the rest: its FLOPs, or its time alone.

    FLOPs are the same whatever the policy, so runs bin their jobs alike; time
    alone (JCT / slowdown, predicted on the device the job ran on) is the
    fallback for jobs the cost model has no FLOPs for, such as cluster traces.
    """
    done = np.array([s == "done" for s in _strings(jobs, "status")], dtype=bool)
    if by_flops:
        flops = _floats(jobs, "flops")
        return np.where(done & np.isfinite(flops) & (flops > 0), flops, np.nan)
    jct, slowdown = _floats(jobs, "jct"), _floats(jobs, "slowdown")
    ok = done & np.isfinite(jct) & np.isfinite(slowdown) & (slowdown > 0)
    return np.where(ok, jct / np.where(ok, slowdown, 1.0), np.nan)


def _has_flops(jobs: pa.Table) -> bool:
    done = np.array([s == "done" for s in _strings(jobs, "status")], dtype=bool)
    flops = _floats(jobs, "flops")[done]
    return bool(flops.size) and bool((np.isfinite(flops) & (flops > 0)).all())


@plain_text
def plot_slowdown_by_size(runs: Mapping[str, pa.Table], path: Path) -> None:
    """Mean slowdown per size bin (log-spaced over all runs' sizes), one line per run."""
    by_flops = all(_has_flops(jobs) for jobs in runs.values())
    fig, (ax,) = _figure(1, 4.5, width=8.0)
    ax.set(title="Slowdown by job size", ylabel="mean slowdown (JCT / time alone)",
           xlabel="job size (FLOPs)" if by_flops else "job size: predicted time alone (s)")
    ax.grid(True, alpha=0.3)
    sizes = {name: job_sizes(jobs, by_flops) for name, jobs in runs.items()}
    every = np.concatenate([s[np.isfinite(s) & (s > 0)] for s in sizes.values()] or
                           [np.empty(0)])
    if every.size == 0:
        _note(ax, "no completed jobs")
    else:
        lo, hi = float(every.min()), float(every.max())
        edges = np.geomspace(lo, hi * 1.000001 if hi > lo else lo * 10, SIZE_BINS + 1)
        centers = np.sqrt(edges[:-1] * edges[1:])
        peak = 1.0
        for name, jobs in runs.items():
            size, slowdown = sizes[name], _floats(jobs, "slowdown")
            ok = np.isfinite(size) & (size > 0) & np.isfinite(slowdown)
            index = np.clip(np.searchsorted(edges, size[ok], side="right") - 1, 0, SIZE_BINS - 1)
            count = np.bincount(index, minlength=SIZE_BINS)
            total = np.bincount(index, weights=slowdown[ok], minlength=SIZE_BINS)
            has = count > 0
            mean = total[has] / count[has]
            peak = max(peak, float(mean.max()) if mean.size else 1.0)
            ax.plot(centers[has], mean, marker="o",
                    label=plot_text(f"{name} (n={int(ok.sum()):,})"))
        ax.set_xscale("log")
        if peak > 100:
            ax.set_yscale("log")
        ax.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    _finish(fig, path)


def slo_by_tenant(jobs: pa.Table) -> dict[str, tuple[int, int]]:
    """Tenant → (jobs with a deadline, those done within it); ``all`` sums them."""
    deadline, jct = _floats(jobs, "deadline"), _floats(jobs, "jct")
    done = np.array([s == "done" for s in _strings(jobs, "status")], dtype=bool)
    has = np.isfinite(deadline)
    met = has & done & np.isfinite(jct) & (jct <= np.where(has, deadline, 0.0))
    tenants = np.array(["—" if t is None else t for t in _strings(jobs, "tenant")], dtype=object)
    out = {str(t): (int((has & (tenants == t)).sum()), int((met & (tenants == t)).sum()))
           for t in sorted(set(tenants[has].tolist()))}
    if out:
        out["all"] = (int(has.sum()), int(met.sum()))
    return out


@plain_text
def plot_slo(runs: Mapping[str, pa.Table], path: Path) -> None:
    """Grouped bars: share of deadline jobs met, per tenant and overall, one bar per run."""
    fig, (ax,) = _figure(1, 4.5, width=8.0)
    ax.set(title="SLO attainment (jobs with a deadline done within it)", xlabel="tenant",
           ylabel="deadlines met (%)")
    ax.grid(True, axis="y", alpha=0.3)
    every = {name: slo_by_tenant(jobs) for name, jobs in runs.items()}
    tables = {name: table for name, table in every.items() if table}  # runs with deadlines
    groups = sorted({t for table in tables.values() for t in table if t != "all"})
    groups += ["all"] if groups else []
    if len(tables) < len(every):
        ax.set_title(ax.get_title() + "\nno deadlines in: " + plot_text(
            ", ".join(name for name in every if name not in tables)), fontsize="medium")
    if not groups:
        _note(ax, "no job had a deadline")
    else:
        width = 0.8 / len(tables)
        x = np.arange(len(groups))
        for i, (name, table) in enumerate(tables.items()):
            share = [100 * table[g][1] / table[g][0] if table.get(g, (0, 0))[0] else np.nan
                     for g in groups]
            ax.bar(x - 0.4 + width * (i + 0.5), share, width, label=plot_text(name),
                   color=f"C{list(every).index(name) % 10}")  # each run's color elsewhere
        ax.set_xticks(x, [plot_text(g) for g in groups])
        ax.set_ylim(0, 105)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    _finish(fig, path)


def _device_rows(names: list[str]) -> list[tuple[str, list[int]]]:
    """Heatmap rows: one per device, or neighbouring devices merged past the row cap."""
    if len(names) <= MAX_HEATMAP_ROWS:
        return [(n, [i]) for i, n in enumerate(names)]
    groups = np.array_split(np.arange(len(names)), MAX_HEATMAP_ROWS)
    return [(f"{names[g[0]]} … ({len(g)})", [int(i) for i in g]) for g in groups]


def _heatmap(ax: Any, edges: Floats, rows: list[tuple[str, list[int]]], matrix: Floats,
             label: str, vmax: float | None) -> None:
    grouped = np.array([np.nanmean(matrix[idx], axis=0) if np.isfinite(matrix[idx]).any()
                        else np.full(matrix.shape[1], np.nan) for _, idx in rows])
    mesh = ax.pcolormesh(edges, np.arange(len(rows) + 1), np.ma.masked_invalid(grouped),
                         cmap="viridis", vmin=0, vmax=vmax, shading="flat")
    ax.set_yticks(np.arange(len(rows)) + 0.5, [plot_text(name) for name, _ in rows],
                  fontsize="x-small" if len(rows) > 12 else "small")
    ax.invert_yaxis()
    ax.figure.colorbar(mesh, ax=ax, label=label, pad=0.01)


def _edges(times: Floats) -> Floats:
    """Cell edges around sample times: midpoints, the ends extended by half a step."""
    if times.size == 1:
        return np.array([times[0] - 0.5, times[0] + 0.5], dtype=np.float64)
    mid = (times[1:] + times[:-1]) / 2
    edges: Floats = np.r_[2 * times[0] - mid[0], mid, 2 * times[-1] - mid[-1]]
    return edges


def _utilization_heatmap(ax: Any, telemetry: pa.Table, tel_device: list[str | None],
                         names: list[str], rows: list[tuple[str, list[int]]]) -> None:
    """Each device's utilization at each telemetry tick (a cell per tick), or a note."""
    tel_time, tel_util = _floats(telemetry, "time"), 100 * _floats(telemetry, "util")
    ticks = np.unique(tel_time[np.isfinite(tel_time)])
    if ticks.size:
        matrix = np.full((len(names), ticks.size), np.nan)
        position = {n: i for i, n in enumerate(names)}
        column = np.searchsorted(ticks, tel_time)
        for r, (d, c, u) in enumerate(zip(tel_device, column, tel_util, strict=True)):
            if d is not None and np.isfinite(tel_time[r]):
                matrix[position[d], c] = u
        _heatmap(ax, _edges(ticks), rows, matrix, "utilization (%)", 100.0)
    else:
        _note(ax, "no telemetry recorded")


@plain_text
def plot_device_timeline(telemetry: pa.Table, jobs: pa.Table, path: Path, title: str) -> None:
    """Pending jobs, jobs waiting per device and utilization per device on one time axis.

    Telemetry's queue length is cluster-wide; the per-device wait counts a job
    against the device it later ran on, from submit to start, which is where a
    per-device queue builds up whatever the policy's own queueing.
    """
    device = np.array(_strings(jobs, "device"), dtype=object)
    tel_device = _strings(telemetry, "device")
    names = sorted({d for d in [*device.tolist(), *tel_device] if d is not None})
    rows = _device_rows(names)
    height = 2.0 + 2 * max(1.6, 0.16 * len(rows))
    fig, (top, waiting, util) = _figure(3, height, [1.0, 1.6, 1.6], width=10.0)
    top.set(title=plot_text(f"{title}\nqueue and utilization per device"),
            ylabel="pending jobs")
    times, queue, _ = _queue_series(telemetry, jobs)
    if times.size:
        top.step(times, queue, where="post", color="tab:blue")
        top.set_ylim(bottom=0)
    else:
        _note(top, "no queue data")
    top.grid(True, alpha=0.3)

    submit, start, end = _floats(jobs, "submit"), _floats(jobs, "start"), _floats(jobs, "end")
    span = np.r_[submit, end, _floats(telemetry, "time")]
    span = span[np.isfinite(span)]
    if not names or span.size == 0:
        _note(waiting, "no jobs ran on a device")
        _note(util, "no telemetry recorded")
        _finish(fig, path)
        return
    edges = np.linspace(float(span.min()), float(span.max()) or 1.0, GRID + 1)
    counts = np.full((len(names), GRID), np.nan)
    for i, name in enumerate(names):
        sel = (device == name) & np.isfinite(start)
        if sel.any():
            counts[i] = np.diff(area_under(submit[sel], start[sel], edges)) / np.diff(edges)
    _heatmap(waiting, edges, rows, counts, "jobs waiting (mean)", None)
    waiting.set_ylabel("waiting, by device\nit later ran on")

    _utilization_heatmap(util, telemetry, tel_device, names, rows)
    util.set(ylabel="utilization", xlabel="time (s)")
    # The colorbars narrowed the heatmaps: narrow the queue panel alike so times line up.
    top_box, ref = top.get_position(), waiting.get_position()
    top.set_position((top_box.x0, top_box.y0, ref.width, top_box.height))
    _finish(fig, path)


def batches(jobs: pa.Table) -> Batches:
    """Group started jobs by (device, start): each group is one batch the controller placed."""
    device, kind = _strings(jobs, "device"), _strings(jobs, "kind")
    start, end = _floats(jobs, "start"), _floats(jobs, "end")
    groups: dict[tuple[str, float], list[int]] = {}
    for i, (d, s) in enumerate(zip(device, start, strict=True)):
        if d is not None and np.isfinite(s) and np.isfinite(end[i]):
            groups.setdefault((d, float(s)), []).append(i)
    keys = sorted(groups, key=lambda k: (k[1], k[0]))
    kinds = []
    for key in keys:
        found = {kind[i] or "?" for i in groups[key]}
        kinds.append(found.pop() if len(found) == 1 else "mixed")
    return Batches(device=tuple(k[0] for k in keys),
                   start=np.array([k[1] for k in keys], dtype=np.float64),
                   end=np.array([max(end[i] for i in groups[k]) for k in keys], dtype=np.float64),
                   size=np.array([len(groups[k]) for k in keys], dtype=np.int64),
                   kind=tuple(kinds))


@plain_text
def plot_gantt(runs_batches: Batches, window: tuple[float, float], path: Path,
               title: str) -> None:
    """Batches as bars per device in ``window``; the label is the batch's job count."""
    b, (lo, hi) = runs_batches, window
    sel = (b.end >= lo) & (b.start <= hi)
    idx = np.flatnonzero(sel)
    busy: dict[str, float] = {}
    for i in idx:
        busy[b.device[i]] = busy.get(b.device[i], 0.0) + min(b.end[i], hi) - max(b.start[i], lo)
    shown = sorted(sorted(busy, key=lambda d: (-busy[d], d))[:MAX_GANTT_ROWS])
    row = {d: r for r, d in enumerate(shown)}
    fig, (ax,) = _figure(1, 1.6 + 0.32 * max(len(shown), 3))
    more = f", {len(shown)} busiest of {len(busy)} devices" if len(busy) > len(shown) else ""
    ax.set(title=plot_text(f"{title}\nbatches per device, {lo:.4g}–{hi:.4g} s{more}"),
           xlabel="time (s)")
    ax.grid(True, axis="x", alpha=0.3)
    if not shown:
        _note(ax, "no batch ran in this window")
    kinds_seen: set[str] = set()
    for i in idx:
        if b.device[i] not in row:
            continue
        s, e = max(b.start[i], lo), min(b.end[i], hi)
        color = KIND_COLORS.get(b.kind[i], "tab:gray")
        kinds_seen.add(b.kind[i])
        wide = e - s > (hi - lo) * 0.004  # a white edge would hide a narrower bar
        ax.broken_barh([(s, max(e - s, (hi - lo) * 0.0015))], (row[b.device[i]] + 0.1, 0.8),
                       facecolors=color, edgecolors="white" if wide else color,
                       linewidth=0.4 if wide else 0.0)
        if b.size[i] > 1 and e - s > (hi - lo) * 0.03:
            ax.text((s + e) / 2, row[b.device[i]] + 0.5, str(b.size[i]), ha="center",
                    va="center", fontsize="x-small", color="white")
    ax.set_yticks(np.arange(len(shown)) + 0.5, [plot_text(d) for d in shown], fontsize="small")
    ax.set_ylim(len(shown) or 1, 0)
    ax.set_xlim(lo, hi)
    if kinds_seen:
        from matplotlib.patches import Patch

        ax.legend(handles=[Patch(color=KIND_COLORS.get(k, "tab:gray"), label=plot_text(k))
                           for k in sorted(kinds_seen)], loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), fontsize="small", title="kind")
    _finish(fig, path)


def default_window(all_batches: Sequence[Batches], count: int = 200) -> tuple[float, float]:
    """From the first batch start to where the busiest run has started ``count`` batches.

    A window of a few hundred batches keeps each bar wide enough to see, and
    starting at the first batch shows how every run ramps up from the same point.
    """
    starts = [b.start for b in all_batches if b.start.size]
    if not starts:
        return 0.0, 1.0
    lo = float(min(s[0] for s in starts))
    full = [float(s[count - 1]) for s in starts if s.size >= count]
    hi = min(full) if full else max(float(b.end.max()) for b in all_batches if b.end.size)
    return lo, hi if hi > lo else lo + 1.0
