"""``attnsched sweep``: policies × offered loads × seeds, each simulation a Ray task."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import typer
from rich import box
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from scheduler.cli.options import (
    ADDRESS,
    CLUSTER,
    LIMIT,
    LIVE_COSTS,
    MODEL,
    NODES,
    PROFILE,
    QUANTUM,
    SLOTS,
    TICK,
    TRACE_ARG,
    policy_names,
)
from scheduler.cli.progress import Bars
from scheduler.cli.results import console, exit_all
from scheduler.errors import InputError
from scheduler.report_text import OPTIONAL
from scheduler.runs import MAX_LOAD, MIN_LOAD, bounded, check_seed
from scheduler.sim.runner import RunResult
from scheduler.sims import sim_spec
from scheduler.sweeps import Cell, grid, optional_columns, run_grid, write_table


def parse_loads(text: str) -> list[float | None]:
    """``--loads``: comma-separated offered loads; empty: the trace's own arrival times."""
    if not text.strip():
        return [None]
    loads: list[float | None] = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise InputError(f"expected comma-separated numbers, got {part.strip()!r}",
                             field="--loads") from None
        loads.append(bounded("--loads", value, MIN_LOAD, MAX_LOAD))
    return loads


def parse_seeds(text: str) -> list[int]:
    try:
        return [check_seed(int(part), "--seeds") for part in text.split(",")]
    except ValueError:
        raise InputError(f"expected comma-separated integers, got {text!r}",
                         field="--seeds") from None


def sweep(
    trace: Path = TRACE_ARG,
    policies: str = typer.Option("static,greedy,adaptive", "--policies",
                                 help="Comma-separated policies."),
    loads: str = typer.Option("", "--loads", help="Comma-separated offered loads, e.g. "
                              "0.5,0.7,0.9 (empty: the trace's own arrival times)."),
    seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds for the policies' RNG."),
    cluster: Path | None = CLUSTER, nodes: list[str] = NODES, model: str | None = MODEL,
    limit: int | None = LIMIT, slots: int = SLOTS, telemetry_interval: float = TICK,
    decision_interval: float = QUANTUM, profile: list[str] = PROFILE,
    live_costs: bool = LIVE_COSTS, address: str | None = ADDRESS,
    out: Path = typer.Option(Path("runs/sweep"), "--out",
                             help="One folder per simulation here, and sweep.csv."),
) -> None:
    """Simulate every policy at every load and seed, each run a Ray task.

    Example: attnsched sweep ../shared/traces/azure_llm_2023_conv.csv --policies
    greedy,adaptive --loads 0.5,0.7,0.9 --seeds 0,1 --out runs/sweep

    Each simulation writes what `attnsched simulate` writes, under
    OUT/POLICY/load-LOAD/seed-SEED/; OUT/sweep.csv has one row per simulation.
    """
    base = sim_spec(trace, "fifo", opts=[], cluster=cluster, nodes=nodes, model=model,
                    load=None, limit=limit, seed=0, slots=slots,
                    telemetry_interval=telemetry_interval, fail=[], fail_node=[], slow=[],
                    decision_interval=decision_interval, profile=profile,
                    live_costs=live_costs)
    specs = grid(base, policy_names(policies), parse_loads(loads), parse_seeds(seeds), out)
    with Bars(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} simulations"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("sweep", total=len(specs))
        results = run_grid(specs, address, lambda cell, _: bar.advance(task))
    table = write_table(results, out)
    console.print(_table(results))
    console.print(f"{len(results)} simulations; table: {table}")
    exit_all({_label(c): r for c, r in results.items()})


def _label(cell: Cell) -> str:
    load = "trace" if cell.load is None else f"{cell.load:g}"
    return f"{cell.policy} load {load} seed {cell.seed}"


def _table(results: Mapping[Cell, RunResult]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    # Only a trace with prefix blocks has a cache hit rate: no empty column for the rest.
    shown = optional_columns(results)
    headers = [header for key, header, _ in OPTIONAL if key in shown]
    for name in ("policy", "load", "seed", "JCT mean", "p99", "util", *headers, "done",
                 "failed"):
        table.add_column(name, justify="left" if name == "policy" else "right")
    for cell, result in results.items():
        s = result.summary
        table.add_row(cell.policy, "trace" if cell.load is None else f"{cell.load:g}",
                      str(cell.seed), _seconds(s.get("jct_mean")), _seconds(s.get("jct_p99")),
                      f"{s.get('device_util_mean') or 0:.1%}",
                      *(_share(s.get(key)) for key in shown),
                      f"{s['jobs_completed']:,}", f"{s['jobs_failed']:,}")
    return table


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:,.1f} ms" if value < 1 else f"{value:,.2f} s"
