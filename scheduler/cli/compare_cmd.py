"""``attnsched compare``: several policies on one trace, simulated in parallel or live in turn."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from policies.base import load_policy, run_names
from scheduler.cli.live_cmd import compare_live
from scheduler.cli.options import (
    ADDRESS,
    CLUSTER,
    CPU_WORKERS,
    EMULATE_GPUS,
    FAIL,
    FAIL_NODE,
    LIMIT,
    LIVE_COSTS,
    LOAD,
    MEMORY_FRACTION,
    MODEL,
    NODES,
    PROFILE,
    QUANTUM,
    SEED,
    SLOTS,
    SLOW,
    SPEED,
    TICK,
    TRACE_ARG,
    policy_names,
)
from scheduler.cli.results import console, exit_all, print_summary
from scheduler.cli.sim_cmd import NO_SIM_PROGRESS, progress_bar, sim_fields
from scheduler.errors import InputError
from scheduler.live_runs import live_config
from scheduler.run_options import parse_profiles, parse_slow, policy_folder
from scheduler.sims import MAX_PROCESSES, Update, compare_on_ray, compare_sims, sim_spec

if TYPE_CHECKING:
    from scheduler.runs import RunSpec
    from scheduler.sim.runner import RunResult, SimProgress


class Mode(str, Enum):
    SIM = "sim"
    LIVE = "live"


# The options only a live run reads, by parameter name: compare --mode sim rejects them.
LIVE_ONLY = ("speed", "emulate_gpus", "cpu_workers", "memory_fraction",
             "overwrite")
# The options only the simulator reads, by parameter name: compare --mode live rejects them.
SIM_ONLY = ("cluster", "nodes", "load", "slots", "fail", "fail_node", "decision_interval",
            "jobs", "live_costs")


def compare(
    ctx: typer.Context,
    trace: Path = TRACE_ARG,
    policies: str = typer.Option("static,greedy,adaptive", "--policies",
                                 help="Comma-separated policies to compare."),
    mode: Mode = typer.Option(Mode.SIM, "--mode", help="sim: the simulator, policies in "
                              "parallel; live: Ray workers, one policy after another."),
    cluster: Path | None = CLUSTER, nodes: list[str] = NODES, model: str | None = MODEL,
    load: float | None = LOAD, limit: int | None = LIMIT, seed: int = SEED, slots: int = SLOTS,
    telemetry_interval: float = TICK, fail: list[str] = FAIL, fail_node: list[str] = FAIL_NODE,
    slow: list[str] = SLOW, decision_interval: float = QUANTUM, profile: list[str] = PROFILE,
    live_costs: bool = LIVE_COSTS,
    out: Path = typer.Option(Path("runs/compare"), "--out", help="One folder per policy here."),
    jobs: int = typer.Option(0, "--jobs", min=0, help="Processes (0: one per core, at most one per "
                                               f"policy; at most {MAX_PROCESSES})."),
    address: str | None = ADDRESS, emulate_gpus: int = EMULATE_GPUS,
    cpu_workers: int = CPU_WORKERS, speed: float = SPEED,
    memory_fraction: float = MEMORY_FRACTION,
    overwrite: bool = typer.Option(
        False, "--overwrite",
        help="Live: replace a policy's folder whose earlier run did not finish (refused "
             "otherwise, so a crashed run is never lost by accident)."),
) -> None:
    """Run several policies on the same trace and compare them in one report.

    Example: attnsched compare ../shared/traces/azure_llm_2023_conv.csv
    --policies static,greedy,adaptive --model llama3-8b --load 0.9 --out runs/x

    Live: attnsched compare trace.jsonl --mode live --emulate-gpus 2 --speed 4 --out runs/y

    Only live: --emulate-gpus, --cpu-workers, --speed, --memory-fraction,
    --overwrite (a simulation always replaces its folder). With --address, simulations
    run as Ray tasks on that cluster (as `attnsched sweep` runs them). Only
    sim: --cluster, --nodes, --load, --slots, --fail, --fail-node, --decision-interval, --jobs.
    """
    names = policy_names(policies)
    _reject_given(ctx, LIVE_ONLY if mode is Mode.SIM else SIM_ONLY, mode)
    if mode is Mode.LIVE:
        config = live_config(address=address, emulate_gpus=emulate_gpus,
                             cpu_workers=cpu_workers, speed=speed,
                             memory_fraction=memory_fraction,
                             telemetry_interval=telemetry_interval, seed=seed,
                             slow=parse_slow(slow), profiles=parse_profiles(profile))
        config.overwrite = overwrite
        compare_live(trace, names, model=model, limit=limit, seed=seed,
                     telemetry_interval=telemetry_interval, slow=parse_slow(slow), out=out,
                     config=config)
        return
    shown = run_names({name: load_policy(name) for name in names})
    specs = {shown[name]: sim_spec(trace, name, opts=[], cluster=cluster, nodes=nodes,
                                   model=model, load=load, limit=limit, seed=seed, slots=slots,
                                   telemetry_interval=telemetry_interval, fail=fail,
                                   fail_node=fail_node, slow=slow,
                                   decision_interval=decision_interval, profile=profile,
                                   live_costs=live_costs, out=out / policy_folder(shown[name]))
             for name in names}
    results = _simulate_all(specs, out, jobs, address)
    print_summary(results)
    console.print(f"comparison: {out / 'comparison.md'}")
    exit_all(results)


def _simulate_all(specs: dict[str, RunSpec], out: Path, jobs: int,
                  address: str | None) -> dict[str, RunResult]:
    """The policies' simulations: Ray tasks on the cluster at ``address``, else a local
    process pool of ``jobs`` processes with a progress bar per policy."""
    if not address:
        return compare_sims(specs, out, jobs, progress=_bars)
    if jobs:
        raise InputError("--jobs counts local processes; with --address the cluster's "
                         "CPUs run the simulations", field="--jobs")
    return compare_on_ray(specs, out, address)


@contextlib.contextmanager
def _bars(names: list[str], total: int) -> Iterator[Update]:
    """One bar per policy, each fed by its own process's reports."""
    with progress_bar() as bar:
        tasks = {name: bar.add_task(name, total=total, **NO_SIM_PROGRESS) for name in names}

        def update(name: str, p: SimProgress) -> None:
            bar.update(tasks[name], **sim_fields(p))

        yield update


def _reject_given(ctx: typer.Context, names: tuple[str, ...], mode: Mode) -> None:
    """An option the chosen mode would ignore is an error, not a silent no-op."""
    other = Mode.LIVE if mode is Mode.SIM else Mode.SIM
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name or "")
        if param.name in names and source is not None and source.name not in (
                "DEFAULT", "DEFAULT_MAP"):
            raise InputError(f"only with --mode {other.value} (this compare is "
                             f"--mode {mode.value})", field=param.opts[0])
