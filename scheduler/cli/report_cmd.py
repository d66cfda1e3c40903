"""``attnsched report``: one HTML page and a Markdown summary comparing finished runs."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.cli.results import console
from scheduler.runs import check_out_dir


def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders (the --out of simulate or run), "
                                                    "or a compare --out (all its runs)."),
    out: Path = typer.Option(Path("runs/report"), "--out",
                             help="Write report.html, report.md and plots/ here."),
    window: str | None = typer.Option(None, "--window", help="Gantt view's time window, "
                                      "START:END seconds (default: the first ~200 batches)."),
) -> None:
    """Compare runs on one self-contained HTML page (plots embedded) and in Markdown.

    Example: attnsched report runs/x --out runs/x-report     (every policy of a compare)

    Example: attnsched report runs/adaptive runs/live --window 0:30
    """
    from scheduler.report_html import parse_window, write_html_report

    span = parse_window(window) if window is not None else None
    check_out_dir(out)
    page, summary = write_html_report(run_dirs, out, span)
    console.print(f"report: {page} (Markdown: {summary})")
