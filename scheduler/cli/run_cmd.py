"""``attnsched run``: replay a trace live on Ray workers (the live side loads lazily)."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from scheduler.cli.sim_cmd import (
    LIMIT,
    MODEL,
    OPTS,
    SEED,
    SLOW,
    TICK,
    TRACE_ARG,
    console,
    exit_for,
    parse_slow,
    print_summary,
    progress_bar,
)
from scheduler.errors import InputError
from scheduler.runs import RunSpec, check_options, count_jobs, trace_jobs


def run(
    trace: Path = TRACE_ARG,
    policy: str = typer.Option("adaptive", "--policy",
                               help="Registered name, module:Class or path/file.py:Class."),
    policy_opt: list[str] = OPTS,
    address: str | None = typer.Option(None, "--address",
                                       help="Ray cluster to join (auto, ray://...); default: "
                                            "an embedded local Ray on 127.0.0.1."),
    model: str | None = MODEL, limit: int | None = LIMIT, seed: int = SEED,
    speed: float = typer.Option(1.0, "--speed", help="Replay this many times faster than "
                                                     "the trace's clock."),
    emulate_gpus: int = typer.Option(0, "--emulate-gpus", min=0, max=64,
                                     help="Declare N GPU slots to a local Ray; compute on CPU."),
    cpu_workers: int = typer.Option(0, "--cpu-workers", min=0, max=256,
                                    help="Split each GPU-less node into N CPU workers."),
    telemetry_interval: float = TICK, slow: list[str] = SLOW,
    out: Path | None = typer.Option(None, "--out", help="Write outputs and report here."),
) -> None:
    """Replay a trace live: real PyTorch attention on Ray worker actors.

    Example: attnsched run trace.jsonl --policy adaptive --emulate-gpus 2 --speed 4
    --out runs/live
    """
    from policies.base import load_policy, parse_options

    if not (math.isfinite(speed) and 0 < speed <= 1e6):
        raise InputError(f"expected a speed in (0, 1e6], got {speed}", field="--speed")
    if address and emulate_gpus:
        raise InputError("--emulate-gpus declares slots on a local Ray; a cluster declares "
                         "its own GPUs", field="--emulate-gpus")
    built = load_policy(policy, parse_options(policy_opt))
    spec = RunSpec(trace=trace, policy=policy, model=model, limit=limit,
                   telemetry_interval=telemetry_interval, out=out)
    check_options(spec)
    total = count_jobs(spec)  # also validates the whole trace before Ray starts
    jobs = trace_jobs(spec)
    from workers.executor import LiveConfig, run_live

    config = LiveConfig(address=address, emulate_gpus=emulate_gpus, cpu_workers=cpu_workers,
                        speed=speed, telemetry_interval=telemetry_interval, seed=seed,
                        slow=parse_slow(slow))
    with progress_bar() as bar:
        task = bar.add_task(f"run {policy}", total=total, t=0.0)
        config.progress = lambda n, t: bar.update(task, completed=n, t=t)
        result = run_live(jobs, built, str(getattr(built, "name", policy)), out, config,
                          {"trace": str(trace)})
    if out is not None:
        from scheduler.report import write_report

        write_report(out)
    print_summary({policy: result})
    if out is not None:
        console.print(f"outputs in {out}/ (report: {out / 'report.md'})")
    exit_for(result)
