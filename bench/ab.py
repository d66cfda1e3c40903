"""Two revisions side by side on the user's path: ``attnsched simulate`` on the same traces.

    python bench/ab.py [--base 3b3626c] [--jobs 5000] [--repeat 3] [--instructions]

Runs each case with the base revision (a temporary git worktree) and with
this checkout, alternating, so both see the same drift of the machine, and
prints each side's simulation seconds (``run.json``'s ``wall_seconds``) and
whole-command seconds with their spread, the ratio this/base, and whether
the two wrote byte-identical ``summary.json``. ``--instructions`` also counts
the instructions each command executes under valgrind (callgrind): a figure
a noisy VM cannot move, for differences smaller than its drift.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

HERE = Path(__file__).resolve().parent.parent
# (label, trace generate options, simulate options)
CASES: tuple[tuple[str, list[str], list[str]], ...] = (
    ("default trace, deep queue", ["--rate", "1e7"], []),
    ("llama3-8b, deep queue", ["--rate", "1e7", "--model", "llama3-8b"], []),
    ("llama3-8b, streamed at load 0.7", ["--model", "llama3-8b"], ["--load", "0.7"]),
)


CLI = (sys.executable, "-m", "scheduler.cli")  # the code on PYTHONPATH answers


def env_for(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "0"}


def simulate(root: Path, trace: Path, extra: list[str], out: Path,
             prefix: tuple[str, ...] = ()) -> tuple[float, float, str]:
    """(simulation s, command s, summary bytes) of one ``simulate`` run with ``root``'s code."""
    shutil.rmtree(out, ignore_errors=True)
    # Both sides read one cluster file: the summary names its path.
    cmd = [*prefix, *CLI, "simulate", str(trace), "--policy", "adaptive",
           "--cluster", str(HERE / "cluster.yaml"), "--out", str(out), *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, env=env_for(root), capture_output=True, text=True,
                          check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0 and not prefix:
        raise SystemExit(f"{root}: simulate failed: {done.stderr.strip()[-500:]}")
    info = json.loads((out / "run.json").read_text())
    return info["wall_seconds"], wall, (out / "summary.json").read_text()


def instructions(root: Path, trace: Path, extra: list[str], out: Path) -> int:
    """Instructions the whole command executes (valgrind's callgrind count)."""
    log = out.with_suffix(".callgrind.log")
    prefix = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
              f"--log-file={log}")
    simulate(root, trace, extra, out, prefix)
    for line in log.read_text().splitlines():
        if "Collected" in line or "refs:" in line:
            return int(line.split()[-1].replace(",", ""))
    raise SystemExit(f"valgrind wrote no instruction count to {log}")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def run_case(label: str, trace: Path, extra: list[str], base: Path, work: Path,
             args: argparse.Namespace) -> None:
    sides: dict[str, list[tuple[float, float, str]]] = {"base": [], "this": []}
    for _ in range(args.repeat):
        for side, root in (("base", base), ("this", HERE)):
            sides[side].append(simulate(root, trace, extra, work / f"out-{side}"))
    sim = {s: [r[0] for r in runs] for s, runs in sides.items()}
    whole = {s: [r[1] for r in runs] for s, runs in sides.items()}
    ratios = [t / b for t, b in zip(sim["this"], sim["base"], strict=True)]
    same = sides["base"][0][2] == sides["this"][0][2]
    print(f"{label} ({args.jobs:,} jobs):")
    print(f"  simulation s: base {spread(sim['base'])}, this {spread(sim['this'])}; "
          f"this/base {spread(ratios)} over {args.repeat} pairs")
    print(f"  whole command s: base {spread(whole['base'])}, this {spread(whole['this'])}")
    print(f"  summary.json identical: {'yes' if same else 'NO'}")
    if args.instructions:
        counts = {s: instructions(r, trace, extra, work / f"cg-{s}")
                  for s, r in (("base", base), ("this", HERE))}
        print(f"  instructions: base {counts['base']:,}, this {counts['this']:,}; "
              f"this/base {counts['this'] / counts['base']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="3b3626c", help="git revision to compare with")
    parser.add_argument("--jobs", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions under valgrind (slow: ~50x)")
    parser.add_argument("--cases", default="0,1,2", help="indices into the cases to run")
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind on PATH")
    with tempfile.TemporaryDirectory(prefix="attnsched-ab-") as tmp:
        work, base = Path(tmp), Path(tmp) / "base"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", str(base),
                        args.base], check=True, capture_output=True)
        try:
            print(f"base {args.base} against this checkout, {os.cpu_count()} cores")
            for i in (int(c) for c in args.cases.split(",")):
                label, generate, extra = CASES[i]
                trace = work / f"case{i}.parquet"
                subprocess.run([*CLI, "trace", "generate", "-o", str(trace), "--jobs",
                                str(args.jobs), "--seed", "8", *generate], check=True,
                               env=env_for(HERE), capture_output=True)
                run_case(label, trace, extra, base, work, args)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force",
                            str(base)], check=False, capture_output=True)


if __name__ == "__main__":
    main()
