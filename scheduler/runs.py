"""One place that turns command-line intent into a run: trace, cluster, policy, load.

``simulate`` and ``compare`` (and later live runs) share it, so a simulated
and a live run of the same options see exactly the same jobs.
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from scheduler.cluster import ClusterSpec, load_cluster
from scheduler.errors import InputError
from scheduler.inputfiles import MAX_ECHO, clip
from scheduler.jobs import MAX_TIME_S, AttentionJob, ClusterJob, Job, retimed
from scheduler.policy import run_name
from scheduler.pricing import ClusterCost, load_profiles
from scheduler.profiles import DeviceProfile
from scheduler.sim.executor import LiveCosts
from scheduler.sim.runner import (
    Fault,
    RunResult,
    SimConfig,
    SimProgress,
    parse_faults,
    simulate,
)
from scheduler.traces import open_trace


@dataclass(frozen=True)
class RunSpec:
    """Everything that defines a run; picklable, so compare can fan out to processes."""

    trace: Path
    policy: str = "adaptive"
    policy_options: Mapping[str, str] = field(default_factory=dict)
    cluster: Path | None = None  # None: see scheduler.cluster.cluster_path
    nodes: Mapping[str, int] = field(default_factory=dict)
    fmt: str = "auto"
    model: str | None = None
    token_scale: float = 1.0
    load: float | None = None
    limit: int | None = None
    seed: int = 0
    slots: int = 1
    telemetry_interval: float = 1.0
    decision_interval: float = 0.0
    fail: tuple[str, ...] = ()
    fail_node: tuple[str, ...] = ()
    slow: Mapping[str, float] = field(default_factory=dict)
    profiles: Mapping[str, str] = field(default_factory=dict)  # profile name -> file
    out: Path | None = None
    report: bool = True
    fallback_policy: str | None = None  # takes over when the policy fails repeatedly
    # Model what the live path costs beyond the attention (Ray round trips, the
    # controller's decisions, worker setup, CPU contention), as measured in the
    # profiles; off: devices cost exactly what the cost model predicts.
    live_costs: bool = True


# Bounds of the numeric options, in one place: each option's help states its bound.
MIN_TELEMETRY_S = 1e-3  # a sample per millisecond at most: finer is noise, and would hang
MAX_SIM_SAMPLES = 20_000_000  # telemetry instants a simulated run may take (span / interval)
MAX_SEED = 2**63 - 1
# Jobs a simulation keeps from its first pass over the trace (~350 bytes each) rather
# than reading and checking the file twice; a longer trace streams, read again.
KEEP_JOBS = 1_000_000
MAX_LIMIT = 10**12  # jobs; far beyond any trace, below what islice and counters take
MIN_LOAD, MAX_LOAD = 1e-3, 100.0
EXIT_JOBS_FAILED = 3  # the run finished, but some jobs did not complete


def bounded(option: str, value: float, lo: float, hi: float, *, lo_open: bool = False,
            unit: str = "") -> float:
    """``value`` if it is a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``).

    Every numeric option goes through here, so each refuses NaN, infinities and
    values out of range the same way: exit 2, naming the option and its range.
    """
    number = isinstance(value, int | float) and not isinstance(value, bool)
    # Huge ints (typer parses any length) never reach math.isfinite, which would overflow.
    ok = number and (isinstance(value, int) or math.isfinite(value)) and value <= hi and (
        value > lo if lo_open else value >= lo)
    if not ok:
        span = f"{'(' if lo_open else '['}{_num(lo)}, {_num(hi)}]"
        raise InputError(f"expected a number in {span}{unit}, got {clip(value)}", field=option)
    return value


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def check_seed(seed: int, option: str = "--seed") -> int:
    return int(bounded(option, seed, 0, MAX_SEED))


def check_out_dir(path: Path, option: str = "--out") -> Path:
    """``path`` can be an output folder: it is one, or can be made, and takes new files.

    Checked before anything runs: a run that finds out at its first write
    (under /proc, in a read-only folder, below a file) has done its work for
    nothing, and reports an internal error instead of the option at fault.
    Nothing is left behind: a refused run must not leave an empty folder.
    """
    try:
        if path.exists() and not path.is_dir():
            raise InputError("exists and is not a directory", path=path, field=option)
        folder = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    except OSError as e:
        raise InputError(f"cannot look here: {e.strerror or e}", path=path,
                         field=option) from None
    if not folder.is_dir():
        raise InputError(f"{folder} is not a directory", path=path,
                         field=option)
    _probe(folder, path, option)
    return path


def check_out_file(path: Path, option: str = "--output") -> Path:
    """``path`` can be written as a file: its folder exists and takes new files."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError("is a folder; expected a file path", path=path, field=option)
    if not folder.is_dir():
        why = "is not a folder" if folder.exists() else "does not exist"
        raise InputError(f"folder {folder} {why}", path=path, field=option)
    _probe(folder, path, option)
    return path


def _probe(folder: Path, path: Path, option: str) -> None:
    """Make and remove a folder in ``folder``: the one test the OS cannot answer wrongly
    (``access()`` says yes to root under /proc and in read-only mounts)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".attnsched-probe-", dir=folder))
    except OSError as e:
        where = "" if folder == path.absolute() else f" in {folder}"
        raise InputError(f"cannot write{where}: {e.strerror or e}", path=path,
                         field=option) from None


def outcome_code(exit_code: int, summary: Mapping[str, Any]) -> int:
    """What a finished run exits with: 1 when it stopped early (``exit_code``), 3 when it
    finished but some jobs failed, 0 only when every job completed."""
    if exit_code:
        return exit_code
    return EXIT_JOBS_FAILED if summary.get("jobs_failed") else 0


def combined_code(codes: Iterable[int]) -> int:
    """Several runs' codes as one: a stopped run (1) outranks failed jobs (3)."""
    seen = set(codes)
    return 1 if 1 in seen else max(seen, default=0)


def failure_note(summary: Mapping[str, Any]) -> str:
    """``N of M jobs failed`` and the most common reasons, for a run that exits 3."""
    reasons = Counter(dict(summary.get("failed_reasons") or {})).most_common(3)
    why = "; ".join(f"{str(r)[:MAX_ECHO]} ({n:,})" for r, n in reasons)
    return (f"{summary.get('jobs_failed', 0):,} of {summary.get('jobs_total', 0):,} jobs "
            f"failed" + (f": {why}" if why else " (see the reason column of jobs.parquet)"))


def trace_jobs(spec: RunSpec) -> Iterator[Job]:
    jobs = open_trace(spec.trace, spec.fmt, spec.model, spec.token_scale).jobs()
    return itertools.islice(jobs, spec.limit) if spec.limit else jobs


def replay(spec: RunSpec, arrivals: Arrivals) -> Iterator[Job]:
    """The jobs of ``spec``'s trace: the ones ``arrivals`` kept, or the trace read again."""
    return iter(arrivals.kept) if arrivals.kept is not None else trace_jobs(spec)


def count_jobs(spec: RunSpec) -> int:
    """Jobs the run will replay (one streaming pass), for progress bars with an ETA."""
    return scan_arrivals(spec).jobs


def device_seconds(cost: ClusterCost, job: Job) -> float:
    """Device-seconds of ``job`` on the fastest kind of device the cluster has.

    A cluster job holds ``gpus × gpu_fraction`` devices for its duration; an
    attention job one device for its best run time.
    """
    if isinstance(job, ClusterJob):
        return job.duration * max(job.gpus * job.gpu_fraction, 0.0)
    seconds = cost.best_seconds(job)
    cost.forget(job.id)  # a pass over the whole trace must not keep every job priced
    return seconds


class Arrivals(NamedTuple):
    work: float  # device-seconds on the fastest device kind (0 when not priced)
    first: float
    last: float
    jobs: int
    kept: list[Job] | None = None  # the jobs read, when the pass kept them
    needs_gpu: ClusterJob | None = None  # the first cluster job that asks for GPUs


def scan_arrivals(spec: RunSpec, cost: ClusterCost | None = None, keep: int = 0) -> Arrivals:
    """One streaming pass: the span of arrivals, the job count and, with ``cost``, the work.

    With ``keep``, the jobs read are kept (up to ``keep`` of them; a longer trace
    keeps none), so the run that follows need not read and check the trace again.
    """
    work, first, last, count = 0.0, math.inf, 0.0, 0
    kept: list[Job] | None = [] if keep else None
    needs_gpu: ClusterJob | None = None
    for job in trace_jobs(spec):
        count += 1
        if needs_gpu is None and isinstance(job, ClusterJob) and job.gpus:
            needs_gpu = job
        seconds = device_seconds(cost, job) if cost is not None else 0.0
        if math.isfinite(seconds):
            work += seconds
        first, last = min(first, job.submit_time), max(last, job.submit_time)
        if kept is not None:
            kept.append(job)
            if count > keep:
                kept = None  # memory follows the jobs in flight: read the trace again
    return Arrivals(work, first, last, count, kept, needs_gpu)


def load_factor(spec: RunSpec, cluster: ClusterSpec, arrivals: Arrivals) -> float:
    assert spec.load is not None
    span = arrivals.last - arrivals.first
    if span <= 0 or arrivals.work <= 0:
        raise InputError("--load needs a trace whose arrivals span time and cost work",
                         path=spec.trace, field="--load")
    devices = sum(1 for d in cluster.devices if d.kind == "gpu") or len(cluster.devices)
    factor = arrivals.work / (spec.load * devices * span)
    # A tiny load stretches arrivals without bound: say so here, not as a bad submit_time.
    if not (math.isfinite(factor) and factor > 0 and arrivals.last * factor <= MAX_TIME_S):
        raise InputError(f"load {clip(spec.load)} would spread this trace's arrivals past "
                         f"{MAX_TIME_S:g} s; expected a larger load", field="--load")
    return factor


def check_samples(spec: RunSpec, last_arrival: float) -> None:
    """A simulated run samples telemetry until its last arrival and beyond: bound how often."""
    samples = last_arrival / spec.telemetry_interval
    if samples > MAX_SIM_SAMPLES:
        raise InputError(f"{clip(spec.telemetry_interval)} s over {last_arrival:,.0f} s of "
                         f"arrivals is {samples:,.0f} samples; a simulation takes at most "
                         f"{MAX_SIM_SAMPLES:,}: expected at least "
                         f"{last_arrival / MAX_SIM_SAMPLES:.3g} s", field="--telemetry-interval")


def _scaled(jobs: Iterator[Job], factor: float) -> Iterator[Job]:
    for job in jobs:
        yield retimed(job, job.submit_time * factor)


def check_options(spec: RunSpec) -> None:
    """The option checks every run shares, simulated or live; makes and probes ``out``."""
    bounded("--decision-interval", spec.decision_interval, 0, 3600, unit=" seconds")
    bounded("--telemetry-interval", spec.telemetry_interval, MIN_TELEMETRY_S, 3600,
            unit=" seconds")
    bounded("--slots", spec.slots, 1, 64)
    check_seed(spec.seed)
    if spec.limit is not None:
        bounded("--limit", spec.limit, 1, MAX_LIMIT)
    if spec.load is not None:
        bounded("--load", spec.load, MIN_LOAD, MAX_LOAD)
    if spec.out is not None:
        check_out_dir(spec.out)


def check_slowdown(factor: float) -> float:
    """``--slow DEVICE=FACTOR``'s factor: 1 (full speed) to 1000 times slower."""
    return bounded("--slow", factor, 1, 1000)


def prepare(spec: RunSpec) -> tuple[ClusterSpec, dict[str, DeviceProfile], tuple[Fault, ...]]:
    check_options(spec)
    cluster = load_cluster(spec.cluster, spec.nodes or None)
    if not cluster.devices:
        raise InputError("the cluster has no devices to run jobs on", path=cluster.source)
    profiles = load_profiles(cluster, spec.profiles)
    faults = parse_faults(spec.fail, "device", cluster) + parse_faults(spec.fail_node, "node",
                                                                        cluster)
    for device, factor in spec.slow.items():
        if device not in {d.id for d in cluster.devices}:
            raise InputError(f"no device {clip(device)}", field="--slow")
        check_slowdown(factor)
    return cluster, profiles, faults


class Plan(NamedTuple):
    """What one pass over the trace found: the factor ``--load`` puts on submit times
    (1 without it), the job count, and the jobs themselves when the pass kept them."""

    factor: float
    jobs: int
    kept: list[Job] | None = None

    def trace(self, spec: RunSpec) -> Iterator[Job]:
        """The run's jobs: the kept ones, handed over once (the plan lets go of each as
        it is submitted), or the trace read again."""
        if self.kept is None:
            return trace_jobs(spec)
        return _handed_over(self.kept)


def _handed_over(jobs: list[Job]) -> Iterator[Job]:
    jobs.reverse()
    while jobs:
        yield jobs.pop()


def arrival_factor(spec: RunSpec, cluster: ClusterSpec, arrivals: Arrivals) -> float:
    """The factor ``--load`` puts on submit times (1 without it); refuses a load or a
    telemetry interval the trace cannot take."""
    factor = 1.0 if spec.load is None else load_factor(spec, cluster, arrivals)
    check_samples(spec, arrivals.last * factor)
    return factor


def plan_arrivals(spec: RunSpec, cluster: ClusterSpec, profiles: Mapping[str, DeviceProfile],
                  keep: int = 0) -> Plan:
    """One pass over the trace (see :class:`Plan`), checked by :func:`arrival_factor`.
    ``keep``: as :func:`scan_arrivals`."""
    priced = ClusterCost(cluster, dict(profiles)) if spec.load is not None else None
    arrivals = scan_arrivals(spec, priced, keep)
    return Plan(arrival_factor(spec, cluster, arrivals), arrivals.jobs, arrivals.kept)


def validate_spec(spec: RunSpec) -> Any:
    """Check the whole spec up front; returns the built policy."""
    from policies.base import load_policy

    prepare(spec)
    if spec.fallback_policy is not None:
        load_policy(spec.fallback_policy)
    return load_policy(spec.policy, spec.policy_options)


def check_arrivals(spec: RunSpec, keep: int = 0) -> Plan:
    """``plan_arrivals`` from the spec alone: what a command checks before its progress bar."""
    cluster, profiles, _ = prepare(spec)
    return plan_arrivals(spec, cluster, profiles, keep)


def run_sim(spec: RunSpec, progress: Callable[[SimProgress], None] | None = None,
            policy: Any = None, plan: Plan | None = None) -> RunResult:
    """Run one simulation as the CLI would; writes outputs and a report when ``out`` is set.

    ``policy`` is the already built policy, when the caller loaded it to
    validate the spec first (a plugin file then runs once, not twice);
    ``plan`` what ``check_arrivals`` returned, when the caller checked them
    (with the jobs it kept, the trace is read once).
    """
    from policies.base import load_policy

    cluster, profiles, faults = prepare(spec)
    if plan is None:
        plan = plan_arrivals(spec, cluster, profiles, keep=KEEP_JOBS)
    if policy is None:
        policy = load_policy(spec.policy, spec.policy_options)
    factor = plan.factor
    jobs: Iterator[Job] = plan.trace(spec)
    context: dict[str, Any] = {"trace": str(spec.trace), "cluster": cluster.source,
                               "devices": len(cluster.devices), "seed": spec.seed,
                               "live_costs": spec.live_costs}
    if spec.load is not None:
        jobs = _scaled(jobs, factor)
        context.update(load=spec.load, time_scale=factor)
    config = SimConfig(seed=spec.seed, slots=spec.slots,
                       telemetry_interval=spec.telemetry_interval,
                       decision_interval=spec.decision_interval, faults=faults,
                       slow=dict(spec.slow), progress=progress,
                       live=LiveCosts.from_profiles(profiles.values()) if spec.live_costs
                       else None,
                       fallback=None if spec.fallback_policy is None else
                       (load_policy(spec.fallback_policy), spec.fallback_policy))
    name = run_name(spec.policy, policy)
    result = simulate(jobs, cluster, profiles, policy, str(name), spec.out, config, context)
    if spec.out is not None and spec.report:
        from scheduler.report import write_report

        write_report(spec.out)
    return result


__all__ = ["KEEP_JOBS", "Arrivals", "AttentionJob", "Plan", "RunSpec", "arrival_factor",
           "check_arrivals", "prepare", "replay", "run_sim", "scan_arrivals", "validate_spec"]
