"""How well the simulator predicts live runs: errors, ranking, ``fidelity.json``.

A simulator is only worth its speed if its answers hold live, so each policy
is run both ways on one trace and cluster and the figures that users compare
policies by are set side by side. The error is relative to the live figure:
``|sim − live| / live``. A figure missing on either side (no job completed)
has no error (``None``), never a made-up zero. An optional figure (one only
some runs have, such as the KV cache's hit rate) is compared only when a
summary has it, so runs without it carry no empty error for it.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scheduler.report_text import optional_figures

# fidelity.json's error keys → the summary.json keys they compare.
FIGURES = {
    "jct_mean": "jct_mean",
    "jct_p50": "jct_p50",
    "jct_p99": "jct_p99",
    "makespan": "makespan",
    "throughput": "throughput_jobs_per_s",
}
RANK_BY = "jct_mean"  # what "the policies rank the same" compares: lower is better


def relative_error(sim: float | None, live: float | None) -> float | None:
    """``|sim − live| / live``; None when either is missing or live is zero."""
    if sim is None or live is None or not math.isfinite(live) or live == 0:
        return None
    return abs(sim - live) / abs(live)


def compared(*summaries: Mapping[str, Any]) -> dict[str, str]:
    """The figures to compare (error key → summary key): :data:`FIGURES`, and each
    optional figure (``report_text.OPTIONAL``, such as the cache hit rate) that one of
    ``summaries`` has, under its own name."""
    return {**FIGURES, **{k: k for k in optional_figures(summaries)}}


def errors(sim: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, float | None]:
    """Each compared figure's :func:`relative_error`, by fidelity.json's error keys."""
    return {k: relative_error(sim.get(src), live.get(src))
            for k, src in compared(sim, live).items()}


def ranking(summaries: Mapping[str, Mapping[str, Any]], key: str = RANK_BY) -> list[str]:
    """Policy names from best to worst by ``key`` (lower is better); ties by name.

    A policy with no value for ``key`` (nothing completed) ranks last.
    """
    def order(name: str) -> tuple[bool, float, str]:
        value = summaries[name].get(key)
        return value is None, value if value is not None else 0.0, name

    return sorted(summaries, key=order)


def median_summary(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One summary from repeated live runs: the median of each figure fidelity compares.

    A live run on a shared machine moves with the machine; the median of a few
    runs is what the simulator should be held to, not one draw.
    """
    if not summaries:
        raise ValueError("no summaries")
    out = dict(summaries[0])
    for src in compared(*summaries).values():
        values = [s[src] for s in summaries if s.get(src) is not None]
        out[src] = statistics.median(values) if values else None
    out["repeats"] = len(summaries)
    return out


def live_spread(summaries: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """How far the farthest live round strays from the rounds' median, per figure.

    It is the error a simulator that predicted the median exactly would show
    against that round: the live side's own noise, in the error's units. A
    simulated error below it cannot be told from a perfect prediction on this
    machine; one above it is the model's. None with fewer than two rounds.
    """
    spread: dict[str, float | None] = {}
    for key, src in compared(*summaries).items():
        values = [s[src] for s in summaries if s.get(src) is not None]
        if len(values) < 2:
            spread[key] = None
            continue
        mid = statistics.median(values)
        spread[key] = max((e for v in values if (e := relative_error(v, mid)) is not None),
                          default=None)
    return spread


def assess(runs: Mapping[str, tuple[Mapping[str, Any], Mapping[str, Any]]],
           rounds: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
           ) -> dict[str, Any]:
    """``fidelity.json`` from ``{policy: (live summary, sim summary)}``.

    ``rounds``: each policy's live runs, when the live figure is their median;
    each policy then also gets ``live_spread`` (:func:`live_spread`).
    """
    policies: dict[str, Any] = {}
    for name, (live, sim) in runs.items():
        policies[name] = {"live": dict(live), "sim": dict(sim), "error": errors(sim, live)}
        if rounds is not None and name in rounds:
            policies[name]["live_spread"] = live_spread(rounds[name])
    live_rank = ranking({n: live for n, (live, _) in runs.items()})
    sim_rank = ranking({n: sim for n, (_, sim) in runs.items()})
    return {"policies": policies, "same_ranking": live_rank == sim_rank,
            "ranking": {"by": RANK_BY, "live": live_rank, "sim": sim_rank}}


def worst_errors(result: Mapping[str, Any]) -> dict[str, float]:
    """The largest error of each figure over all policies (missing ones skipped)."""
    worst: dict[str, float] = {}
    for entry in result["policies"].values():
        for key, err in entry["error"].items():
            if err is not None:
                worst[key] = max(worst.get(key, 0.0), err)
    return worst


def write(out: Path, result: Mapping[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fidelity.json"
    path.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return path


def plot_jct(out: Path, pairs: Mapping[str, tuple[Path, Path]]) -> Path | None:
    """Scatter of per-job JCT, simulated against live, one colour per policy.

    ``pairs`` maps a policy to its (live, sim) run folders. Jobs are matched
    by id; only jobs completed in both runs are drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pyarrow.parquet as pq

    fig, ax = plt.subplots(figsize=(5.5, 5.0))
    lo, hi = math.inf, 0.0
    for name, (live_dir, sim_dir) in pairs.items():
        live = _jct_by_id(pq, live_dir / "jobs.parquet")
        sim = _jct_by_id(pq, sim_dir / "jobs.parquet")
        common = sorted(live.keys() & sim.keys())
        if not common:
            continue
        xs = [live[j] for j in common]
        ys = [sim[j] for j in common]
        lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        ax.scatter(xs, ys, s=4, alpha=0.4, label=name)
    if hi <= 0:
        plt.close(fig)
        return None
    lo = max(lo, hi * 1e-6)
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, label="sim = live")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("live JCT (s)")
    ax.set_ylabel("simulated JCT (s)")
    ax.set_title("Per-job JCT: simulated vs live")
    ax.legend(markerscale=3)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    path = plots / "fidelity_jct.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _jct_by_id(pq: Any, path: Path) -> dict[str, float]:
    table = pq.read_table(path, columns=["id", "jct"]).to_pydict()
    return {j: t for j, t in zip(table["id"], table["jct"], strict=True)
            if t is not None and t > 0}
