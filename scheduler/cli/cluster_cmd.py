"""``attnsched cluster``: describe the cluster a run schedules onto."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from scheduler.cli.consoles import make_console
from scheduler.cluster import ClusterSpec, load_cluster, parse_node_counts

# Plain help text: rich's panels cut option names to fit 80 columns.
app = typer.Typer(rich_markup_mode=None, help="Describe clusters (cluster.yaml or a node list).",
                  epilog="Example: attnsched cluster show cluster.yaml --nodes gpu_h100=4",
                  no_args_is_help=True)
console = make_console()
GIB = 1 << 30


@app.command()
def show(
    path: Path | None = typer.Argument(None, show_default=False,
                                       help="A Ray cluster .yaml or a node-list CSV [default: "
                                            "./cluster.yaml if there is one, else the packaged "
                                            "8-H100 + CPU cluster]."),
    nodes: list[str] = typer.Option([], "--nodes",
                                    help="Override a node type's count: TYPE=N (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the spec as JSON."),
) -> None:
    """Nodes, devices and memory of a cluster.

    Example: attnsched cluster show cluster.yaml --nodes gpu_h100=2
    """
    spec = load_cluster(path, parse_node_counts(nodes) or None)
    if as_json:
        typer.echo(json.dumps(_as_dict(spec), indent=1))
        return
    _print(spec)


def _as_dict(spec: ClusterSpec) -> dict[str, object]:
    return {
        "source": spec.source,
        "nodes": [{"name": n.name, "type": n.node_type, "cpus": n.cpus,
                   "memory_bytes": n.memory_bytes, "gpus": n.gpus, "gpu_model": n.gpu_model,
                   "devices": [{"id": d.id, "kind": d.kind, "model": d.model,
                                "memory_bytes": d.memory_bytes, "profile": d.profile,
                                "cpus": d.cpus} for d in n.devices]}
                  for n in spec.nodes],
    }


def _print(spec: ClusterSpec) -> None:
    table = Table(title=f"cluster from {spec.source}")
    for col in ("node", "type", "CPUs", "memory", "GPUs", "devices"):
        table.add_column(col, justify="right" if col in ("CPUs", "memory", "GPUs") else "left")
    shown = spec.nodes if len(spec.nodes) <= 40 else spec.nodes[:40]
    for n in shown:
        models: dict[str, tuple[int, int]] = {}
        for d in n.devices:
            count, mem = models.get(d.model, (0, d.memory_bytes))
            models[d.model] = (count + 1, mem)
        devices = ", ".join(f"{c}× {m} ({mem / GIB:,.0f} GiB)" if mem else f"{c}× {m}"
                            for m, (c, mem) in models.items()) or "none (no workers here)"
        table.add_row(n.name, n.node_type, f"{n.cpus:g}", f"{n.memory_bytes / GIB:,.0f} GiB",
                      str(n.gpus), devices)
    if len(spec.nodes) > len(shown):
        table.add_row(f"... {len(spec.nodes) - len(shown)} more", "", "", "", "", "")
    console.print(table)
    gpu_mem = sum(d.memory_bytes for d in spec.devices if d.kind == "gpu")
    console.print(f"{len(spec.nodes)} nodes, {spec.gpus} GPUs ({gpu_mem / GIB:,.0f} GiB), "
                  f"{sum(n.cpus for n in spec.nodes):g} CPUs, "
                  f"{sum(n.memory_bytes for n in spec.nodes) / GIB:,.0f} GiB memory")
