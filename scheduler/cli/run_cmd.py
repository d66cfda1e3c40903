"""``attnsched run``: replay a trace live on Ray workers (the live side loads lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from scheduler.cli.live_cmd import (
    NO_PROGRESS,
    check_gpus,
    live_config,
    live_progress_bar,
    track,
)
from scheduler.cli.sim_cmd import (
    ADDRESS,
    CPU_WORKERS,
    EMULATE_GPUS,
    LIMIT,
    MEMORY_FRACTION,
    MODEL,
    OPTS,
    PROFILE,
    SEED,
    SLOW,
    SPEED,
    TICK,
    TRACE_ARG,
    console,
    exit_for,
    parse_profiles,
    parse_slow,
    print_summary,
)
from scheduler.errors import InputError
from scheduler.runs import RunSpec, check_options, count_jobs, trace_jobs
from scheduler.sim.runner import RunResult

if TYPE_CHECKING:
    from workers.executor import LiveConfig


def run(
    trace: Path = TRACE_ARG,
    policy: str = typer.Option("adaptive", "--policy",
                               help="Registered name, module:Class or path/file.py:Class."),
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
    fallback_policy: str | None = typer.Option(
        None, "--fallback-policy",
        help="Switch to this policy (e.g. greedy) when the policy fails repeatedly, instead "
             "of stopping the run."),
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
    total = count_jobs(spec)  # also validates the whole trace before Ray starts
    check_gpus(spec, config)
    with live_progress_bar() as bar:
        task = bar.add_task(f"run {policy}", total=total, start=False, **NO_PROGRESS)
        config.progress = track(bar, task)
        result = live_run(spec, built, config)
    print_summary({policy: result})
    if out is not None:
        console.print(f"outputs in {out}/ (report: {out / 'report.md'})")
    exit_for(result)


def live_setup(trace: Path, policy: str, *, policy_opt: list[str], address: str | None,
               model: str | None, limit: int | None, seed: int, speed: float,
               emulate_gpus: int, cpu_workers: int, memory_fraction: float,
               telemetry_interval: float, slow: list[str], profile: list[str],
               out: Path | None, resume: Path | None, fallback_policy: str | None,
               decide_timeout: float, metrics_port: int | None = None,
               built: Any = None, overwrite: bool = False) -> tuple[RunSpec, Any, LiveConfig]:
    """Check ``run``'s options, in their command-line forms, before anything starts.

    Returns the run, the built policy (``built`` when the caller has one) and the
    live config; the Python API's ``run`` goes through here too.
    """
    from policies.base import load_policy, parse_options

    if resume is not None:
        if overwrite:
            raise InputError("--resume continues the run in its folder and --overwrite "
                             "replaces it; give one", field="--overwrite")
        if out is not None and out.resolve() != resume.resolve():
            raise InputError(f"--out {out} and --resume {resume} name different folders",
                             field="--resume")
        out = resume

    config = live_config(address=address, emulate_gpus=emulate_gpus, cpu_workers=cpu_workers,
                         speed=speed, memory_fraction=memory_fraction,
                         telemetry_interval=telemetry_interval, seed=seed,
                         slow=parse_slow(slow), profiles=parse_profiles(profile),
                         decide_timeout=decide_timeout)
    options = parse_options(policy_opt)
    if built is None:
        built = load_policy(policy, options)
    if metrics_port is not None and address:
        raise InputError("a cluster's nodes serve metrics on their own ports (see run.json)",
                         field="--metrics-port")
    config.metrics_port = metrics_port
    config.resume = resume is not None
    config.overwrite = overwrite
    if fallback_policy is not None:
        config.fallback = (load_policy(fallback_policy), fallback_policy)
    spec = RunSpec(trace=trace, policy=policy, policy_options=options, model=model,
                   limit=limit, seed=seed, telemetry_interval=telemetry_interval, out=out)
    check_options(spec)
    return spec, built, config


def live_run(spec: RunSpec, policy: Any, config: LiveConfig, report: bool = True) -> RunResult:
    """Replay ``spec``'s trace live with a built policy: ``attnsched run`` and the API's ``run``.

    Writes the run's outputs when ``spec.out`` is set, and its report too with ``report``.
    """
    from workers.executor import run_identity, run_live

    name = str(getattr(policy, "name", spec.policy))
    identity = run_identity(spec, config, name) if spec.out is not None else None
    result = run_live(trace_jobs(spec), policy, name, spec.out, config,
                      {"trace": str(spec.trace)}, identity=identity)
    if spec.out is not None and report:
        from scheduler.report import write_report

        write_report(spec.out)
    return result
