"""``attnsched run``: replay a trace live on Ray workers (the live side loads lazily)."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.cli.live_cmd import NO_PROGRESS, check_gpus, live_progress_bar, track
from scheduler.cli.options import (
    ADDRESS,
    CPU_WORKERS,
    EMULATE_GPUS,
    FALLBACK,
    LIMIT,
    MEMORY_FRACTION,
    MODEL,
    OPTS,
    POLICY_HELP,
    PROFILE,
    SEED,
    SLOW,
    SPEED,
    TICK,
    TRACE_ARG,
)
from scheduler.cli.results import console, exit_for, print_summary
from scheduler.live_runs import live_run, live_setup
from scheduler.policy import run_name
from scheduler.runs import KEEP_JOBS, replay, scan_arrivals


def run(
    trace: Path = TRACE_ARG,
    policy: str = typer.Option("adaptive", "--policy", help=POLICY_HELP),
    policy_opt: list[str] = OPTS,
    address: str | None = ADDRESS,
    model: str | None = MODEL, limit: int | None = LIMIT, seed: int = SEED,
    speed: float = SPEED, emulate_gpus: int = EMULATE_GPUS, cpu_workers: int = CPU_WORKERS,
    memory_fraction: float = MEMORY_FRACTION,
    telemetry_interval: float = TICK, slow: list[str] = SLOW, profile: list[str] = PROFILE,
    out: Path | None = typer.Option(None, "--out", help="Write outputs and report here."),
    resume: Path | None = typer.Option(
        None, "--resume", metavar="RUN_DIR",
        help="Continue the interrupted run whose outputs are in RUN_DIR (from its journal): "
             "jobs it finished are not run again."),
    overwrite: bool = typer.Option(
        False, "--overwrite",
        help="Start afresh in --out even when it holds a run that did not finish (its "
             "journal is deleted; without this, such a folder is refused)."),
    fallback_policy: str | None = FALLBACK,
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", min=1, max=65535,
        help="Serve the local Ray's Prometheus metrics (attnsched's gauges among them) on "
             "this port of 127.0.0.1; run.json lists every node's endpoint."),
    decide_timeout: float = typer.Option(
        10.0, "--decide-timeout", min=0.0,
        help="Wall seconds a policy's decision may take before it counts as a failure "
             "(0: no limit; at most 3600)."),
) -> None:
    """Replay a trace live: real PyTorch attention on Ray worker actors.

    Example: attnsched run trace.jsonl --policy adaptive --emulate-gpus 2 --speed 4
    --out runs/live

    After a crash, run the same command again with --resume runs/live added.
    """
    spec, built, config = live_setup(
        trace, policy, policy_opt=policy_opt, address=address, model=model, limit=limit,
        seed=seed, speed=speed, emulate_gpus=emulate_gpus, cpu_workers=cpu_workers,
        memory_fraction=memory_fraction, telemetry_interval=telemetry_interval, slow=slow,
        profile=profile, out=out, resume=resume, fallback_policy=fallback_policy,
        decide_timeout=decide_timeout, metrics_port=metrics_port, overwrite=overwrite)
    out = spec.out
    arrivals = scan_arrivals(spec, keep=KEEP_JOBS)  # the whole trace checked before Ray starts
    check_gpus(spec, config, arrivals)
    total = arrivals.jobs
    with live_progress_bar() as bar:
        task = bar.add_task(f"run {policy}", total=total, start=False, **NO_PROGRESS)
        config.progress = track(bar, task)
        result = live_run(spec, built, config, jobs=replay(spec, arrivals))
    print_summary({run_name(policy, built): result})
    if out is not None:
        console.print(f"outputs in {out}/ (report: {out / 'report.md'})")
    exit_for(result)
