"""``attnsched explain RUN [JOB]``: every decision that touched a job, and how it ended;
without a job, what the run (or each run of a comparison) holds and which jobs to ask about."""

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
    job: str | None = typer.Argument(None, help="The job id to explain; none: list what the "
                                     "folder holds."),
) -> None:
    """Every decision that touched a job, and why, and how the job ended; for a comparison's
    folder, in each of its runs. Without a job: each run's outcome and the jobs worth asking
    about (failed, or waited longest).

    Example: attnsched explain runs/adaptive r42-decode
    """
    runs = _runs_in(run_dir)
    if job is None:
        for run in runs or [run_dir]:
            _overview(run)
        console.print(escape(f"attnsched explain {run_dir} JOB tells one job's decisions"))
        return
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


def _overview(run_dir: Path, shown: int = 3) -> None:
    """One run's outcome, its failed jobs and those that waited longest."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    summary = json.loads(require_output(run_dir / "summary.json").read_text(encoding="utf-8"))
    table = pq.read_table(require_output(run_dir / "jobs.parquet"),
                          columns=["id", "status", "queue_delay", "reason"])
    decisions = summary.get("decisions") or {}
    console.print(f"[bold]{escape(run_dir.name)}[/] ({escape(str(run_dir))}): " + escape(
        f"policy {summary.get('policy')}, {summary.get('jobs_completed')}/"
        f"{summary.get('jobs_total')} jobs done, {summary.get('jobs_failed')} failed; "
        f"decisions: " + ", ".join(f"{n:,} {k}" for k, n in decisions.items())))
    failed = table.filter(pc.equal(table["status"], "failed")).slice(0, shown).to_pylist()
    for r in failed:
        console.print(escape(f"  failed: {r['id']}: {r['reason']}"))
    done = table.filter(pc.is_valid(table["queue_delay"]))
    if done.num_rows:
        order = pc.sort_indices(done, [("queue_delay", "descending")])
        for r in done.take(order.slice(0, shown)).to_pylist():
            console.print(escape(f"  waited {r['queue_delay']:.6g}s: {r['id']}"))


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
        # Only runs of a trace with prefix blocks have the column, most jobs there 0.
        cached = r.get("cached_tokens") or 0
        console.print(escape(f"{job}: {r['status']} after {r['attempts']} attempt(s); submit "
                             f"{r['submit']:.6g}s, start {start}, end {end}, device "
                             f"{r['device']}" + (f"; cached tokens: {cached:,}" if cached > 0
                                                 else "")
                             + (f"; reason: {r['reason']}" if r["reason"] else "")))
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
