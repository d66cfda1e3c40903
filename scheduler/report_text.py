"""The text of reports: values formatted for people, Markdown escaped, comparison rows.

Everything here turns numbers and labels into strings, for ``report.md``, ``comparison.md``,
the HTML page and the CLI's tables alike, so one run reads the same in all of them. Pure
string work: no files, no numpy, no matplotlib.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

# Comparison columns in table order: (summary key, header, which way is better; None:
# not ranked). Busy devices can mean more work done or worse packing, so utilization
# has no "best".
COMPARED: tuple[tuple[str, str, Callable[[list[float]], float] | None], ...] = (
    ("jct_mean", "JCT mean", min), ("jct_p50", "JCT p50", min), ("jct_p99", "JCT p99", min),
    ("makespan", "makespan", min), ("device_util_mean", "device util", None),
    ("jain_fairness", "Jain fairness", max), ("slo_attainment", "SLO attainment", max))
# Columns shown only where some run has the figure: a trace without prefix blocks has
# no cache hit rate, and its tables keep the columns above and nothing more. The hit rate
# is not ranked either: a policy can raise it by crowding prompts onto the devices that
# hold their prefix, at the cost of its JCT.
OPTIONAL: tuple[tuple[str, str, Callable[[list[float]], float] | None], ...] = (
    ("cache_hit_rate", "cache hit rate", None),)
BEST_MEANS = ("Bold: the best in its column (lowest JCT and makespan, highest Jain fairness "
              "and SLO attainment); device utilization is not ranked, as busy devices can "
              "mean worse packing as well as more work done.")
HITS_UNRANKED = (" The cache hit rate is not ranked either: a policy can raise it by crowding "
                 "prompts onto the devices that hold their prefix.")
SECONDS = ("jct_mean", "jct_p50", "jct_p99", "queue_delay_mean", "makespan", "wall_seconds",
           "makespan_trace_s", "makespan_wall_s")
PERCENT = ("device_util_mean", "jain_fairness", "slo_attainment", "cache_hit_rate")
UNITS = {"slowdown_mean": "×", "throughput_jobs_per_s": " jobs/s", "achieved_tflops": " TFLOP/s",
         "throughput_jobs_per_wall_s": " jobs per wall second"}
SUMMARY_ORDER = ("policy", "mode", "jobs_total", "jobs_completed", "jobs_failed", "jct_mean",
                 "jct_p50", "jct_p99", "queue_delay_mean", "slowdown_mean", "makespan",
                 "makespan_trace_s", "makespan_wall_s", "throughput_jobs_per_s",
                 "throughput_jobs_per_wall_s", "achieved_tflops", "device_util_mean",
                 "jain_fairness", "slo_attainment", "wall_seconds")
# Summary keys a report words on lines of their own rather than as a raw value.
WORDED = frozenset({"failed_reasons", "fallback", "placed_by"})
BEST = "\x00"  # marks a best cell in table rows until a table renders it (bold or *)
# Markdown punctuation that can start a link, emphasis, code, math or a table cell;
# a backslash before it makes it a literal character everywhere in CommonMark/GFM. An
# ``_`` between two letters or digits (``jobs_total``) never opens emphasis: left as is.
_MD_SPECIAL = re.compile(r"[\\`*{}\[\]()#!|~$]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_text(text: str) -> str:
    """``text`` as literal Markdown inline text: no link, HTML, emphasis or table break.

    Every run name, tenant, job id, device and reason that reaches a ``.md`` file
    passes through here, so a tenant called ``<script>`` or ``[x](javascript:…)``
    reads as those characters, the way the HTML report shows them.
    """
    escaped = _MD_SPECIAL.sub(r"\\\g<0>", " ".join(text.splitlines()) if text else "")
    return html.escape(escaped, quote=False)


def policy_label(name: str, summary: Mapping[str, Any]) -> str:
    """A run's policy as people read it: ``name``, or ``name → fallback`` when the
    fallback policy took over (``summary["placed_by"]`` says who placed how many)."""
    fallback = summary.get("fallback")
    if isinstance(fallback, Mapping) and isinstance(fallback.get("policy"), str):
        return f"{name} → {fallback['policy']}"
    return name


def placed_by_text(summary: Mapping[str, Any]) -> str | None:
    """``"a: 10 jobs, b: 90 jobs"`` from the summary's ``placed_by`` (None without one)."""
    placed = summary.get("placed_by")
    if not isinstance(placed, Mapping) or not placed:
        return None
    return ", ".join(f"{k}: {fmt_value('jobs', v)} jobs" for k, v in placed.items())


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


def optional_figures(summaries: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The ``OPTIONAL`` summary keys that some of ``summaries`` has a value for, in order:
    every table, CSV and error list shows such a figure only then."""
    summaries = list(summaries)
    return tuple(key for key, _, _ in OPTIONAL
                 if any(s.get(key) is not None for s in summaries))


def compared_columns(summaries: Mapping[str, Mapping[str, Any]]) -> tuple[
        tuple[str, str, Callable[[list[float]], float] | None], ...]:
    """``COMPARED``, then each ``OPTIONAL`` column some run of ``summaries`` has a value for."""
    shown = optional_figures(summaries.values())
    return COMPARED + tuple(c for c in OPTIONAL if c[0] in shown)


def best_means(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """The note under a comparison table: ``BEST_MEANS``, and why the hit rate has no best
    when the table shows one."""
    shown = {key for key, _, _ in compared_columns(summaries)}
    return BEST_MEANS + (HITS_UNRANKED if "cache_hit_rate" in shown else "")


def _best_flags(summaries: Mapping[str, Mapping[str, Any]],
                columns: Sequence[tuple[str, str, Callable[[list[float]], float] | None]]
                ) -> list[list[bool]]:
    """Which cells hold the best value of their column.

    Ties all count as best; a column with fewer than two numbers, or where all
    numbers are equal, marks nothing, since nobody did better there.
    """
    flags = [[False] * len(columns) for _ in summaries]
    for col, (key, _, better) in enumerate(columns):
        if better is None:
            continue
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
    columns = compared_columns(summaries)
    rows = [["policy", *(header for _, header, _ in columns)]]
    for (name, summary), marks in zip(summaries.items(), _best_flags(summaries, columns),
                                      strict=True):
        rows.append([policy_label(name, summary), *(mark(fmt_value(key, summary.get(key))) if best
                             else fmt_value(key, summary.get(key))
                             for (key, _, _), best in zip(columns, marks, strict=True))])
    return rows


def summary_table_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """Header plus one formatted row per run, best cells suffixed with ``*``.

    Plain strings so the CLI can hand them to rich as they are; comparison.md
    has the same columns and order, with bold instead of the marker.
    """
    return _compared_rows(summaries, lambda cell: cell + "*")
