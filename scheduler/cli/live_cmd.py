"""What ``attnsched run`` and ``compare --mode live`` share: checks, progress, the loop.

The live stack (Ray, torch) loads only inside functions here, so importing the
CLI stays cheap and works without it (STYLE.md rule 5).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress_bar import ProgressBar
from rich.table import Table

from scheduler.cli.sim_cmd import (
    console,
    err_console,
    exit_all,
    policy_folder,
    print_summary,
)
from scheduler.errors import InputError
from scheduler.inputfiles import clip
from scheduler.jobs import ClusterJob
from scheduler.runs import (
    MIN_TELEMETRY_S,
    RunSpec,
    bounded,
    check_options,
    check_seed,
    count_jobs,
    trace_jobs,
)
from scheduler.sim.runner import RunResult

if TYPE_CHECKING:
    from workers.executor import LiveConfig, LiveProgress


MAX_DECIDE_TIMEOUT = 3600.0  # seconds; longer is no limit at all, and overflows timers


def live_config(*, address: str | None, emulate_gpus: int, cpu_workers: int, speed: float,
                memory_fraction: float, telemetry_interval: float, seed: int,
                slow: Mapping[str, float], profiles: Mapping[str, str] | None = None,
                decide_timeout: float | None = None) -> LiveConfig:
    """Check the live options before anything starts; the config a run needs."""
    bounded("--speed", speed, 1e-3, 1e6)
    bounded("--memory-fraction", memory_fraction, 0.01, 1)
    bounded("--telemetry-interval", telemetry_interval, MIN_TELEMETRY_S, 3600, unit=" seconds")
    check_seed(seed)
    if decide_timeout is not None:
        bounded("--decide-timeout", decide_timeout, 0, MAX_DECIDE_TIMEOUT, unit=" seconds")
    if address and emulate_gpus:
        raise InputError("--emulate-gpus declares slots on a local Ray; a cluster declares "
                         "its own GPUs", field="--emulate-gpus")
    if slow and not address:
        check_slow_devices(slow, local_devices(emulate_gpus, cpu_workers))
    from workers.executor import LiveConfig

    config = LiveConfig(address=address, emulate_gpus=emulate_gpus, cpu_workers=cpu_workers,
                        speed=speed, telemetry_interval=telemetry_interval, seed=seed,
                        memory_fraction=memory_fraction, slow=dict(slow),
                        profiles=dict(profiles or {}))
    if decide_timeout is not None:
        config.decide_timeout = decide_timeout or None  # 0: no limit
    return config


def local_devices(emulate_gpus: int, cpu_workers: int) -> list[str]:
    """The devices a local Ray will have, named as ``scheduler.cluster.from_ray_nodes`` and
    ``for_live_run`` name them: one node, ``head``; a device per (declared) GPU, else its
    CPU, split into ``cpu_workers`` workers when it has that many cores."""
    gpus = emulate_gpus or _cuda_devices()
    if gpus:
        return [f"head/gpu{i}" for i in range(gpus)]
    if cpu_workers and (os.cpu_count() or 1) >= cpu_workers:
        return [f"head/cpu{i}" for i in range(cpu_workers)]
    return ["head/cpu"]


def check_slow_devices(slow: Mapping[str, float], devices: list[str]) -> None:
    """``--slow`` names devices that will exist: a typo must not slow nothing, silently."""
    for device in slow:
        if device not in devices:
            sample = ", ".join(devices[:4]) + (", ..." if len(devices) > 4 else "")
            raise InputError(f"no device {clip(device)} in this live run; its devices: "
                             f"{sample}", field="--slow")


def _cuda_devices() -> int:
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def check_gpus(spec: RunSpec, config: LiveConfig) -> None:
    """A local run without GPUs would fail every job that needs one ("fits no node")
    after starting Ray: say up front what to do instead."""
    if config.address or config.emulate_gpus:
        return
    needs = next((job for job in trace_jobs(spec) if isinstance(job, ClusterJob) and job.gpus),
                 None)
    if needs is None or has_cuda():
        return
    raise InputError(f"job {needs.id} needs {needs.gpus} GPU(s) and this machine has none; add "
                     "--emulate-gpus N to declare N GPU slots that compute on the CPU, or run "
                     "on a GPU machine or cluster (--address auto)", path=spec.trace,
                     field="--emulate-gpus")


class LiveView(Progress):
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
    from policies.base import load_policy

    folders = {name: out / policy_folder(name) for name in names}
    specs = {name: RunSpec(trace=trace, policy=name, model=model, limit=limit, seed=seed,
                           telemetry_interval=telemetry_interval, slow=slow, out=folders[name])
             for name in names}
    for spec in specs.values():  # bad input fails here, once, before Ray starts
        check_options(spec)
    check_gpus(next(iter(specs.values())), config)
    built = {name: load_policy(name) for name in names}
    total = count_jobs(next(iter(specs.values())))
    from scheduler.report import write_comparison, write_report
    from workers.executor import close_session, open_session, run_identity, run_live

    results: dict[str, RunResult] = {}
    with live_progress_bar() as bar:
        tasks = {name: bar.add_task(name, total=total, start=False, **NO_PROGRESS)
                 for name in names}
        session = open_session(config)
        try:
            for name, spec in specs.items():
                policy = built[name]
                results[name] = run_live(
                    trace_jobs(spec), policy, str(getattr(policy, "name", name)), folders[name],
                    dataclasses.replace(config, progress=track(bar, tasks[name])),
                    {"trace": str(trace)}, session=session,
                    identity=run_identity(spec, config, name))
                write_report(folders[name])
        finally:
            close_session(session)
    report = write_comparison(folders, out)
    print_summary(results)
    console.print(f"comparison: {report}")
    exit_all(results)
