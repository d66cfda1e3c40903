"""What ``attnsched run``, ``compare --mode live`` and ``fidelity`` share: the GPU check,
the live progress view, and live comparisons.

The live stack (Ray, torch) loads only inside functions here, so importing the
CLI stays cheap and works without it (STYLE.md rule 5). The options' checks and
the live config are :mod:`scheduler.live_runs`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress_bar import ProgressBar
from rich.table import Table

from scheduler.cli.progress import Bars
from scheduler.cli.results import console, err_console, exit_all, print_summary
from scheduler.errors import InputError
from scheduler.run_options import policy_folder
from scheduler.runs import KEEP_JOBS, Arrivals, RunSpec, check_options, replay, scan_arrivals

if TYPE_CHECKING:
    from scheduler.sim.runner import RunResult
    from workers.executor import LiveConfig, LiveProgress


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def check_gpus(spec: RunSpec, config: LiveConfig, arrivals: Arrivals) -> None:
    """A local run without GPUs would fail every job that needs one ("fits no node")
    after starting Ray: say up front what to do instead."""
    if config.address or config.emulate_gpus:
        return
    needs = arrivals.needs_gpu
    if needs is None or has_cuda():
        return
    raise InputError(f"job {needs.id} needs {needs.gpus} GPU(s) and this machine has none; add "
                     "--emulate-gpus N to declare N GPU slots that compute on the CPU, or run "
                     "on a GPU machine or cluster (--address auto)", path=spec.trace,
                     field="--emulate-gpus")


class LiveView(Bars):
    """The progress bars, and below them one line per device: a utilization bar,
    the jobs running there, and whether its worker is up."""

    devices: Mapping[str, tuple[float | None, int, bool]] = {}

    def get_renderables(self) -> Iterator[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.devices:
            yield device_table(self.devices)


def device_table(devices: Mapping[str, tuple[float | None, int, bool]]) -> Table:
    table = Table.grid(padding=(0, 1))
    for device, (util, running, up) in devices.items():
        bar = ProgressBar(total=1.0, completed=util or 0.0, width=20)
        state = f"{running} running" if up else "[red]down[/red]"
        table.add_row(f"[dim]{device:>16}[/dim]", bar,
                      "  -" if util is None else f"{util:4.0%}", state)
    return table


def live_progress_bar() -> LiveView:
    """Jobs finished, their rate on the wall clock, the queue and each device's state.

    Unlike the simulator's bar (jobs submitted, trace time), a live run's
    interesting figures are real throughput and how busy the devices are.
    """
    return LiveView(TextColumn("[bold]{task.description:>12}"), BarColumn(bar_width=10),
                    TextColumn("{task.completed:>5,}/{task.total:,} jobs, "
                               "{task.fields[rate]:,.1f} jobs/s, util {task.fields[util]}, "
                               "queue {task.fields[queue]:,}{task.fields[failed]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                    transient=True)


NO_PROGRESS: dict[str, Any] = {"rate": 0.0, "util": "-", "failed": "", "queue": 0}


def progress_fields(p: LiveProgress) -> dict[str, Any]:
    """The bar's fields for one report: ``completed`` and the columns' texts."""
    return {"completed": p.done, "rate": p.rate,
            "util": "-" if p.util is None else f"{p.util:.0%}",
            "failed": f", {p.failed:,} failed" if p.failed else "", "queue": p.queued}


def track(bar: Progress, task: Any) -> Callable[[LiveProgress], None]:
    """Updates for ``task``, added with ``start=False``: its clock starts with the run's
    first report, so neither Ray's start nor an earlier policy's turn counts."""

    started = False

    def update(p: LiveProgress) -> None:
        nonlocal started
        if not started:
            bar.start_task(task)
            started = True
        bar.update(task, **progress_fields(p))
        if isinstance(bar, LiveView):
            bar.devices = p.devices

    return update


def compare_live(trace: Path, names: list[str], *, model: str | None, limit: int | None,
                 seed: int, telemetry_interval: float, slow: Mapping[str, float], out: Path,
                 config: LiveConfig) -> None:
    """Each policy live in turn (never at once: they would share the devices).

    One Ray session and one set of workers serve every policy; each run
    resets the workers first, so no policy inherits another's telemetry.
    """
    from policies.base import load_policy, run_names

    built = {name: load_policy(name) for name in names}
    shown = run_names(built)
    folders = {name: out / policy_folder(shown[name]) for name in names}
    specs = {name: RunSpec(trace=trace, policy=name, model=model, limit=limit, seed=seed,
                           telemetry_interval=telemetry_interval, slow=slow, out=folders[name])
             for name in names}
    for spec in specs.values():  # bad input fails here, once, before Ray starts
        check_options(spec)
    first = next(iter(specs.values()))  # the specs differ only in their policy
    arrivals = scan_arrivals(first, keep=KEEP_JOBS)
    check_gpus(first, config, arrivals)
    total = arrivals.jobs
    from scheduler.report import write_comparison, write_report
    from workers.executor import close_session, open_session, run_identity, run_live

    results: dict[str, RunResult] = {}
    with live_progress_bar() as bar:
        tasks = {name: bar.add_task(shown[name], total=total, start=False, **NO_PROGRESS)
                 for name in names}
        session = open_session(config)
        try:
            for name, spec in specs.items():
                policy = built[name]
                results[shown[name]] = run_live(
                    replay(spec, arrivals), policy, shown[name],
                    folders[name],
                    dataclasses.replace(config, progress=track(bar, tasks[name])),
                    {"trace": str(trace)}, session=session,
                    identity=run_identity(spec, config, name))
                write_report(folders[name])
        finally:
            close_session(session)
    report = write_comparison({shown[n]: f for n, f in folders.items()}, out)
    print_summary(results)
    console.print(f"comparison: {report}")
    exit_all(results)
