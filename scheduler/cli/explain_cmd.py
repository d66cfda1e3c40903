"""``attnsched explain RUN JOB``: every decision that touched a job, and how it ended."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape

from scheduler.cli.results import console
from scheduler.errors import InputError
from scheduler.report_data import require_output


def explain(
    run_dir: Path = typer.Argument(..., help="A run's --out folder, or a comparison's."),
    job: str = typer.Argument(..., help="The job id to explain."),
) -> None:
    """Every decision that touched a job, and why, and how the job ended; for a comparison's
    folder, in each of its runs.

    Example: attnsched explain runs/adaptive r42-decode
    """
    runs = _runs_in(run_dir)
    if not runs:
        _explain_run(run_dir, job, alone=True)
        return
    found = 0
    for run in runs:
        console.print(f"[bold]{escape(run.name)}[/] ({escape(str(run))})")
        found += _explain_run(run, job, alone=False)
    if not found:
        raise InputError(f"no job {job!r} in these runs ({', '.join(r.name for r in runs)})",
                         path=run_dir, field="job")


def _runs_in(folder: Path) -> list[Path]:
    """A comparison's runs (its subfolders with decisions); none for a run's own folder."""
    if not folder.is_dir() or (folder / "decisions.jsonl").exists():
        return []
    return sorted(p for p in folder.iterdir() if (p / "decisions.jsonl").is_file())


def _explain_run(run_dir: Path, job: str, alone: bool) -> bool:
    """Print ``job``'s decisions and end in one run; whether the run knows the job."""
    decisions = require_output(run_dir / "decisions.jsonl")
    require_output(run_dir / "jobs.parquet")
    found = 0
    with decisions.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"invalid JSON: {e.msg}", path=decisions, line=number) from None
            if job in (row.get("jobs") or ()):
                found += 1
                console.print(_decision_line(row))
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir / "jobs.parquet")
    rows = table.filter(pc.equal(table["id"], job)).to_pylist()
    if not rows and not found:
        if alone:
            raise InputError(f"no job {job!r} in this run", path=run_dir, field="job")
        console.print(f"no job {escape(repr(job))} in this run")
        return False
    for r in rows:
        start = "-" if r["start"] is None else f"{r['start']:.6g}s"
        end = "-" if r["end"] is None else f"{r['end']:.6g}s"
        console.print(escape(f"{job}: {r['status']} after {r['attempts']} attempt(s); submit "
                             f"{r['submit']:.6g}s, start {start}, end {end}, device "
                             f"{r['device']}" + (f"; reason: {r['reason']}" if r["reason"]
                                                 else "")))
    return True


def _decision_line(row: dict[str, object]) -> str:
    """One decision as rich markup (the run's own text escaped)."""
    why = escape(str(row.get("why", "")))
    verdict = "[green]applied[/]" if row["outcome"] == "applied" else \
        f"[red]{escape(str(row['outcome']))}[/]: {why}"
    target = f" on {row['device']}" if "device" in row else ""
    repeats = (f" (x{row['count']:,}, the last at t={row['t_last']:.6g}s)"
               if "count" in row else "")
    head = escape(f"t={row['t']:.6g}s {row['policy']} {row['action']}{target}: "
                  f"{row.get('reason', '')} -> ")
    return f"{head}{verdict}{escape(repeats)}"
