"""The options several commands share, declared once so each says the same thing."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.errors import InputError
from scheduler.runs import MAX_LIMIT, MIN_LOAD, MIN_TELEMETRY_S


def _trace_exists(path: Path) -> Path:
    """A missing trace is the commonest first mistake: say where traces are, or how to make one."""
    if path is not None and not path.exists():
        raise InputError("no such file; give a trace (.csv, .jsonl or .parquet), e.g. "
                         "../shared/traces/azure_llm_2023_conv.csv, or make one: attnsched "
                         "trace generate -o trace.jsonl --jobs 1000 --model tiny", path=path)
    return path


def policy_names(policies: str) -> list[str]:
    """``--policies``: distinct names, comma-separated."""
    names = [p.strip() for p in policies.split(",") if p.strip()]
    if not names or len(set(names)) != len(names):
        raise InputError("expected distinct comma-separated policy names", field="--policies")
    return names


TRACE_ARG = typer.Argument(..., help="Trace file (.csv, .jsonl or .parquet).",
                           callback=_trace_exists)
CLUSTER = typer.Option(None, "--cluster", show_default=False,
                       help="A Ray cluster .yaml or a node-list .csv [default: ./cluster.yaml "
                            "if there is one, else the packaged 8-H100 + CPU cluster].")
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
                    help=f"Seconds between telemetry samples: simulated seconds in a "
                         f"simulation, wall seconds in a live run, whatever --speed is "
                         f"({MIN_TELEMETRY_S:g} to 3600; a simulation takes at most 2e7: last "
                         "arrival / interval).")
QUANTUM = typer.Option(0.0, "--decision-interval",
                       help="Scheduling quantum: consult the policy at most this often (s of "
                            "the run's clock, as --telemetry-interval; 0 "
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
                           help="Split each GPU-less node into N CPU workers; 0: one "
                           "single-threaded worker per core, at most 16.")
MEMORY_FRACTION = typer.Option(0.9, "--memory-fraction",
                               help="Share of each device's memory that policies may plan "
                                    "with and its worker enforces, 0.01 to 1.")
POLICY_HELP = "Registered name, module:Class or path/file.py:Class."
FALLBACK = typer.Option(None, "--fallback-policy",
                        help="Switch to this policy (e.g. greedy) when the policy fails "
                             "repeatedly, instead of stopping the run.")
