"""``attnsched simulate``, ``explain`` and ``policies``, and the simulator's progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from scheduler.cli.options import (
    CLUSTER,
    FAIL,
    FAIL_NODE,
    FALLBACK,
    LIMIT,
    LIVE_COSTS,
    LOAD,
    MODEL,
    NODES,
    OPTS,
    POLICY_HELP,
    PROFILE,
    QUANTUM,
    SEED,
    SLOTS,
    SLOW,
    TICK,
    TRACE_ARG,
)
from scheduler.cli.progress import Bars
from scheduler.cli.results import console, err_console, exit_for, print_summary
from scheduler.policy import run_name
from scheduler.runs import KEEP_JOBS, check_arrivals, run_sim, validate_spec
from scheduler.sims import sim_spec

if TYPE_CHECKING:
    from scheduler.sim.runner import SimProgress


def simulate(
    trace: Path = TRACE_ARG,
    policy: str = typer.Option("adaptive", "--policy", help=POLICY_HELP),
    policy_opt: list[str] = OPTS,
    cluster: Path | None = CLUSTER, nodes: list[str] = NODES, model: str | None = MODEL,
    load: float | None = LOAD, limit: int | None = LIMIT, seed: int = SEED, slots: int = SLOTS,
    telemetry_interval: float = TICK, fail: list[str] = FAIL, fail_node: list[str] = FAIL_NODE,
    slow: list[str] = SLOW, decision_interval: float = QUANTUM, profile: list[str] = PROFILE,
    live_costs: bool = LIVE_COSTS, fallback_policy: str | None = FALLBACK,
    out: Path | None = typer.Option(None, "--out", help="Write outputs and report here."),
) -> None:
    """Replay a trace in the simulator with one policy.

    Example: attnsched simulate ../shared/traces/azure_llm_2023_conv.csv --policy adaptive
    --load 0.9 --out runs/adaptive
    """
    spec = sim_spec(trace, policy, opts=policy_opt, cluster=cluster, nodes=nodes, model=model,
                    load=load, limit=limit, seed=seed, slots=slots,
                    telemetry_interval=telemetry_interval, fail=fail, fail_node=fail_node,
                    slow=slow, decision_interval=decision_interval, profile=profile,
                    live_costs=live_costs, fallback_policy=fallback_policy, out=out)
    built = validate_spec(spec)  # bad input is reported before any progress bar draws
    plan = check_arrivals(spec, keep=KEEP_JOBS)  # the one pass over the trace
    with progress_bar() as bar:
        task = bar.add_task(f"simulate {policy}", total=plan.jobs, **NO_SIM_PROGRESS)
        result = run_sim(spec, lambda p: bar.update(task, **sim_fields(p)), built, plan)
    print_summary({run_name(policy, built): result})
    if out is not None:
        console.print(f"outputs in {out}/ (report: {out / 'report.md'})")
    exit_for(result)


def progress_bar() -> Bars:
    """Jobs arrived (with an ETA), trace time, the queue and how many devices are busy."""
    return Bars(TextColumn("[bold]{task.description:>18}"), BarColumn(),
                    TextColumn("{task.completed:>9,}/{task.total:,} jobs, "
                               "t={task.fields[t]:,.0f}s, queue {task.fields[queue]:,}, "
                               "busy {task.fields[busy]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                    transient=True)


NO_SIM_PROGRESS: dict[str, Any] = {"t": 0.0, "queue": 0, "busy": "-"}


def sim_fields(p: SimProgress) -> dict[str, Any]:
    return {"completed": p.submitted, "t": p.clock, "queue": p.queued,
            "busy": f"{p.busy}/{p.devices} devices"}


def policies_cmd() -> None:
    """List the policies available by name, with what they do.

    Installed plugins (entry point group attnsched.policies) are listed too.

    Example: attnsched policies
    """
    from policies.base import available

    listed = available()
    width = max(map(len, listed), default=0)
    for name, description in listed.items():
        console.print(f"[bold]{name:{width}}[/] {description}", highlight=False)
