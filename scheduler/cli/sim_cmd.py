"""``attnsched simulate``, ``compare``, ``explain`` and ``policies``."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
from concurrent.futures import ProcessPoolExecutor
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from scheduler.cli.consoles import make_console
from scheduler.cluster import parse_node_counts
from scheduler.errors import InputError
from scheduler.inputfiles import clip
from scheduler.runs import (
    EXIT_JOBS_FAILED,
    MAX_LIMIT,
    MIN_LOAD,
    MIN_TELEMETRY_S,
    RunSpec,
    bounded,
    check_arrivals,
    check_slowdown,
    combined_code,
    failure_note,
    outcome_code,
    run_sim,
)
from scheduler.sim.runner import RunResult, SimProgress

console = make_console()
err_console = make_console(stderr=True)


def _trace_exists(path: Path) -> Path:
    """A missing trace is the commonest first mistake: say where traces are, or how to make one."""
    if path is not None and not path.exists():
        raise InputError("no such file; give a trace (.csv, .jsonl or .parquet), e.g. "
                         "../shared/traces/azure_llm_2023_conv.csv, or make one: attnsched "
                         "trace generate -o trace.jsonl --jobs 1000 --model tiny", path=path)
    return path


TRACE_ARG = typer.Argument(..., help="Trace file (.csv, .jsonl or .parquet).",
                           callback=_trace_exists)
CLUSTER = typer.Option(Path("cluster.yaml"), "--cluster", help="cluster.yaml or a node list.")
NODES = typer.Option([], "--nodes", help="Override a node type's count: TYPE=N (repeatable).")
MODEL = typer.Option(None, "--model", help="Model preset for token traces (default llama3-8b).")
LOAD = typer.Option(None, "--load", help=f"Rescale arrivals to this offered load (0.9 = 90%; "
                                          f"{MIN_LOAD:g} to 100).")
LIMIT = typer.Option(None, "--limit", min=1, help=f"Replay only the first N jobs (N ≤ "
                                                  f"{MAX_LIMIT:.0e}).")
SEED = typer.Option(0, "--seed", help="Seed for the policy's RNG (0 to 2^63-1).")
SLOTS = typer.Option(1, "--slots", help="Batches a device may run at once (they share it; "
                                        "1 to 64).")
TICK = typer.Option(1.0, "--telemetry-interval",
                    help=f"Seconds between telemetry samples ({MIN_TELEMETRY_S:g} to 3600; a "
                         "simulation takes at most 2e7: last arrival / interval).")
QUANTUM = typer.Option(0.0, "--decision-interval",
                       help="Scheduling quantum: consult the policy at most this often (s; 0 "
                            "to 3600).")
FAIL = typer.Option([], "--fail", help="Fail a device at a time: DEVICE@SECONDS.")
FAIL_NODE = typer.Option([], "--fail-node", help="Fail a node at a time: NODE@SECONDS.")
SLOW = typer.Option([], "--slow", help="Run a device slower: DEVICE=FACTOR, 1 to 1000 "
                                        "(test knob).")
OPTS = typer.Option([], "--policy-opt", help="Policy option key=value (repeatable).")
LIVE_COSTS = typer.Option(True, "--live-costs/--no-live-costs",
                          help="Model the live path's own costs (Ray round trips, decisions, "
                               "worker setup, CPU contention) from the profiles.")
PROFILE = typer.Option([], "--profile", help="Time devices with a calibrated profile: PATH "
                                             "(replaces the profile of its name) or NAME=PATH.")
ADDRESS = typer.Option(None, "--address", help="Ray cluster to join (auto, ray://...); default: "
                                               "an embedded local Ray on 127.0.0.1.")
SPEED = typer.Option(1.0, "--speed", help="Replay this many times faster than the trace's clock "
                                          "(0.001 to 1e6).")
EMULATE_GPUS = typer.Option(0, "--emulate-gpus", min=0, max=64,
                            help="Declare N GPU slots to a local Ray; compute on CPU.")
CPU_WORKERS = typer.Option(0, "--cpu-workers", min=0, max=256,
                           help="Split each GPU-less node into N CPU workers.")
MEMORY_FRACTION = typer.Option(0.9, "--memory-fraction",
                               help="Share of each device's memory that policies may plan "
                                    "with and its worker enforces, 0.01 to 1.")
# The options only a live run reads, by parameter name: compare --mode sim rejects them.
LIVE_ONLY = ("address", "speed", "emulate_gpus", "cpu_workers", "memory_fraction",
             "overwrite")


def parse_slow(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        device, sep, factor = item.rpartition("=")
        try:
            out[device] = float(factor)
            if not sep:
                raise ValueError
        except ValueError:
            raise InputError(f"expected DEVICE=FACTOR, got {clip(item)}",
                             field="--slow") from None
        check_slowdown(out[device])
    return out


def parse_profiles(items: list[str]) -> dict[str, str]:
    """``PATH`` (for the profile of its own name) or ``NAME=PATH`` → {name: path}.

    Each file is loaded here, so a bad one fails before anything runs.
    """
    from scheduler.profiles import load_profile

    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.rpartition("=")
        if not path or (sep and not name):
            raise InputError(f"expected PATH or NAME=PATH, got {item!r}", field="--profile")
        profile = load_profile(path)  # a bad file fails now, not mid-run
        out[name or profile.name] = path
    return out


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


def simulate(
    trace: Path = TRACE_ARG,
    policy: str = typer.Option("adaptive", "--policy",
                               help="Registered name, module:Class or path/file.py:Class."),
    policy_opt: list[str] = OPTS,
    cluster: Path = CLUSTER, nodes: list[str] = NODES, model: str | None = MODEL,
    load: float | None = LOAD, limit: int | None = LIMIT, seed: int = SEED, slots: int = SLOTS,
    telemetry_interval: float = TICK, fail: list[str] = FAIL, fail_node: list[str] = FAIL_NODE,
    slow: list[str] = SLOW, decision_interval: float = QUANTUM, profile: list[str] = PROFILE,
    live_costs: bool = LIVE_COSTS,
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
                    live_costs=live_costs, out=out)
    built = validate_spec(spec)  # bad input is reported before any progress bar draws
    factor, total = check_arrivals(spec)
    with progress_bar() as bar:
        task = bar.add_task(f"simulate {policy}", total=total, **NO_SIM_PROGRESS)
        result = run_sim(spec, lambda p: bar.update(task, **sim_fields(p)), built, factor)
    print_summary({policy: result})
    if out is not None:
        console.print(f"outputs in {out}/ (report: {out / 'report.md'})")
    exit_for(result)


def validate_spec(spec: RunSpec) -> Any:
    """Check the whole spec up front; returns the built policy."""
    from policies.base import load_policy
    from scheduler.runs import prepare

    prepare(spec)
    return load_policy(spec.policy, spec.policy_options)


def exit_for(result: RunResult) -> None:
    """Exit 0 only when every job completed: 1 when the run stopped early, 3
    (``EXIT_JOBS_FAILED``) when it finished with failed jobs, saying how many and why."""
    exit_all({"": result})


def exit_all(results: dict[str, RunResult]) -> None:
    """``exit_for`` for several runs (a compare): each failing run says so, once."""
    codes = []
    for name, result in results.items():
        code = outcome_code(result.exit_code, result.summary)
        label = f"{name}: " if name else ""
        if code == EXIT_JOBS_FAILED:
            err_console.print(f"[yellow]attnsched: {escape(label + failure_note(result.summary))}"
                              "[/]", soft_wrap=True)
        elif code:
            err_console.print(f"[red]attnsched: {escape(label)}run stopped: "
                              f"{escape(str(result.message))}[/]", soft_wrap=True)
        codes.append(code)
    if combined_code(codes):
        raise typer.Exit(combined_code(codes))


def print_summary(results: dict[str, RunResult]) -> None:
    from scheduler.report import summary_table_rows

    rows = summary_table_rows({name: r.summary for name, r in results.items()})
    short = {"JCT mean": "JCT mean", "JCT p50": "p50", "JCT p99": "p99", "device util": "util",
             "Jain fairness": "Jain", "SLO attainment": "SLO"}
    table = Table(caption="* best in column", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, col in enumerate(rows[0]):
        label = short.get(col, col)
        width = max(len(label), *(len(row[i]) for row in rows[1:]))
        table.add_column(label, justify="left" if col == "policy" else "right", no_wrap=True,
                         min_width=width)
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
    for name, r in results.items():
        s = r.summary
        verb = "ran live" if s["mode"] == "live" else "simulated"
        console.print(f"{name}: {s['jobs_completed']:,}/{s['jobs_total']:,} jobs done, "
                      f"{s['jobs_failed']:,} failed; {verb} in "
                      f"{r.run_info['wall_seconds']:.1f}s")


def progress_bar() -> Progress:
    """Jobs arrived (with an ETA), trace time, the queue and how many devices are busy."""
    return Progress(TextColumn("[bold]{task.description:>18}"), BarColumn(),
                    TextColumn("{task.completed:>9,}/{task.total:,} jobs, "
                               "t={task.fields[t]:,.0f}s, queue {task.fields[queue]:,}, "
                               "busy {task.fields[busy]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                    transient=True)


NO_SIM_PROGRESS: dict[str, Any] = {"t": 0.0, "queue": 0, "busy": "-"}


def sim_fields(p: SimProgress) -> dict[str, Any]:
    return {"completed": p.submitted, "t": p.clock, "queue": p.queued,
            "busy": f"{p.busy}/{p.devices} devices"}


def _run_one(spec: RunSpec, factor: float, updates: Any = None) -> RunResult:
    """One policy's run in a worker process; progress goes back through ``updates``."""
    report = None
    if updates is not None:
        def report(p: SimProgress) -> None:
            updates.put((spec.policy, p))
    return run_sim(spec, report, factor=factor)


class Mode(str, Enum):
    SIM = "sim"
    LIVE = "live"


MAX_PROCESSES = 256  # compare --jobs: more than any machine's useful parallelism
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
    cluster: Path = CLUSTER, nodes: list[str] = NODES, model: str | None = MODEL,
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

    Only live: --address, --emulate-gpus, --cpu-workers, --speed, --memory-fraction,
    --overwrite (a simulation always replaces its folder). Only
    sim: --cluster, --nodes, --load, --slots, --fail, --fail-node, --decision-interval, --jobs.
    """
    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not names or len(set(names)) != len(names):
        raise InputError("expected distinct comma-separated policy names", field="--policies")
    _reject_given(ctx, LIVE_ONLY if mode is Mode.SIM else SIM_ONLY, mode)
    if mode is Mode.LIVE:
        from scheduler.cli import live_cmd as live

        config = live.live_config(address=address, emulate_gpus=emulate_gpus,
                                  cpu_workers=cpu_workers, speed=speed,
                                  memory_fraction=memory_fraction,
                                  telemetry_interval=telemetry_interval, seed=seed,
                                  slow=parse_slow(slow), profiles=parse_profiles(profile))
        config.overwrite = overwrite
        live.compare_live(trace, names, model=model, limit=limit, seed=seed,
                          telemetry_interval=telemetry_interval, slow=parse_slow(slow),
                          out=out, config=config)
        return
    specs = {name: sim_spec(trace, name, opts=[], cluster=cluster, nodes=nodes, model=model,
                            load=load, limit=limit, seed=seed, slots=slots,
                            telemetry_interval=telemetry_interval, fail=fail,
                            fail_node=fail_node, slow=slow, decision_interval=decision_interval,
                            profile=profile, live_costs=live_costs,
                            out=out / policy_folder(name))
             for name in names}
    results = compare_sims(specs, out, jobs, progress=True)
    print_summary(results)
    console.print(f"comparison: {out / 'comparison.md'}")
    exit_all(results)


def compare_sims(specs: dict[str, RunSpec], out: Path, processes: int = 0,
                 progress: bool = False) -> dict[str, RunResult]:
    """Simulate each spec in its own process, then write ``comparison.md`` into ``out``.

    Every spec is checked first, so bad input fails once, before any process
    starts. The simulator is single-threaded, hence one process per policy (at
    most one per core, or ``processes``).
    """
    bounded("--jobs", processes, 0, MAX_PROCESSES)
    for spec in specs.values():
        validate_spec(spec)
    # The specs differ only in their policy: one pass checks the arrivals for all.
    factor, total = check_arrivals(next(iter(specs.values())))
    workers = processes or min(len(specs), os.cpu_count() or 1)
    if progress:
        results = _run_with_progress(specs, workers, factor, total)
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = {name: pool.submit(_run_one, spec, factor) for name, spec in specs.items()}
            results = {name: f.result() for name, f in futures.items()}
    from scheduler.report import write_comparison

    write_comparison({n: s.out for n, s in specs.items() if s.out}, out)
    return results


def _run_with_progress(specs: dict[str, RunSpec], workers: int, factor: float,
                       total: int) -> dict[str, RunResult]:
    with progress_bar() as bar, multiprocessing.Manager() as manager:
        tasks = {name: bar.add_task(name, total=total, **NO_SIM_PROGRESS) for name in specs}
        updates = manager.Queue()
        with ProcessPoolExecutor(workers) as pool:
            futures = {name: pool.submit(_run_one, spec, factor, updates)
                       for name, spec in specs.items()}
            while not all(f.done() for f in futures.values()):
                _drain(updates, bar, tasks, timeout=0.2)
            _drain(updates, bar, tasks, timeout=0.0)
            return {name: f.result() for name, f in futures.items()}


def _reject_given(ctx: typer.Context, names: tuple[str, ...], mode: Mode) -> None:
    """An option the chosen mode would ignore is an error, not a silent no-op."""
    other = Mode.LIVE if mode is Mode.SIM else Mode.SIM
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name or "")
        if param.name in names and source is not None and source.name not in (
                "DEFAULT", "DEFAULT_MAP"):
            raise InputError(f"only with --mode {other.value} (this compare is "
                             f"--mode {mode.value})", field=param.opts[0])


def _drain(updates: Any, bar: Progress, tasks: dict[str, Any], timeout: float) -> None:
    try:
        name, p = updates.get(timeout=timeout) if timeout else updates.get_nowait()
        bar.update(tasks[name], **sim_fields(p))
        while True:
            name, p = updates.get_nowait()
            bar.update(tasks[name], **sim_fields(p))
    except queue.Empty:
        return


def policy_folder(name: str) -> str:
    """A policy's folder under compare's --out; plugin specs hold ':' and '/'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def explain(
    run_dir: Path = typer.Argument(..., help="A run's --out folder."),
    job: str = typer.Argument(..., help="The job id to explain."),
) -> None:
    """Every decision that touched a job, and why, and how the job ended.

    Example: attnsched explain runs/adaptive r42-decode
    """
    decisions = run_dir / "decisions.jsonl"
    if not decisions.exists():
        raise InputError("no decisions.jsonl here; is this a run folder?", path=run_dir)
    if not (run_dir / "jobs.parquet").exists():
        raise InputError("no jobs.parquet here; is this a finished run folder?", path=run_dir)
    found = 0
    with decisions.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"invalid JSON: {e.msg}", path=decisions, line=number) from None
            if job in (row.get("jobs") or ()):
                found += 1
                verdict = "[green]applied[/]" if row["outcome"] == "applied" else \
                    f"[red]{row['outcome']}[/]: {row.get('why', '')}"
                target = f" on {row['device']}" if "device" in row else ""
                console.print(f"t={row['t']:.6g}s {row['policy']} {row['action']}{target}: "
                              f"{row.get('reason', '')} -> {verdict}")
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir / "jobs.parquet")
    rows = table.filter(pc.equal(table["id"], job)).to_pylist()
    if not rows and not found:
        raise InputError(f"no job {job!r} in this run", path=run_dir, field="job")
    for r in rows:
        start = "-" if r["start"] is None else f"{r['start']:.6g}s"
        end = "-" if r["end"] is None else f"{r['end']:.6g}s"
        console.print(f"{job}: {r['status']} after {r['attempts']} attempt(s); submit "
                      f"{r['submit']:.6g}s, start {start}, end {end}, device {r['device']}"
                      + (f"; reason: {r['reason']}" if r["reason"] else ""))


def policies_cmd() -> None:
    """List the policies available by name, with what they do.

    Installed plugins (entry point group attnsched.policies) are listed too.

    Example: attnsched policies
    """
    from policies.base import available

    for name, description in available().items():
        console.print(f"[bold]{name:10}[/] {description}")
