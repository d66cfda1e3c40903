"""Simulated runs from their options: the spec, its checks, and a comparison's processes.

``attnsched simulate`` and ``compare`` and the Python API's ``simulate`` and
``compare`` build and check their runs here; the CLI adds only its progress
bars, tables and exit codes.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from scheduler.cluster import parse_node_counts
from scheduler.run_options import parse_profiles, parse_slow
from scheduler.runs import Plan, RunSpec, bounded, check_arrivals, run_sim, validate_spec
from scheduler.sim.runner import RunResult, SimProgress

MAX_PROCESSES = 256  # compare --jobs: more than any machine's useful parallelism

# Each policy's progress reports, by policy name, in the process that started them.
Update = Callable[[str, SimProgress], None]
# Opened once every run is checked, with the policies' names and the jobs each will
# submit; yields where the reports go, and closes when the last run is done.
ProgressView = Callable[[list[str], int], AbstractContextManager[Update]]


def sim_spec(trace: Path, policy: str, **kw: Any) -> RunSpec:
    """The run the options describe, parsed from their command-line forms.

    The Python API hands its arguments over in the same forms, so both check
    them with the same parsers and messages.
    """
    from policies.base import parse_options

    return RunSpec(trace=trace, policy=policy, policy_options=parse_options(kw.pop("opts")),
                   profiles=parse_profiles(kw.pop("profile", [])),
                   nodes=parse_node_counts(kw.pop("nodes")), slow=parse_slow(kw.pop("slow")),
                   fail=tuple(kw.pop("fail")), fail_node=tuple(kw.pop("fail_node")), **kw)


def compare_sims(specs: dict[str, RunSpec], out: Path, processes: int = 0,
                 progress: ProgressView | None = None) -> dict[str, RunResult]:
    """Simulate each spec in its own process, then write ``comparison.md`` into ``out``.

    Every spec is checked first, so bad input fails once, before any process
    starts (and before ``progress`` opens). The simulator is single-threaded,
    hence one process per policy (at most one per core, or ``processes``).
    """
    bounded("--jobs", processes, 0, MAX_PROCESSES)
    for spec in specs.values():
        validate_spec(spec)
    # The specs differ only in their policy: one pass checks the arrivals for all.
    # (Each process reads the trace itself: handing it the jobs would cost as much.)
    plan = check_arrivals(next(iter(specs.values())))
    factor, total = plan.factor, plan.jobs
    workers = processes or min(len(specs), os.cpu_count() or 1)
    if progress is not None:
        results = _run_with_progress(specs, workers, factor, progress(list(specs), total))
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = {name: pool.submit(_run_one, spec, factor) for name, spec in specs.items()}
            results = {name: f.result() for name, f in futures.items()}
    from scheduler.report import write_comparison

    write_comparison({n: s.out for n, s in specs.items() if s.out}, out)
    return results


def compare_on_ray(specs: dict[str, RunSpec], out: Path, address: str) -> dict[str, RunResult]:
    """:func:`compare_sims` on the Ray cluster at ``address``: each policy a task of
    :func:`scheduler.sweeps.run_grid` (locally a process pool starts faster)."""
    from scheduler.report import write_comparison
    from scheduler.sweeps import run_grid

    results = run_grid(specs, address)
    write_comparison({n: s.out for n, s in specs.items() if s.out}, out)
    return results


def _run_one(spec: RunSpec, factor: float, updates: Any = None, key: str = "") -> RunResult:
    """One policy's run in a worker process; progress goes back through ``updates``,
    labelled ``key``."""
    report = None
    if updates is not None:
        def report(p: SimProgress) -> None:
            updates.put((key, p))
    return run_sim(spec, report, plan=Plan(factor, 0))


def _run_with_progress(specs: dict[str, RunSpec], workers: int, factor: float,
                       view: AbstractContextManager[Update]) -> dict[str, RunResult]:
    with view as update, multiprocessing.Manager() as manager:
        updates = manager.Queue()
        with ProcessPoolExecutor(workers) as pool:
            futures = {name: pool.submit(_run_one, spec, factor, updates, name)
                       for name, spec in specs.items()}
            while not all(f.done() for f in futures.values()):
                _drain(updates, update, timeout=0.2)
            _drain(updates, update, timeout=0.0)
            return {name: f.result() for name, f in futures.items()}


def _drain(updates: Any, update: Update, timeout: float) -> None:
    try:
        name, p = updates.get(timeout=timeout) if timeout else updates.get_nowait()
        update(name, p)
        while True:
            name, p = updates.get_nowait()
            update(name, p)
    except queue.Empty:
        return
