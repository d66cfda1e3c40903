"""``attnsched calibrate``: measure this machine into a device profile the simulator reads.

Everything that can be wrong with the options is checked before the first
measurement, so a typo never costs minutes of calibration. The measuring
itself lives in ``workers/`` (torch and Ray), reached lazily.
"""

from __future__ import annotations

import json
import re
import time
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from scheduler.calibration.plan import Plan, count_steps
from scheduler.cli.consoles import make_console
from scheduler.cli.progress import Bars
from scheduler.errors import InputError
from scheduler.profiles import SCHEMA, check_profile_json
from scheduler.runs import check_out_file

console = make_console()
err_console = make_console(stderr=True)
NAME_PATTERN = re.compile(SCHEMA["properties"]["name"]["pattern"])


class Device(str, Enum):
    CPU = "cpu"
    CUDA = "cuda"


def calibrate(
    output: Path = typer.Option(..., "-o", "--output", help="Profile file to write (JSON)."),
    device: Device = typer.Option(Device.CPU, "--device", help="What to measure."),
    quick: bool = typer.Option(False, "--quick", help="A smaller grid: under 2 minutes on "
                                                      "a 2-core CPU."),
    name: str | None = typer.Option(None, "--name", help="Profile name cluster specs refer "
                                                         "to (default: cpu, or the shipped "
                                                         "profile of this GPU model)."),
    threads: int = typer.Option(1, "--threads", min=1, max=1024,
                                help="Torch threads of the SDPA grid: 1 is what each emulated "
                                     "GPU worker computes with."),
) -> None:
    """Measure the local device and write a profile (format attnsched-profile/1).

    Measures the SDPA grid (lengths, head sizes, dtypes, causal or not, every
    backend), the batching curve, Ray's actor call and task round trips, the
    worker's per-job cost, telemetry's round trip, the controller's decision
    time and how workers sharing this node's cores slow each other.

    Example: attnsched calibrate --quick -o runs/cpu.json
    """
    check_out_file(output, "--output")
    if name is not None and not NAME_PATTERN.fullmatch(name):
        raise InputError(f"expected lowercase letters, digits, '_', '.', '-' (e.g. cpu, "
                         f"h100-sxm), got {name!r}", field="--name")
    if device is Device.CUDA and not _has_cuda():
        raise InputError("no CUDA device here (torch.cuda.is_available() is false); run it "
                         "on the GPU machine, or use --device cpu", field="--device")
    from workers.calibrate import full_plan, quick_plan
    from workers.measure import default_name

    plan = (quick_plan if quick else full_plan)(device.value, threads)
    write_calibration(plan, name or default_name(device.value), output,
                      "--quick, " if quick else "")


def write_calibration(plan: Plan, name: str, output: Path, note: str = "") -> dict[str, Any]:
    """Measure ``plan`` behind a progress bar, check the profile once and write it to
    ``output`` (its source noted with ``note`` and the seconds it took); returns its JSON."""
    from workers.calibrate import build_profile

    start = time.perf_counter()
    with Bars(TextColumn("[bold]{task.description:<44}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err_console, transient=True) as bar:
        task = bar.add_task("calibrate", total=count_steps(plan))
        started = False

        def tick(label: str) -> None:
            nonlocal started
            bar.update(task, description=label, advance=1 if started else 0)
            started = True

        calibrated = build_profile(plan, name, tick)
        bar.update(task, completed=count_steps(plan))
    data = calibrated.noted(f"{note}{time.perf_counter() - start:.0f} s").to_json()
    try:
        check_profile_json(data)
    except InputError as e:  # our own output: a bug, not the user's input
        raise RuntimeError(f"calibration produced an invalid profile: {e}") from None
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(output)
    _print_summary(data, output, time.perf_counter() - start)
    return data


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _print_summary(data: dict[str, Any], output: Path, seconds: float) -> None:
    best = max(data["sdpa"], key=lambda p: p["tflops"])
    console.print(f"wrote [bold]{output}[/] ({data['name']}, {len(data['sdpa'])} SDPA points) "
                  f"in {seconds:.0f} s")
    console.print(f"best SDPA {best['tflops'] * 1e3:,.1f} GFLOP/s ({best['backend']} "
                  f"{best['dtype']} d={best['head_dim']} L={best['q_len']}); host per call "
                  f"{data['call_host_us']:.1f} us")
    live = [f"{key} {data[key]:,.1f} us" for key in
            ("actor_call_us", "task_us", "worker_job_us", "telemetry_us", "decision_us")
            if key in data]
    console.print("; ".join(live))
    if "node_sharing" in data:
        console.print("node sharing (busy workers: per-worker speed): " + ", ".join(
            f"{k:g}: {e:.2f}" for k, e in data["node_sharing"]))
