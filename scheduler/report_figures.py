"""The four plots of ``report.md`` and the drawing helpers every report plot shares.

Plots draw on an Agg canvas through matplotlib's object API, not ``pyplot``: no global
backend switch, no figure registry to leak, and importing this module loads no
matplotlib at all. The PNGs embed no date or version, so regenerating them is a no-op
in diffs. Labels are drawn as their characters (:func:`plot_text`, :func:`plain_text`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from scheduler.report_data import (
    Floats,
    _by_time,
    _floats,
    _pending_from_jobs,
    _strings,
    tenant_shares,
)

MAX_DEVICE_LINES = 16
DPI = 110
MAX_CDF_POINTS = 2_000  # a CDF drawn through this many exact ranks looks the same as all
F = TypeVar("F", bound=Callable[..., Any])


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
