"""``attnsched fidelity``: does the simulator predict the live run?

Each policy runs live, then in the simulator on the very cluster the live run
discovered, with the same profiles, seed, telemetry interval and replay speed,
and the simulator modelling the live path's own costs. The verdict is the
relative error of the figures users compare policies by, and whether both
runs rank the policies alike.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich import box
from rich.progress import Progress
from rich.table import Table

from scheduler import fidelity
from scheduler.cli.live_cmd import NO_PROGRESS, live_progress_bar, track
from scheduler.cli.options import (
    ADDRESS,
    CPU_WORKERS,
    EMULATE_GPUS,
    LIMIT,
    MEMORY_FRACTION,
    MODEL,
    PROFILE,
    SEED,
    SPEED,
    TICK,
    TRACE_ARG,
    policy_names,
)
from scheduler.cli.results import console
from scheduler.live_runs import live_config
from scheduler.policy import run_name
from scheduler.profiles import DeviceProfile
from scheduler.run_options import parse_profiles, policy_folder
from scheduler.runs import RunSpec, check_options, check_out_dir, count_jobs, trace_jobs

if TYPE_CHECKING:
    from scheduler.cluster import ClusterSpec
    from workers.executor import LiveConfig, LiveSession

TARGETS = {"jct_mean": 0.10, "jct_p99": 0.20}  # issue 6: what "predicts" means here
# Every device this much slower in one more simulation per policy: how far a small error
# in the profile's speed moves the figures, which queueing amplifies several-fold.
SENSITIVITY_SLOW = 1.05


def fidelity_cmd(
    trace: Path = TRACE_ARG,
    policies: str = typer.Option("static,greedy,adaptive", "--policies",
                                 help="Comma-separated policies to run both ways."),
    model: str | None = MODEL, limit: int | None = LIMIT, seed: int = SEED,
    speed: float = SPEED, telemetry_interval: float = TICK,
    profile: list[str] = PROFILE,
    retime: bool = typer.Option(
        False, "--retime/--no-retime",
        help="Before the live runs, re-time the profile's live-path levels and round trip "
             "with calibration's live replays (their own jobs; ~90 s on a CPU), and run and "
             "simulate with them, for a profile calibrated long before. Only for a profile "
             "calibrated with a live replay; the profile as given is simulated too "
             "('as_given')."),
    repeats: int = typer.Option(1, "--repeats", min=1, max=20,
                                help="Rounds of live runs, each policy once a round; each "
                                     "live figure is their median."),
    address: str | None = ADDRESS, emulate_gpus: int = EMULATE_GPUS,
    cpu_workers: int = CPU_WORKERS, memory_fraction: float = MEMORY_FRACTION,
    out: Path = typer.Option(Path("runs/fidelity"), "--out",
                             help="fidelity.json, plots/ and POLICY/{live,sim}/ here."),
) -> None:
    """Run each policy live and simulated on one trace; report how well the simulator predicts.

    Example: attnsched fidelity trace.jsonl --policies static,greedy,adaptive --model tiny
    --emulate-gpus 2 --speed 4 --profile profile.json --repeats 3 --out runs/fidelity
    """
    names = policy_names(policies)
    overrides = parse_profiles(profile)
    config = live_config(address=address, emulate_gpus=emulate_gpus, cpu_workers=cpu_workers,
                         speed=speed, memory_fraction=memory_fraction,
                         telemetry_interval=telemetry_interval, seed=seed, slow={},
                         profiles=overrides)
    config.overwrite = True  # no --resume here: each fidelity run measures afresh
    folders = {n: out / policy_folder(n) for n in names}
    specs = {n: RunSpec(trace=trace, policy=n, model=model, limit=limit, seed=seed,
                        telemetry_interval=telemetry_interval) for n in names}
    for spec in specs.values():
        check_options(spec)
    check_out_dir(out)
    total = count_jobs(next(iter(specs.values())))
    lives = _live_rounds(specs, folders, config, overrides, out, total=total, repeats=repeats,
                         retime=retime)
    result = _assess(lives, specs, folders, speed=speed, repeats=repeats)
    path = fidelity.write(out, result)
    fidelity.plot_jct(out, {n: (folders[n] / "live", folders[n] / "sim") for n in names})
    print_fidelity(result)
    console.print(f"fidelity: {path} (plot: {out / 'plots' / 'fidelity_jct.png'})")


@dataclasses.dataclass
class _Lives:
    """What the live rounds leave for the simulations."""

    cluster: ClusterSpec  # as the live run discovered it
    summaries: dict[str, list[dict[str, Any]]]  # policy -> each round's summary
    given: dict[str, DeviceProfile]
    retimed: dict[str, DeviceProfile] | None = None  # the profiles re-timed, when they were
    retimed_name: str | None = None


def _live_rounds(specs: dict[str, RunSpec], folders: dict[str, Path], config: LiveConfig,
                 overrides: dict[str, str], out: Path, *, total: int, repeats: int,
                 retime: bool) -> _Lives:
    """Every policy live, ``repeats`` rounds of them, in one Ray session."""
    from policies.base import load_policy
    from scheduler.pricing import load_profiles
    from workers.executor import close_session, open_session, run_live

    with live_progress_bar() as bar:
        tasks = {(n, r): bar.add_task(f"{n} live" + (f" {r + 1}" if repeats > 1 else ""),
                                      total=total, start=False, **NO_PROGRESS)
                 for r in range(repeats) for n in specs}
        session = open_session(config)
        try:
            lives = _Lives(session.spec, {n: [] for n in specs},
                           load_profiles(session.spec, overrides))
            run_config = _retime(lives, session, config, overrides, out, bar) if retime \
                else config
            # Rounds, not policy after policy: a shared machine drifts over the minutes a
            # fidelity run takes, and each round's policies see the same machine.
            for r in range(repeats):
                for name, spec in specs.items():
                    policy = load_policy(name)  # a fresh policy each time: plugins keep state
                    label = run_name(name, policy)
                    folder = folders[name] / ("live" if r == 0 else f"live-{r + 1}")
                    lives.summaries[name].append(run_live(
                        trace_jobs(spec), policy, label, folder,
                        dataclasses.replace(run_config, progress=track(bar, tasks[name, r])),
                        {"trace": str(spec.trace)}, session=session).summary)
        finally:
            close_session(session)
    return lives


def _retime(lives: _Lives, session: LiveSession, config: LiveConfig,
            overrides: dict[str, str], out: Path, bar: Progress) -> LiveConfig:
    """Re-time the one profile every device uses with calibration's live replays, when it
    can be; the config the live rounds run with."""
    from scheduler.profiles import profile_from_dict
    from workers import calibrate_live

    name, base = _retimable(session.spec, overrides)
    if name is None:
        bar.console.print("--retime: no profile here was calibrated with a live "
                          "replay to re-time; using the profiles as given")
        return config
    bar.console.print(f"re-timing profile {name!r} with calibration's live replays")
    data = calibrate_live.retimed(base, session, name)
    path = out / "profiles" / "retimed.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    lives.retimed = {**lives.given, name: profile_from_dict(data, path=path)}
    lives.retimed_name = name
    return dataclasses.replace(config, profiles={**config.profiles, name: str(path)})


def _simulate(spec: RunSpec, cluster: ClusterSpec, profiles: dict[str, DeviceProfile],
              folder: Path | None, speed: float, slow: float = 1.0) -> dict[str, Any]:
    """One policy in the simulator on the live run's cluster; its summary."""
    from policies.base import load_policy
    from scheduler.sim.executor import LiveCosts
    from scheduler.sim.runner import SimConfig, simulate

    policy = load_policy(spec.policy)
    slowed = {d.id: slow for d in cluster.devices} if slow != 1.0 else {}
    return simulate(trace_jobs(spec), cluster, profiles, policy,
                    run_name(spec.policy, policy), folder,
                    SimConfig(seed=spec.seed, telemetry_interval=spec.telemetry_interval,
                              slow=slowed,
                              live=LiveCosts.from_profiles(profiles.values(), speed)),
                    {"trace": str(spec.trace)}).summary


def _assess(lives: _Lives, specs: dict[str, RunSpec], folders: dict[str, Path], *,
            speed: float, repeats: int) -> dict[str, Any]:
    """Each policy simulated beside its live rounds' median: fidelity.json's contents."""
    names = list(specs)
    profiles = lives.retimed or lives.given
    runs: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    as_given: dict[str, dict[str, Any]] = {}
    slower: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        runs[name] = (fidelity.median_summary(lives.summaries[name]),
                      _simulate(spec, lives.cluster, profiles, folders[name] / "sim", speed))
        slower[name] = _simulate(spec, lives.cluster, profiles, None, speed, SENSITIVITY_SLOW)
        if lives.retimed:
            as_given[name] = _simulate(spec, lives.cluster, lives.given,
                                       folders[name] / "sim-as-given", speed)
    result = fidelity.assess(runs, lives.summaries)
    for name in names:
        result["policies"][name]["sensitivity"] = fidelity.errors(slower[name], runs[name][1])
    result["sensitivity_slow"] = SENSITIVITY_SLOW
    result["speed"], result["repeats"] = speed, repeats
    result["profiles"] = {name: p.source for name, p in lives.given.items()}
    result["retimed"] = lives.retimed_name
    if lives.retimed:
        result["as_given"] = fidelity.assess({n: (runs[n][0], as_given[n]) for n in names},
                                             lives.summaries)
    # Each round's live mean JCT: how far one round's machine moves the median.
    result["rounds"] = [{n: lives.summaries[n][r].get("jct_mean") for n in names}
                        for r in range(repeats)]
    return result


def _retimable(spec: Any, overrides: dict[str, str]) -> tuple[str | None, Any]:
    """The one profile every device uses and its JSON, when it can be re-timed; else
    (None, None)."""
    from scheduler.profiles import load_profile_data
    from workers.calibrate_live import can_retime

    names = {d.profile for d in spec.devices}
    if len(names) != 1 or None in names:
        return None, None
    name = str(next(iter(names)))
    data, _ = load_profile_data(overrides.get(name, name))
    return (name, data) if can_retime(data) else (None, None)


def print_fidelity(result: dict[str, Any]) -> None:
    spread = any("live_spread" in e for e in result["policies"].values())
    caption = (f"error = |sim − live| / live; targets: mean ≤ {TARGETS['jct_mean']:.0%}, "
               f"p99 ≤ {TARGETS['jct_p99']:.0%}")
    if spread:
        caption += "; round spread = the farthest live round from the live median"
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, caption=caption)
    # Only a trace with prefix blocks has a cache hit rate: no empty column for the rest.
    hits = any("cache_hit_rate" in e["error"] for e in result["policies"].values())
    columns = ["policy", "JCT mean live/sim", "err", *(["round spread"] if spread else []),
               "p99 live/sim", "err", *(["round spread"] if spread else []), "makespan err",
               "throughput err", *(["cache hits live/sim", "err"] if hits else [])]
    for col in columns:
        table.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for name, entry in result["policies"].items():
        live, sim, err = entry["live"], entry["sim"], entry["error"]
        noise = entry.get("live_spread") or {}
        table.add_row(name, f"{_s(live['jct_mean'])} / {_s(sim['jct_mean'])}",
                      _err(err["jct_mean"], TARGETS["jct_mean"]),
                      *([_err(noise.get("jct_mean"))] if spread else []),
                      f"{_s(live['jct_p99'])} / {_s(sim['jct_p99'])}",
                      _err(err["jct_p99"], TARGETS["jct_p99"]),
                      *([_err(noise.get("jct_p99"))] if spread else []),
                      _err(err["makespan"]), _err(err["throughput"]),
                      *([f"{_pct(live.get('cache_hit_rate'))} / "
                         f"{_pct(sim.get('cache_hit_rate'))}",
                         _err(err.get("cache_hit_rate"))] if hits else []))
    console.print(table)
    rank = result["ranking"]
    verdict = "[green]same[/]" if result["same_ranking"] else "[red]different[/]"
    console.print(f"ranking by mean JCT: live {' < '.join(rank['live'])}; "
                  f"sim {' < '.join(rank['sim'])} ({verdict})")
    moved = [(n, e["sensitivity"].get("jct_mean")) for n, e in result["policies"].items()
             if "sensitivity" in e]
    if moved:
        slower = result.get("sensitivity_slow", SENSITIVITY_SLOW) - 1
        console.print(f"devices {slower:.0%} slower would move the simulated mean JCT by: "
                      + ", ".join(f"{n} {_err(r)}" for n, r in moved))
    if result.get("as_given"):
        given = result["as_given"]
        errors = ", ".join(f"{n} {_err(e['error']['jct_mean'], TARGETS['jct_mean'])}"
                           for n, e in given["policies"].items())
        same = "same" if given["same_ranking"] else "different"
        console.print(f"profile {result['retimed']!r} re-timed before the runs; as given, "
                      f"mean JCT errors: {errors}; ranking {same}")


def _s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{share:.1%}"


def _err(value: float | None, target: float | None = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.1%}"
    if target is None:
        return text
    return f"[green]{text}[/]" if value <= target else f"[red]{text}[/]"
