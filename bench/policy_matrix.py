"""Every registered policy x real traces x offered loads, in the simulator.

    python bench/policy_matrix.py [--traces azure,mooncake,alibaba] [--loads 0.5,0.7,0.9]
        [--policies all] [--limit 4000 | --limit azure=4000,alibaba=1500] [--address ADDR]
        [--out runs/policy_matrix]

Traces (from ../shared/traces): the Azure LLM 2023 conversation trace with
``llama3-8b`` and Mooncake FAST'25 with ``llama3-70b``, both on one node of 8
simulated H100s (cluster.yaml with the CPU node type at 0, as
bench/sim_policies.py), and the Alibaba GPU v2023 pods against the Alibaba
node list. Arrivals are rescaled to each offered load. Runs are Ray tasks, as
``attnsched sweep`` runs them (each trace read once); the driver prints the table. Writes
``matrix.md``, ``matrix.json`` and ``plots/<trace>.png`` under ``--out``;
the best value of each column within a trace and load is marked (bold in
Markdown, ``*`` on the terminal). Then checks the issue's targets for
``adaptive`` at the highest load: lowest mean JCT of all, >= 30% below and
p99 >= 2x below the better of static and greedy, Jain >= 0.9.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from policies.base import available
from scheduler.cluster import load_cluster
from scheduler.jobs import ClusterJob, Job
from scheduler.pricing import ClusterCost
from scheduler.report import fmt_value
from scheduler.runs import RunSpec, prepare, trace_jobs
from scheduler.sweeps import run_grid
from scheduler.traces import open_trace, write_trace

ROOT = Path(__file__).resolve().parents[1]
TRACES_DIR = ROOT.parent / "shared" / "traces"


@dataclass(frozen=True)
class TraceCase:
    """A trace with the model and cluster it is replayed against."""

    file: str
    model: str | None
    cluster: Path
    nodes: Mapping[str, int]
    about: str
    telemetry_s: float = 1.0  # the simulator samples every device this often while work runs


TRACES = {
    "azure": TraceCase("azure_llm_2023_conv.csv", "llama3-8b", ROOT / "cluster.yaml",
                       {"cpu": 0}, "Azure LLM 2023 conv, llama3-8b, 1 node x 8 H100"),
    "mooncake": TraceCase("mooncake_fast25_conversation.jsonl", "llama3-70b",
                          ROOT / "cluster.yaml", {"cpu": 0},
                          "Mooncake FAST'25 conversation, llama3-70b, 1 node x 8 H100"),
    "alibaba": TraceCase("alibaba_gpu_v2023_pods.csv", None,
                         TRACES_DIR / "alibaba_gpu_v2023_gpu_nodes.csv", {},
                         "Alibaba GPU v2023 pods on the Alibaba v2023 node list",
                         telemetry_s=600.0),
}
ALIBABA_PODS = 8152
# How much smaller than the pods' share of the node list the sampled cluster is.
# Offered load assumes jobs shorter than the span of arrivals; most pods outlive a
# rescaled span, so at the pods' own share (every 4th node for 2,000 pods) their
# peak demand stays below the cluster and every policy that respects hosts' CPUs
# and memory runs every pod at once. A quarter of that (every 16th node) queues.
CONTENTION = 4
# (summary key, header, which is better)
COLUMNS: tuple[tuple[str, str, Callable[[Sequence[float]], float]], ...] = (
    ("jct_mean", "mean JCT", min), ("jct_p99", "p99 JCT", min), ("makespan", "makespan", min),
    ("device_util_mean", "util", max), ("jain_fairness", "Jain", max),
    ("slo_attainment", "SLO", max))


def capped_pods(limit: int | None, cap_s: float, out: Path) -> tuple[Path, int]:
    """The first ``limit`` Alibaba pods with lifetimes capped at ``cap_s``, as a canonical trace.

    A few pods live for months (34 are still running when the trace ends); while
    one runs, the simulator samples all 6,212 GPUs every telemetry interval, so
    one such pod makes a run take minutes. They weigh the same in every policy's
    figures; capping them keeps the matrix to minutes. Returns the file and how
    many pods were capped.
    """
    jobs = open_trace(TRACES_DIR / TRACES["alibaba"].file).jobs()
    picked = list(itertools.islice(jobs, limit) if limit else jobs)
    capped = [replace(j, duration=min(j.duration, cap_s)) if isinstance(j, ClusterJob) else j
              for j in picked]
    path = out / f"alibaba_pods_{limit or 'all'}_cap{cap_s:.0f}s.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    write_trace(capped, path)
    return path, sum(isinstance(j, ClusterJob) and j.duration > cap_s for j in picked)


def sampled_nodes(every: int, out: Path) -> Path:
    """Every ``every``-th node of the Alibaba node list (all of them for 1), as a node list.

    Offered load is rescaled to the cluster, so contention needs pods enough to
    fill it: a few thousand pods on all 6,212 GPUs never queue (see
    ``CONTENTION``). Sampling keeps the list's mix of GPU types and node sizes.
    """
    source = TRACES["alibaba"].cluster
    if every <= 1:
        return source
    lines = source.read_text().splitlines()
    path = out / f"alibaba_nodes_every{every}.csv"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([lines[0], *lines[1::every]]) + "\n")
    return path


def floor(spec: RunSpec) -> dict[str, float]:
    """Mean and p99 of the jobs' own run times alone on the fastest device: no policy that
    runs each job whole on one device gets its JCT below these."""
    cluster, profiles, _ = prepare(spec)
    cost = ClusterCost(cluster, profiles)
    times = sorted(device_seconds_alone(cost, job) for job in trace_jobs(spec))
    times = [t for t in times if math.isfinite(t)]
    return {"jct_mean": sum(times) / len(times), "jct_p99": times[int(0.99 * (len(times) - 1))]}


def device_seconds_alone(cost: ClusterCost, job: Job) -> float:
    seconds = cost.best_seconds(job)
    cost.forget(job.id)
    return seconds


def parse_limits(text: str | None, traces: Sequence[str]) -> dict[str, int | None]:
    """``N`` for every trace, or ``trace=N,...`` (traces not named run whole)."""
    limits: dict[str, int | None] = dict.fromkeys(traces)
    if not text:
        return limits
    if "=" not in text:
        return dict.fromkeys(traces, int(text))
    for item in text.split(","):
        name, _, n = item.partition("=")
        if name.strip() not in TRACES:
            raise SystemExit(f"--limit: unknown trace {name!r}; expected one of "
                             f"{', '.join(TRACES)}")
        limits[name.strip()] = int(n)
    return limits


def best_flags(rows: Sequence[Mapping[str, Any]]) -> list[set[str]]:
    """For each row, the columns where it holds the best value of its group (ties: all)."""
    flags: list[set[str]] = [set() for _ in rows]
    for key, _, better in COLUMNS:
        values = [r.get(key) for r in rows]
        present = [float(v) for v in values if v is not None]
        if len(present) < 2 or min(present) == max(present):
            continue
        best = better(present)
        for i, v in enumerate(values):
            if v is not None and float(v) == best:
                flags[i].add(key)
    return flags


def table(results: Sequence[dict[str, Any]], bold: bool) -> list[str]:
    """Markdown rows, one group per trace and load, best cells marked."""
    head = ["trace", "load", "policy", *(h for _, h, _ in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["trace"], r["load"]), []).append(r)
    for (trace, load), rows in groups.items():
        for row, marks in zip(rows, best_flags(rows), strict=True):
            cells = []
            for key, _, _ in COLUMNS:
                text = fmt_value(key, row.get(key)) if row.get(key) is not None else "—"
                if key in marks:
                    text = f"**{text}**" if bold else f"{text} *"
                cells.append(text)
            lines.append(f"| {trace} | {load} | {row['policy']} | " + " | ".join(cells) + " |")
    return lines


def targets(results: Sequence[dict[str, Any]], load: float) -> list[str]:
    """The issue's targets for adaptive at ``load``, one line per trace."""
    out = []
    for trace in dict.fromkeys(r["trace"] for r in results):
        rows = {r["policy"]: r for r in results if r["trace"] == trace and r["load"] == load}
        a = rows.get("adaptive")
        if a is None or "static" not in rows or "greedy" not in rows:
            continue
        base_mean = min(rows["static"]["jct_mean"], rows["greedy"]["jct_mean"])
        base_p99 = min(rows["static"]["jct_p99"], rows["greedy"]["jct_p99"])
        others = {p: r["jct_mean"] for p, r in rows.items() if p != "adaptive"}
        rival = min(others, key=others.__getitem__)
        lowest = a["jct_mean"] <= others[rival]
        cut, ratio, jain = 1 - a["jct_mean"] / base_mean, base_p99 / a["jct_p99"], \
            a["jain_fairness"]
        ok = lowest and cut >= 0.3 and ratio >= 2 and (jain or 0) >= 0.9
        out.append(f"- {trace} @ {load}: adaptive mean JCT "
                   f"{'lowest' if lowest else f'not lowest ({rival} {others[rival]:.4g}s)'}; "
                   f"{cut:.0%} below the better of static/greedy (target >= 30%); p99 "
                   f"{ratio:.2f}x lower (target >= 2x); Jain {jain:.3f} (target >= 0.9): "
                   f"{'met' if ok else 'MISSED'}")
    return out


def plot(results: Sequence[dict[str, Any]], trace: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results if r["trace"] == trace]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "jct_mean", "mean JCT"), (axes[1], "jct_p99", "p99 JCT")):
        for policy in policies:
            pts = sorted((r["load"], r[key]) for r in rows if r["policy"] == policy and r[key])
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o",
                        linewidth=2.5 if policy == "adaptive" else 1.2, label=policy)
        ax.set_yscale("log")
        ax.set_xlabel("offered load")
        ax.set_ylabel(f"{title} (s)")
        ax.set_title(f"{TRACES[trace].about}\n{title}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[1].legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", default="azure,mooncake,alibaba")
    parser.add_argument("--loads", default="0.5,0.7,0.9")
    parser.add_argument("--policies", default="all", help="comma list, or all registered")
    parser.add_argument("--limit", default=None,
                        help="jobs per trace: N for all, or trace=N,... (default: whole traces)")
    parser.add_argument("--alibaba-cap-hours", type=float, default=24.0,
                        help="cap Alibaba pod lifetimes (0: no cap; see capped_pods)")
    parser.add_argument("--alibaba-every", type=int, default=0,
                        help="sample every Nth Alibaba node (0: 4x pods-per-node ratio; see "
                             "sampled_nodes)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to run on (default: an embedded Ray, one task per core)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "policy_matrix")
    return parser.parse_args()


def trace_inputs(args: argparse.Namespace, traces: Sequence[str],
                 limits: Mapping[str, int | None]
                 ) -> tuple[dict[str, Path], dict[str, Path], dict[str, str]]:
    """Each trace's file, cluster file and header note: the Alibaba pods capped and its
    node list sampled as the options ask, the other traces as shipped."""
    files = {t: TRACES_DIR / TRACES[t].file for t in traces}
    clusters = {t: TRACES[t].cluster for t in traces}
    notes = dict.fromkeys(traces, "")
    if "alibaba" in traces and args.alibaba_cap_hours > 0:
        files["alibaba"], n = capped_pods(limits["alibaba"], args.alibaba_cap_hours * 3600,
                                          args.out)
        limits_note = f"lifetimes capped at {args.alibaba_cap_hours:g} h ({n} pods)"
        notes["alibaba"] = f"; {limits_note}; telemetry every {TRACES['alibaba'].telemetry_s:g} s"
    if "alibaba" in traces and limits["alibaba"]:
        every = args.alibaba_every or max(1, CONTENTION * round(ALIBABA_PODS / limits["alibaba"]))
        clusters["alibaba"] = sampled_nodes(every, args.out)
        notes["alibaba"] += (f"; every {every}th node of the list "
                             f"({len(load_cluster(clusters['alibaba']).devices):,} GPUs)")
    return files, clusters, notes


Key = tuple[str, float, str]  # (trace, load, policy)
Outcome = tuple[dict[str, Any], float]  # (summary, seconds) of one run


def run_specs(traces: Sequence[str], loads: Sequence[float], policies: Sequence[str],
              files: Mapping[str, Path], clusters: Mapping[str, Path],
              limits: Mapping[str, int | None]) -> tuple[list[RunSpec], list[Key]]:
    """One simulation per trace, load and policy (in that order), with its key."""
    specs, keys = [], []
    for trace in traces:
        case = TRACES[trace]
        for load in loads:
            for policy in policies:
                specs.append(RunSpec(trace=files[trace], policy=policy, model=case.model,
                                     load=load, limit=limits[trace], cluster=clusters[trace],
                                     nodes=dict(case.nodes), report=False,
                                     telemetry_interval=case.telemetry_s))
                keys.append((trace, load, policy))
    return specs, keys


def run_grid_of(specs: Sequence[RunSpec], keys: Sequence[Key],
                address: str | None) -> tuple[dict[int, Outcome], float]:
    """Every run's outcome by its index in ``specs``, and the grid's wall seconds: the
    runs are Ray tasks (``attnsched sweep``'s runner), each trace read once."""
    t0 = time.perf_counter()
    results = run_grid(dict(enumerate(specs)), address)
    done = {i: (r.summary, float(r.run_info["wall_seconds"])) for i, r in results.items()}
    return done, time.perf_counter() - t0


def result_rows(keys: Sequence[Key], done: Mapping[int, Outcome],
                limits: Mapping[str, int | None]) -> list[dict[str, Any]]:
    """One row per run, in ``keys`` order: its key, limit, wall time and compared figures."""
    results = []
    for i, (trace, load, policy) in enumerate(keys):
        summary, seconds = done[i]
        results.append({"trace": trace, "load": load, "policy": policy,
                        "limit": limits[trace], "wall_s": round(seconds, 2),
                        **{k: summary.get(k) for k, _, _ in COLUMNS},
                        "jobs_total": summary.get("jobs_total"),
                        "jobs_failed": summary.get("jobs_failed")})
    return results


def header_lines(args: argparse.Namespace, traces: Sequence[str],
                 limits: Mapping[str, int | None], notes: Mapping[str, str],
                 specs: Sequence[RunSpec], keys: Sequence[Key], wall: float
                 ) -> tuple[list[str], dict[str, dict[str, float]], str, str]:
    """The lines above the table (date, machine, traces, floors), then the floors, the
    machine and the date on their own for matrix.json."""
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}; runs as Ray tasks"
               f"{' on ' + args.address if args.address else ', one per core'}")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [f"Policy matrix, {stamp}; {machine}; {wall:.0f} s wall.", ""]
    header += [f"- {t}: {TRACES[t].about}; "
               f"{'first ' + format(limits[t], ',') + ' jobs' if limits[t] else 'whole trace'}"
               f"{notes[t]}" for t in traces]
    floors = {t: floor(next(sp for sp, k in zip(specs, keys, strict=True) if k[0] == t))
              for t in traces}
    header += ["", "Floors (each job alone on the fastest device, no queueing; no policy that "
               "runs a job whole on one device does better):", ""]
    header += [f"- {t}: mean {fmt_value('jct_mean', f['jct_mean'])}, "
               f"p99 {fmt_value('jct_p99', f['jct_p99'])}" for t, f in floors.items()]
    return header, floors, machine, stamp


def main() -> None:
    args = parse_args()
    traces = [t.strip() for t in args.traces.split(",") if t.strip()]
    unknown = [t for t in traces if t not in TRACES]
    if unknown:
        raise SystemExit(f"--traces: unknown {unknown}; expected some of {', '.join(TRACES)}")
    loads = [float(x) for x in args.loads.split(",")]
    policies = list(available()) if args.policies == "all" else args.policies.split(",")
    limits = parse_limits(args.limit, traces)
    files, clusters, notes = trace_inputs(args, traces, limits)
    specs, keys = run_specs(traces, loads, policies, files, clusters, limits)
    done, wall = run_grid_of(specs, keys, args.address)
    results = result_rows(keys, done, limits)
    header, floors, machine, stamp = header_lines(args, traces, limits, notes, specs, keys, wall)
    check = targets(results, max(loads))
    print("\n".join([*header, "", *table(results, bold=False), "", *check]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "matrix.md").write_text("\n".join(
        ["# Policy matrix", "", *header, "", *table(results, bold=True), "",
         f"Targets for adaptive at load {max(loads)}:", "", *check, ""]))
    (args.out / "matrix.json").write_text(json.dumps(
        {"date": stamp, "machine": machine, "wall_s": wall, "limits": limits, "floors": floors,
         "results": results}, indent=1))
    for trace in traces:
        plot(results, trace, args.out / "plots" / f"{trace}.png")
    print(f"wrote {args.out}/matrix.md, matrix.json and plots/")


if __name__ == "__main__":
    main()
