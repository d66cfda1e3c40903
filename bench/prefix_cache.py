"""Prefix caching on the Mooncake trace: hit rate and latency per policy, by the CLI.

    python bench/prefix_cache.py [--loads 0.7,0.9] [--gpus 8,32] [--limit N]
        [--policies static,greedy,prefix-affinity,adaptive] [--out runs/prefix_cache]

Runs ``attnsched sweep`` (the command a user runs: each simulation a Ray task
on an embedded local Ray) on Mooncake FAST'25 with ``llama3-70b``, for each
cluster size (nodes of 8 H100s from cluster.yaml, ``--nodes gpu_h100=N``; its
CPU node only with ``--cpu``, where a policy may run a 70B prefill on a CPU),
then reads each run's summary.json and jobs.parquet. Per policy and load it
prints the cache hit rate (cached over prompt tokens), mean and p99 JCT, and
the prefills' mean run time and mean time to first token (a prefill's JCT);
beside them, in the same run, the ratios the targets are stated in: hit rate
over ``static``'s, mean JCT against the better of ``static`` and ``greedy``,
p99 over ``prefix-affinity``'s. A ceiling comes with each cluster size: the
hit rate of one LRU as large as every device's memory together, fed the
trace in order: what perfect affinity under the same eviction rule reaches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pyarrow.compute as pc
import pyarrow.parquet as pq

from scheduler.cluster import load_cluster
from scheduler.kvcache import block_bytes
from scheduler.presets import get_preset
from scheduler.traces.importers import read_mooncake

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "traces" / "mooncake_fast25_conversation.jsonl"
MODEL = "llama3-70b"
COLUMNS = ("hit", "hit/static", "jct_mean", "vs best of static,greedy", "jct_p99",
           "p99/prefix-affinity", "prefill_s", "ttft_mean")


def sweep(out: Path, nodes: int, loads: str, policies: str, limit: int | None,
          cpu: bool) -> None:
    cmd = [sys.executable, "-m", "scheduler.cli", "sweep", str(TRACE), "--model", MODEL,
           "--policies", policies, "--loads", loads, "--nodes", f"gpu_h100={nodes}",
           "--out", str(out)]
    cmd += [] if cpu else ["--nodes", "cpu=0"]
    cmd += ["--limit", str(limit)] if limit else []
    subprocess.run(cmd, check=True, cwd=ROOT)


def figures(run: Path) -> dict[str, float]:
    summary = json.loads((run / "summary.json").read_text())
    jobs = pq.read_table(run / "jobs.parquet", columns=["kind", "start", "end", "jct"])
    prefills = jobs.filter(pc.equal(jobs["kind"], "prefill"))
    runtime = pc.subtract(prefills["end"], prefills["start"])
    return {"hit": summary.get("cache_hit_rate") or 0.0, "jct_mean": summary["jct_mean"],
            "jct_p99": summary["jct_p99"], "prefill_s": pc.mean(runtime).as_py(),
            "ttft_mean": pc.mean(prefills["jct"]).as_py()}


def lru_ceiling(gpus: int, limit: int | None) -> float:
    """Hit rate of one LRU holding every device's memory in blocks, in arrival order."""
    preset = get_preset(MODEL)
    spec = load_cluster(ROOT / "cluster.yaml", {"gpu_h100": gpus // 8})
    memory = sum(d.memory_bytes for d in spec.devices if d.kind != "cpu")
    lru: OrderedDict[int, None] = OrderedDict()
    capacity, hit, total = None, 0, 0
    for n, (_, job) in enumerate(read_mooncake(TRACE, preset)):
        if limit and n >= limit:
            break
        blocks = getattr(job, "prefix_blocks", ())
        if not blocks:
            continue
        if capacity is None:
            capacity = memory // block_bytes(job)
        resident = next((i for i, b in enumerate(blocks) if b not in lru), len(blocks))
        reusable = max(job.q_len - 1, 0) // job.block_tokens
        hit += min(resident, reusable) * job.block_tokens
        total += job.q_len
        for block in reversed(blocks[:job.q_len // job.block_tokens]):
            lru[block] = None
            lru.move_to_end(block, last=False)  # earlier blocks more recent, as BlockLRU
        while len(lru) > capacity:
            lru.popitem()
    return hit / total if total else 0.0


def ratios(rows: dict[str, dict[str, float]]) -> None:
    base = rows.get("static", {}).get("hit")
    better = min((rows[p]["jct_mean"] for p in ("static", "greedy") if p in rows),
                 default=None)
    affinity = rows.get("prefix-affinity", {}).get("jct_p99")
    for row in rows.values():
        row["hit/static"] = row["hit"] / base if base else float("nan")
        row["vs best of static,greedy"] = (1 - row["jct_mean"] / better) if better else \
            float("nan")
        row["p99/prefix-affinity"] = row["jct_p99"] / affinity if affinity else float("nan")


def table(title: str, rows: dict[str, dict[str, float]]) -> list[str]:
    lines = [f"### {title}", "", "| policy | " + " | ".join(COLUMNS) + " |",
             "| --- |" + " ---: |" * len(COLUMNS)]
    for policy, row in rows.items():
        cells = [f"{row['hit']:.1%}", f"{row['hit/static']:.2f}x", f"{row['jct_mean']:.3f}",
                 f"{row['vs best of static,greedy']:+.0%}", f"{row['jct_p99']:.2f}",
                 f"{row['p99/prefix-affinity']:.2f}x", f"{row['prefill_s'] * 1e3:.1f} ms",
                 f"{row['ttft_mean']:.3f}"]
        lines.append(f"| {policy} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", default="0.7,0.9")
    parser.add_argument("--gpus", default="8,32", help="cluster sizes, multiples of 8")
    parser.add_argument("--policies", default="static,greedy,prefix-affinity,adaptive")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--cpu", action="store_true",
                        help="keep cluster.yaml's CPU node (default: GPU nodes only, as "
                             "bench/policy_matrix.py)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "prefix_cache")
    args = parser.parse_args(argv)
    started = datetime.now(UTC)
    report: list[str] = [f"Machine: {platform.machine()} {os.cpu_count()} CPUs, Python "
                         f"{platform.python_version()}, {started:%Y-%m-%d %H:%M} UTC", ""]
    results: dict[str, Any] = {}
    for gpus in (int(g) for g in args.gpus.split(",")):
        out = args.out / f"gpus-{gpus}"
        sweep(out, gpus // 8, args.loads, args.policies, args.limit, args.cpu)
        ceiling = lru_ceiling(gpus, args.limit)
        for load in args.loads.split(","):
            rows = {p: figures(out / p / f"load-{load}" / "seed-0")
                    for p in args.policies.split(",")}
            ratios(rows)
            results[f"{gpus}/{load}"] = {"ceiling": ceiling, "rows": rows}
            report += table(f"{gpus} H100s, load {load} (one-LRU ceiling {ceiling:.1%})",
                            rows)
    text = "\n".join(report)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prefix_cache.md").write_text(text + "\n")
    (args.out / "prefix_cache.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
