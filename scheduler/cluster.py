"""Cluster specs: which devices exist, whatever the source.

A Ray cluster-launcher file, a trace's node list and a live ``ray.nodes()``
all become the same frozen :class:`ClusterSpec`, so the simulator and the
live executor plan against identical device ids. Pure Python on purpose: the
Ray schema is read from the installed package's files without importing ray,
so the core stays importable (and testable) where Ray is absent.

This module loads cluster files and ``--nodes`` counts; the parts sit beside
it, and every name they export is importable from here too:
:mod:`scheduler.cluster_spec` (the model and the device rules),
:mod:`scheduler.cluster_yaml` (safe YAML parsing and validation) and
:mod:`scheduler.cluster_ray` (specs from ``ray.nodes()``, adapted to live runs).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from scheduler.cluster_ray import _accelerator, for_live_run, from_ray_nodes
from scheduler.cluster_spec import (
    MAX_DEVICES,
    MAX_GPUS_PER_NODE,
    MAX_NODES_PER_TYPE,
    ClusterSpec,
    DeviceSpec,
    GiB,
    MiB,
    NodeSpec,
    _make_node,
    make_cluster,
)
from scheduler.cluster_yaml import (
    MAX_YAML_ALIASES,
    MAX_YAML_EXPANSION,
    _check_config,
    _check_ray_schema,
    _Doc,
    _parse_yaml,
)
from scheduler.errors import InputError
from scheduler.inputfiles import clip, read_capped, shown

__all__ = [
    "ALIBABA_COLUMNS", "ALIBABA_GPU_MEMORY", "MAX_DEVICES", "MAX_FILE_BYTES", "MAX_GPUS_PER_NODE",
    "MAX_NODES_PER_TYPE", "MAX_YAML_ALIASES", "MAX_YAML_EXPANSION", "ClusterSpec", "DeviceSpec",
    "GiB", "MiB", "NodeSpec", "for_live_run", "from_ray_nodes", "load_alibaba_nodes",
    "load_cluster", "load_cluster_yaml", "make_cluster", "parse_node_counts"]

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 16 * MiB
ALIBABA_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
# Device memory of the Alibaba v2023 GPU models; G1/G2/G3 are undisclosed.
ALIBABA_GPU_MEMORY: Mapping[str, int] = MappingProxyType(
    {"T4": 16 * GiB, "P100": 16 * GiB, "V100M16": 16 * GiB, "V100M32": 32 * GiB, "A10": 24 * GiB})
_COUNT_FORM = f"TYPE=N, e.g. --nodes gpu_h100=3 (N a whole number 0..{MAX_NODES_PER_TYPE})"


def _read_text(path: Path, what: str) -> str:
    """File contents as text, or an InputError saying why they are unusable (a FIFO, a
    device, over :data:`MAX_FILE_BYTES`, not UTF-8)."""
    data = read_capped(path, MAX_FILE_BYTES, what=what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (bad byte at offset {e.start}); expected a {what}",
                         path=path, line=data[:e.start].count(b"\n") + 1) from None


@functools.cache
def _ray_schema() -> dict[str, Any] | None:
    """Ray's cluster-launcher schema from the installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec("ray")
        folders = list(spec.submodule_search_locations or ()) if spec else []
        if folders:
            path = Path(folders[0]) / "autoscaler" / "ray-schema.json"
            schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            return schema
    except (ImportError, ValueError, OSError):
        pass
    log.debug("no Ray schema found; cluster files are checked by attnsched's rules only")
    return None


def load_cluster_yaml(path: str | Path, nodes: Mapping[str, int] | None = None) -> ClusterSpec:
    """The cluster a Ray cluster-launcher file describes, at its minimum size.

    The head runs once; every other node type runs ``min_workers`` nodes, or
    ``nodes[TYPE]`` when given (for the head type: worker nodes besides the
    head). Overrides may exceed ``max_workers``: simulating a bigger cluster
    than the file would launch is the point of them.
    """
    p = Path(path)
    doc = _Doc(p, _read_text(p, "Ray cluster-launcher YAML file"))
    config = _parse_yaml(doc)
    if config is None:
        raise InputError("empty file; expected a Ray cluster-launcher config with "
                         "head_node_type and available_node_types", path=p)
    _check_config(doc, config)
    _check_ray_schema(doc, config, _ray_schema())
    types: dict[str, Any] = config["available_node_types"]
    counts = {name: int(spec.get("min_workers", 0)) for name, spec in types.items()}
    for name, n in (nodes or {}).items():
        if name not in types:
            raise InputError(f"unknown node type {clip(name)}; {p.name} defines "
                             f"{shown(', '.join(map(str, types)))}",
                             path=p, field="--nodes")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_NODES_PER_TYPE:
            raise InputError(f"{shown(name)}={clip(n)}: expected {_COUNT_FORM}", path=p,
                             field="--nodes")
        counts[name] = n
    sized = [(config["head_node_type"], True, 1)] + [(t, False, counts[t]) for t in types]
    resources = {t: spec.get("resources", {}) for t, spec in types.items()}
    total = sum(n * max(1, int(resources[t].get("GPU", 0))) for t, _, n in sized)
    if total > MAX_DEVICES:
        raise InputError(f"would have {total:,} devices; at most {MAX_DEVICES:,}", path=p,
                         field="--nodes" if nodes else "available_node_types")
    out = []
    for node_type, is_head, n in sized:
        res = resources[node_type]
        out += [_make_node("head" if is_head else f"{node_type}-{k}", node_type,
                           cpus=float(res.get("CPU", 0)), memory_bytes=int(res.get("memory", 0)),
                           gpus=int(res.get("GPU", 0)), gpu_model=_accelerator(res))
                for k in range(n)]
    return ClusterSpec(tuple(out), str(p))


def load_alibaba_nodes(path: str | Path) -> ClusterSpec:
    """The GPU nodes of Alibaba's GPU v2023 trace (``sn,cpu_milli,memory_mib,gpu,model``)."""
    p = Path(path)
    form = ",".join(ALIBABA_COLUMNS)
    reader = csv.reader(io.StringIO(_read_text(p, f"node-list CSV ({form})"), newline=""))
    out: list[NodeSpec] = []
    seen: dict[str, int] = {}
    devices = 0

    def bad(reason: str, column: str | None = None) -> InputError:
        return InputError(reason, path=p, line=reader.line_num or None, field=column)

    def whole(row: list[str], column: str, hi: int) -> int:
        v = row[col[column]].strip()
        if not (v.isascii() and v.isdigit()) or int(v) > hi:
            raise bad(f"expected a whole number 0..{hi}, got {clip(v)}", column)
        return int(v)

    try:
        header = [h.strip() for h in next(reader, [])]
        if not any(header):
            raise bad(f"empty file; expected the header {form} and one row per node")
        missing = [c for c in ALIBABA_COLUMNS if c not in header]
        if missing:
            raise bad(f"missing column; expected the header {form}", missing[0])
        col = {c: header.index(c) for c in ALIBABA_COLUMNS}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise bad(f"expected {len(header)} columns, got {len(row)}")
            sn, model = row[col["sn"]].strip(), row[col["model"]].strip()
            if not sn or "/" in sn:
                raise bad(f"expected a node id without '/', got {clip(sn)}", "sn")
            if sn in seen:
                raise bad(f"node {clip(sn)} already listed on line {seen[sn]}", "sn")
            seen[sn] = reader.line_num
            cpu_milli = whole(row, "cpu_milli", 10**9)
            memory_mib = whole(row, "memory_mib", 10**12)
            gpus = whole(row, "gpu", MAX_GPUS_PER_NODE)
            if gpus and not model:
                raise bad("a node with GPUs needs its GPU model", "model")
            devices += max(1, gpus)
            if devices > MAX_DEVICES:
                raise bad(f"more than {MAX_DEVICES:,} devices")
            out.append(_make_node(sn, model or "cpu", cpus=cpu_milli / 1000,
                                  memory_bytes=memory_mib * MiB, gpus=gpus,
                                  gpu_model=model or None, known_memory=ALIBABA_GPU_MEMORY))
    except csv.Error as e:
        raise bad(f"invalid CSV: {e}") from None
    if not out:
        raise InputError(f"no nodes listed; expected the header {form} and one row per node",
                         path=p)
    return ClusterSpec(tuple(out), str(p))


def parse_node_counts(items: Sequence[str]) -> dict[str, int]:
    """``--nodes TYPE=N`` options (repeated, or comma-separated) as {TYPE: N}."""
    counts: dict[str, int] = {}
    for item in items:
        for part in item.split(","):
            name, sep, num = (s.strip() for s in part.partition("="))
            if (not sep or not name or not (num.isascii() and num.isdigit())
                    or int(num) > MAX_NODES_PER_TYPE):
                raise InputError(f"{clip(part)}: expected {_COUNT_FORM}", field="--nodes")
            if name in counts:
                raise InputError(f"node type {clip(name)} given twice", field="--nodes")
            counts[name] = int(num)
    return counts


# The repository's cluster.yaml (8 H100s and a CPU node), shipped inside the package so
# a run from any folder has a cluster without naming one.
PACKAGED_CLUSTER = Path(__file__).with_name("cluster_data") / "cluster.yaml"


def cluster_path(given: str | Path | None) -> Path:
    """The cluster file a run uses: the one given, else ``./cluster.yaml`` where there is
    one, else the packaged default (:data:`PACKAGED_CLUSTER`)."""
    if given is not None:
        return Path(given)
    local = Path("cluster.yaml")
    return local if local.is_file() else PACKAGED_CLUSTER


def load_cluster(path: str | Path | None, nodes: Mapping[str, int] | None = None
                 ) -> ClusterSpec:
    """A cluster spec from a Ray cluster .yaml/.yml or an Alibaba node-list .csv; with no
    path, the one :func:`cluster_path` picks."""
    p = cluster_path(path)
    suffix = p.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return load_cluster_yaml(p, nodes)
    if suffix == ".csv":
        if nodes:
            raise InputError("--nodes applies to Ray cluster .yaml files, not node lists",
                             path=p, field="--nodes")
        return load_alibaba_nodes(p)
    raise InputError(f"unknown cluster file type {clip(suffix or '(none)')}; expected a Ray "
                     "cluster-launcher .yaml/.yml or an Alibaba node-list .csv", path=p)
