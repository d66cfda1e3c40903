"""Chaos: a live run on a 3-node Ray cluster while workers, a node and the controller die.

    python bench/chaos.py [--jobs 1200] [--rate 20] [--speed 2] [--kill-every 4]

A ``ray.cluster_utils.Cluster`` (all on 127.0.0.1: a head with one CPU and two
nodes with one emulated GPU each) runs ``attnsched run --address`` twice on
the same generated tiny-preset trace: once undisturbed, for the baseline, and
once while a chaos loop

* SIGKILLs a random worker actor's process every ``--kill-every`` seconds,
* removes one GPU node once a third of the jobs are done, and
* SIGKILLs the controller (the ``attnsched run`` process) once half are
  done, then starts it again with ``--resume``.

It prints the jobs in the trace, completed, failed, lost (in the trace but
in no output), duplicated (reported more than once, or a late result the
journal refused), retried (run more than once), and the slowdown of the
chaos run's makespan against the baseline's (trace seconds: the time the
controller was down is wall time, not trace time, and is printed apart).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import psutil
import pyarrow.parquet as pq
from ray.cluster_utils import Cluster

from scheduler.journal import FILE, read_results
from scheduler.presets import get_preset
from scheduler.traces import write_trace
from scheduler.traces.synth import SynthSpec, generate

REPO = Path(__file__).resolve().parents[1]
FAST_DETECTION = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                  "health_check_initial_delay_ms": 0}


def start(trace: Path, address: str, out: Path, args: argparse.Namespace,
          resume: bool = False) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "scheduler.cli", "run", str(trace), "--address", address,
               "--policy", args.policy, "--speed", str(args.speed),
               "--telemetry-interval", "0.5", "--out", str(out)]
    # A rerun into the same --out starts afresh, even after a bench that was interrupted.
    command += ["--resume", str(out)] if resume else ["--overwrite"]
    log = (out.parent / f"{out.name}{'-resume' if resume else ''}.log").open("wb")
    return subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def worker_processes(cluster: Cluster) -> list[psutil.Process]:
    """The attnsched worker actors' processes on this cluster's raylets."""
    found = []
    for node in [cluster.head_node, *cluster.worker_nodes]:
        for info in node.all_processes.get("raylet", []):
            try:
                children = psutil.Process(info.process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for p in children:
                try:
                    if "AttentionWorker" in " ".join(p.cmdline()):
                        found.append(p)
                except psutil.Error:
                    pass
    return found


def done_so_far(out: Path) -> int:
    try:
        return len(read_results(out / FILE)) if (out / FILE).exists() else 0
    except Exception:  # the journal is being created; ask again next round
        return 0


def chaos_run(cluster: Cluster, gpu_nodes: list[Any], trace: Path, out: Path, total: int,
              args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    driver = start(trace, cluster.address, out, args)
    kills, removed, killed_controller, down_wall = 0, False, False, 0.0
    next_kill = time.monotonic() + args.kill_every
    while driver.poll() is None:
        time.sleep(0.25)
        done = done_so_far(out)
        if time.monotonic() >= next_kill:
            victims = worker_processes(cluster)
            if victims:
                rng.choice(victims).send_signal(signal.SIGKILL)
                kills += 1
            next_kill = time.monotonic() + args.kill_every
        if not removed and done >= total // 3:
            cluster.remove_node(gpu_nodes[-1], allow_graceful=False)
            removed = True
        if removed and not killed_controller and done >= total // 2:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
            stopped = time.monotonic()
            killed_controller = True
            time.sleep(2.0)  # let Ray notice the driver is gone and reap its actors
            driver = start(trace, cluster.address, out, args, resume=True)
            down_wall = time.monotonic() - stopped
    return {"exit_code": driver.returncode, "worker_kills": kills, "node_removed": removed,
            "controller_killed": killed_controller, "controller_down_wall_s": down_wall}


def tally(trace_ids: list[str], out: Path) -> dict[str, Any]:
    rows = pq.read_table(out / "jobs.parquet").to_pylist()
    counts = collections.Counter(r["id"] for r in rows)
    info = json.loads((out / "run.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    return {"jobs": len(trace_ids),
            "completed": sum(r["status"] == "done" for r in rows),
            "failed": sum(r["status"] == "failed" for r in rows),
            "lost": len(set(trace_ids) - set(counts)),
            "duplicated": sum(n - 1 for n in counts.values())
            + info.get("late_results_ignored", 0),
            "retried": sum(r["attempts"] > 1 for r in rows),
            "makespan": summary["makespan"], "jct_mean": summary["jct_mean"],
            "worker_restarts": info.get("worker_restarts"), "nodes_lost": info.get("nodes_lost")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1200)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--speed", type=float, default=2.0)
    parser.add_argument("--kill-every", type=float, default=4.0)
    parser.add_argument("--policy", default="adaptive")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="attnsched-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "trace.jsonl"
    jobs = list(generate(SynthSpec(jobs=args.jobs, seed=args.seed, rate=args.rate,
                                   mix={"prefill": 0.6, "decode": 0.4}),
                         get_preset("tiny", token_scale=0.5)))
    write_trace(jobs, trace)
    ids = [j.id for j in jobs]
    results = {}
    for name in ("baseline", "chaos"):
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "_system_config": FAST_DETECTION})
        try:
            gpu_nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
            cluster.wait_for_nodes()
            started = time.monotonic()
            if name == "baseline":
                driver = start(trace, cluster.address, out / name, args)
                events = {"exit_code": driver.wait()}
            else:
                events = chaos_run(cluster, gpu_nodes, trace, out / name, len(jobs), args)
            results[name] = {**events, "wall_s": time.monotonic() - started,
                             **tally(ids, out / name)}
        finally:
            cluster.shutdown()
    base, chaos = results["baseline"], results["chaos"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(f"trace: {len(ids)} tiny jobs at {args.rate}/s, --speed {args.speed}, "
          f"policy {args.policy}; outputs in {out}")
    print(f"chaos: {chaos['worker_kills']} worker processes SIGKILLed, node removed: "
          f"{chaos['node_removed']}, controller SIGKILLed and resumed: "
          f"{chaos['controller_killed']} (down {chaos['controller_down_wall_s']:.1f} s wall)")
    print(f"jobs in trace {chaos['jobs']}, completed {chaos['completed']}, failed "
          f"{chaos['failed']}, lost {chaos['lost']}, duplicated {chaos['duplicated']}, "
          f"retried {chaos['retried']} (restarts and nodes lost seen by the resumed "
          f"controller: {chaos['worker_restarts']}, {chaos['nodes_lost']})")
    print(f"baseline: completed {base['completed']}, makespan {base['makespan']:.1f} s, "
          f"mean JCT {base['jct_mean']:.3f} s, wall {base['wall_s']:.0f} s")
    print(f"chaos:    makespan {chaos['makespan']:.1f} s, mean JCT {chaos['jct_mean']:.3f} s, "
          f"wall {chaos['wall_s']:.0f} s")
    print(f"slowdown (makespan, trace s): {chaos['makespan'] / base['makespan']:.2f}x; "
          f"mean JCT {chaos['jct_mean'] / base['jct_mean']:.2f}x")
    (out / "chaos.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0 if chaos["lost"] == 0 and chaos["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
