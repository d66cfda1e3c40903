"""Sweeps: a grid of simulations (policy × offered load × seed), each one a Ray task.

The driver checks every cell and reads the trace once (one pass prices the
work, which gives every load's time factor), puts the jobs in Ray's object
store, and runs each cell as a task with the same ``run_sim`` as
``attnsched simulate``: a cell's outputs are those of the same simulation run
on its own. Ray is an embedded one on 127.0.0.1 unless ``address`` names a
cluster (whose nodes must have attnsched installed, as ``cluster.yaml`` sets
up; the trace need not be on them unless it holds more jobs than
``KEEP_JOBS``, which each task then reads itself).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from scheduler.errors import InputError
from scheduler.jobs import Job
from scheduler.ray_start import join_or_start
from scheduler.report_text import optional_figures
from scheduler.run_options import policy_folder
from scheduler.runs import (
    KEEP_JOBS,
    Plan,
    RunSpec,
    arrival_factor,
    prepare,
    run_sim,
    scan_arrivals,
    validate_spec,
)
from scheduler.sim.runner import RunResult

MAX_CELLS = 10_000  # a sweep's grid: far more than a report can show
K = TypeVar("K")  # what names a run of a grid: a Cell, or a caller's own key


@dataclass(frozen=True, slots=True)
class Cell:
    """One simulation of a sweep; ``load`` None replays the trace's own arrival times."""

    policy: str
    load: float | None
    seed: int

    @property
    def folder(self) -> Path:
        load = "trace" if self.load is None else f"{self.load:g}"
        return Path(policy_folder(self.policy)) / f"load-{load}" / f"seed-{self.seed}"


def grid(base: RunSpec, policies: Sequence[str], loads: Sequence[float | None],
         seeds: Sequence[int], out: Path | None) -> dict[Cell, RunSpec]:
    """Every cell's spec: ``base`` with its policy, load, seed and folder under ``out``
    (None: the runs write nothing)."""
    cells = [Cell(p, lo, s) for p in policies for lo in loads for s in seeds]
    if len(set(cells)) != len(cells):
        raise InputError("a policy, load or seed is listed twice", field="--policies")
    if len(cells) > MAX_CELLS:
        raise InputError(f"{len(cells):,} simulations; a sweep runs at most {MAX_CELLS:,}",
                         field="--loads")
    return {c: replace(base, policy=c.policy, load=c.load, seed=c.seed,
                       out=None if out is None else out / c.folder) for c in cells}


def _arrivals_key(spec: RunSpec) -> tuple[object, ...]:
    """What a run's arrivals depend on: runs that agree on it read the same jobs."""
    return (spec.trace, spec.fmt, spec.model, spec.token_scale, spec.limit, spec.cluster,
            tuple(sorted(spec.nodes.items())), tuple(sorted(spec.profiles.items())))


def plan(specs: Mapping[K, RunSpec]) -> tuple[dict[K, tuple[float, int]],
                                              list[list[Job] | None]]:
    """One pass over each trace for the whole grid: every run's time factor (checked as
    ``simulate`` checks it) and the index of its trace in the second list, which holds
    each trace's jobs (None: too many to keep; the run reads the trace itself)."""
    from scheduler.pricing import ClusterCost

    groups: dict[tuple[object, ...], list[K]] = {}
    for key, spec in specs.items():
        groups.setdefault(_arrivals_key(spec), []).append(key)
    factors: dict[K, tuple[float, int]] = {}
    kept: list[list[Job] | None] = []
    for keys in groups.values():
        first = specs[keys[0]]
        cluster, profiles, _ = prepare(first)
        priced = (ClusterCost(cluster, dict(profiles))
                  if any(specs[k].load is not None for k in keys) else None)
        arrivals = scan_arrivals(first, priced, keep=KEEP_JOBS)
        for key in keys:
            factors[key] = (arrival_factor(specs[key], cluster, arrivals), len(kept))
        kept.append(arrivals.kept)
    return factors, kept


def _run_cell(spec: RunSpec, factor: float, jobs: list[Job] | None) -> RunResult:
    """One cell, in a Ray worker. The plan hands its jobs over by emptying the list, so
    it gets a copy: another task in this worker may be handed the same object."""
    kept = list(jobs) if jobs is not None else None
    return run_sim(spec, None, None, Plan(factor, len(kept or ()), kept))


def run_grid(specs: Mapping[K, RunSpec], address: str | None = None,
             progress: Callable[[K, RunResult], None] | None = None) -> dict[K, RunResult]:
    """Run every simulation as a Ray task; results in ``specs``' order. ``progress``
    hears of each as it finishes. Every spec is checked, and each trace read once,
    before Ray starts."""
    for spec in specs.values():
        validate_spec(spec)
    factors, kept = plan(specs)
    started = join_or_start(address, num_cpus=os.cpu_count() or 1)
    import ray

    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_run_cell)
        shared = [ray.put(jobs) for jobs in kept]
        refs = {task.remote(spec, factors[key][0], shared[factors[key][1]]): key
                for key, spec in specs.items()}
        done: dict[K, RunResult] = {}
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                key = refs[ref]
                done[key] = ray.get(ref)
                if progress is not None:
                    progress(key, done[key])
    finally:
        if started:
            ray.shutdown()
    return {key: done[key] for key in specs}


COLUMNS = ("policy", "load", "seed", "jobs_completed", "jobs_failed", "jct_mean", "jct_p50",
           "jct_p99", "makespan", "device_util_mean", "jain_fairness", "slo_attainment")


def optional_columns(results: Mapping[Any, RunResult]) -> tuple[str, ...]:
    """The optional figures some run has (``report_text.optional_figures``): a trace
    without prefix blocks has no cache hit rate, and no empty column for it."""
    return optional_figures(r.summary for r in results.values())


def write_table(results: Mapping[Cell, RunResult], out: Path) -> Path:
    """``sweep.csv``: one row per cell, the summary's headline figures (``COLUMNS``, then
    the optional figures some run has, such as ``cache_hit_rate``: a share, 0 to 1)."""
    path = out / "sweep.csv"
    out.mkdir(parents=True, exist_ok=True)
    columns = (*COLUMNS, *optional_columns(results))
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for cell, result in results.items():
            s: dict[str, Any] = result.summary
            writer.writerow([cell.policy, "" if cell.load is None else cell.load, cell.seed,
                             *(_cell(s.get(k)) for k in columns[3:])])
    return path


def _cell(value: Any) -> Any:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


__all__ = ["Cell", "grid", "optional_columns", "plan", "run_grid", "write_table"]
