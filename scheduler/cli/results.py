"""How finished runs are shown: the summary table, what went wrong, and the exit code."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from scheduler.cli.consoles import make_console
from scheduler.runs import EXIT_JOBS_FAILED, combined_code, failure_note, outcome_code

if TYPE_CHECKING:
    from scheduler.sim.runner import RunResult

console = make_console()
err_console = make_console(stderr=True)


def exit_for(result: RunResult) -> None:
    """Exit 0 only when every job completed: 1 when the run stopped early, 3
    (``EXIT_JOBS_FAILED``) when it finished with failed jobs, saying how many and why."""
    exit_all({"": result})


def exit_all(results: dict[str, RunResult]) -> None:
    """``exit_for`` for several runs (a compare): each failing run says so, once."""
    codes = []
    for name, result in results.items():
        code = outcome_code(result.exit_code, result.summary)
        label = f"{name}: " if name else ""
        if code == EXIT_JOBS_FAILED:
            err_console.print(f"[yellow]attnsched: {escape(label + failure_note(result.summary))}"
                              "[/]", soft_wrap=True)
        elif code:
            err_console.print(f"[red]attnsched: {escape(label)}run stopped: "
                              f"{escape(str(result.message))}[/]", soft_wrap=True)
        codes.append(code)
    if combined_code(codes):
        raise typer.Exit(combined_code(codes))


def print_summary(results: dict[str, RunResult]) -> None:
    from scheduler.report import summary_table_rows

    rows = summary_table_rows({name: r.summary for name, r in results.items()})
    short = {"JCT mean": "JCT mean", "JCT p50": "p50", "JCT p99": "p99", "device util": "util",
             "Jain fairness": "Jain", "SLO attainment": "SLO", "cache hit rate": "hit rate"}
    # The hit rate is a column only where some run has one (a trace with prefix blocks).
    unranked = "utilization and hit rate" if "cache hit rate" in rows[0] else "utilization"
    table = Table(caption=f"* best in column ({unranked} not ranked)", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    for i, col in enumerate(rows[0]):
        label = short.get(col, col)
        width = max(len(label), *(len(row[i]) for row in rows[1:]))
        table.add_column(label, justify="left" if col == "policy" else "right", no_wrap=True,
                         min_width=width)
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    for name, r in results.items():
        s = r.summary
        # One meaning for run and compare --mode live: the replay's own wall-clock time,
        # from its first arrival to its last result (Ray and the workers' start not counted).
        verb = "ran live" if s["mode"] == "live" else "simulated"
        console.print(f"{name}: {s['jobs_completed']:,}/{s['jobs_total']:,} jobs done, "
                      f"{s['jobs_failed']:,} failed; {verb} in "
                      f"{r.run_info['wall_seconds']:.1f}s")
    notes = sorted({line for r in results.values() for line in r.run_info.get("extrapolated", ())})
    for line in notes:  # a figure not measured: the user should know which; run.json says why
        console.print(f"note: {line.partition(' (')[0]} (why: run.json, extrapolated)",
                      markup=False)
