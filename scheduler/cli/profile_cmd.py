"""``attnsched profile``: what a device profile says, before a run relies on it."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from scheduler.cli.consoles import make_console
from scheduler.profiles import DeviceProfile, load_profile, shipped_profiles

# Plain help text: rich's panels cut option names to fit 80 columns.
app = typer.Typer(rich_markup_mode=None,
                  help="Inspect device profiles (measured attention throughput).",
                  epilog="Example: attnsched profile show h100", no_args_is_help=True)
console = make_console()


@app.command("list")
def list_cmd() -> None:
    """The profiles shipped with attnsched.

    Example: attnsched profile list
    """
    for name in shipped_profiles():
        p = load_profile(name)
        console.print(f"{name:8} {p.kind:4} {p.device}")


@app.command()
def show(
    profile: str = typer.Argument(..., help="A shipped profile name or a profile .json path."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Validate a profile and summarize it: device, overheads, best rates.

    Example: attnsched profile show h100
    """
    p = load_profile(profile)
    summary = _summary(p)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    console.print(f"[bold]{p.name}[/] ({p.kind}): {p.device}, "
                  f"{p.memory_bytes / (1 << 30):,.1f} GiB, {p.bandwidth_bytes_s / 1e9:,.0f} GB/s")
    console.print(f"host per call {p.call_host_s * 1e6:.2f} us, Ray actor call "
                  f"{p.actor_call_s * 1e6:.1f} us, Ray task {p.task_s * 1e3:.2f} ms")
    table = Table(title="best measured SDPA forward rate (TFLOP/s)")
    for col in ("dtype", "head_dim", "causal", "seq", "backend", "TFLOP/s"):
        table.add_column(col, justify="right")
    for row in summary["best"]:
        table.add_row(row["dtype"], str(row["head_dim"]), str(row["causal"]), str(row["seq"]),
                      row["backend"], f"{row['tflops']:.4g}")
    console.print(table)
    if p.source:
        console.print(f"source: {p.source}")


def _summary(p: DeviceProfile) -> dict[str, Any]:
    best: dict[tuple[str, int, bool, int], tuple[float, str]] = {}
    for pt in p.sdpa:
        key = (pt.dtype.value, pt.head_dim, pt.causal, round(pt.seq))
        if key not in best or pt.tflops > best[key][0]:
            best[key] = (pt.tflops, pt.backend)
    return {
        "name": p.name, "kind": p.kind, "device": p.device, "memory_bytes": p.memory_bytes,
        "points": len(p.sdpa), "call_host_us": p.call_host_s * 1e6,
        "best": [{"dtype": k[0], "head_dim": k[1], "causal": k[2], "seq": k[3], "tflops": v[0],
                  "backend": v[1]} for k, v in sorted(best.items())],
    }
