"""Cluster specs: which devices exist, whatever the source.

A Ray cluster-launcher file, a trace's node list and a live ``ray.nodes()``
all become the same frozen :class:`ClusterSpec`, so the simulator and the
live executor plan against identical device ids. Pure Python on purpose: the
Ray schema is read from the installed package's files without importing ray,
so the core stays importable (and testable) where Ray is absent.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from scheduler.errors import InputError
from scheduler.inputfiles import clip, read_capped, shown
from scheduler.profiles import load_profile, schema_message, shipped_profiles

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30
MAX_NODES_PER_TYPE = 100_000
MAX_GPUS_PER_NODE = 1024
MAX_DEVICES = 1_000_000  # a typo in a count must not allocate a billion objects
MAX_FILE_BYTES = 16 * MiB
# Aliases share one parsed object, but whatever walks the data (Ray's schema, a message's
# repr) sees every expansion: a 1 KiB "billion laughs" file would be 10**9 nodes.
MAX_YAML_ALIASES = 100
MAX_YAML_EXPANSION = 100_000  # nodes aliases may add beyond those written out
ALIBABA_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
# Device memory of the Alibaba v2023 GPU models; G1/G2/G3 are undisclosed.
ALIBABA_GPU_MEMORY: Mapping[str, int] = MappingProxyType(
    {"T4": 16 * GiB, "P100": 16 * GiB, "V100M16": 16 * GiB, "V100M32": 32 * GiB, "A10": 24 * GiB})
_ACCEL = "accelerator_type:"
_RAY_HEAD_MARKER = "node:__internal_head__"
_COUNT_FORM = f"TYPE=N, e.g. --nodes gpu_h100=3 (N a whole number 0..{MAX_NODES_PER_TYPE})"
_NO_MEMORY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One schedulable device: a GPU, or all of a GPU-less node's CPUs as one.

    ``profile`` names the shipped profile the cost model times this device
    with; ``None`` means nothing was measured for the model, so its speed is
    unknown and ``memory_bytes`` may be 0.
    """

    id: str
    node: str
    kind: str  # "gpu" | "cpu"
    model: str
    memory_bytes: int
    profile: str | None
    cpus: float


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One machine; ``devices`` is empty for a node that must host no work."""

    name: str
    node_type: str
    cpus: float
    memory_bytes: int
    gpus: int
    gpu_model: str | None
    devices: tuple[DeviceSpec, ...]
    address: str | None = None
    ray_id: str | None = None  # Ray's NodeID, for pinning workers; live clusters only


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """All nodes of a cluster, in a stable order; device ids are unique.

    ``source`` says where the spec came from (a path, or ``ray.nodes()``) so
    reports can name it.
    """

    nodes: tuple[NodeSpec, ...]
    source: str
    _devices: tuple[DeviceSpec, ...] = field(init=False, repr=False, compare=False)
    _by_id: Mapping[str, DeviceSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id = {d.id: d for n in self.nodes for d in n.devices}
        if len({n.name for n in self.nodes}) < len(self.nodes) or len(by_id) < sum(
                len(n.devices) for n in self.nodes):
            raise InputError("node names and device ids must be unique", path=self.source)
        object.__setattr__(self, "_devices", tuple(by_id.values()))
        object.__setattr__(self, "_by_id", MappingProxyType(by_id))

    @property
    def devices(self) -> tuple[DeviceSpec, ...]:
        """Every device, in node order."""
        return self._devices

    @property
    def gpus(self) -> int:
        return sum(1 for d in self._devices if d.kind == "gpu")

    def device(self, device_id: str) -> DeviceSpec:
        try:
            return self._by_id[device_id]
        except KeyError:
            raise KeyError(f"no device {clip(device_id)} in cluster {self.source}") from None


@functools.cache
def _gpu_profiles() -> tuple[tuple[str, frozenset[str], int], ...]:
    """(shipped name, models it matches, memory) per GPU profile, loaded once."""
    out = []
    for name in shipped_profiles():
        prof = load_profile(name)
        if prof.kind == "gpu":
            out.append((name, frozenset(m.upper() for m in prof.matches), prof.memory_bytes))
    return tuple(out)


def _make_node(name: str, node_type: str, *, cpus: float, memory_bytes: int, gpus: int,
               gpu_model: str | None, address: str | None = None,
               known_memory: Mapping[str, int] = _NO_MEMORY, ray_id: str | None = None
               ) -> NodeSpec:
    """Apply the device rules: one device per GPU, else one CPU device, else none."""
    devices: tuple[DeviceSpec, ...] = ()
    model = (gpu_model or "GPU") if gpus > 0 else None
    if model is not None:
        profile, mem = next(((n, m) for n, matches, m in _gpu_profiles()
                             if model.upper() in matches), (None, known_memory.get(model, 0)))
        devices = tuple(DeviceSpec(f"{name}/gpu{i}", name, "gpu", model, mem, profile, 1.0)
                        for i in range(gpus))
    elif cpus > 0:
        devices = (DeviceSpec(f"{name}/cpu", name, "cpu", "cpu", memory_bytes, "cpu", cpus),)
    return NodeSpec(name, node_type, cpus, memory_bytes, gpus, model, devices, address, ray_id)


def _read_text(path: Path, what: str) -> str:
    """File contents as text, or an InputError saying why they are unusable (a FIFO, a
    device, over :data:`MAX_FILE_BYTES`, not UTF-8)."""
    data = read_capped(path, MAX_FILE_BYTES, what=what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (bad byte at offset {e.start}); expected a {what}",
                         path=path, line=data[:e.start].count(b"\n") + 1) from None


class _Doc:
    """A parsed YAML file that can point errors at the line of a key path."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.text = path, text
        self.node: yaml.Node | None = None  # composed once by _parse_yaml, then reused

    def error(self, reason: str, keys: Sequence[str | int]) -> InputError:
        return InputError(reason, path=self.path, line=self.line_of(keys),
                          field=".".join(shown(str(k)) for k in keys) or None)

    def line_of(self, keys: Sequence[str | int]) -> int | None:
        """1-based line of the deepest node along ``keys`` that exists.

        Walks the node graph the file was parsed from (never composed again,
        never expanded), so locating costs at most the key path's length.
        """
        node = self.node
        if node is None:
            return None
        line = node.start_mark.line + 1
        for key in keys:
            child = None
            if isinstance(node, yaml.MappingNode):
                # Reversed: with duplicate keys the loader keeps the last one.
                for k, v in reversed(node.value):
                    if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                        line, child = k.start_mark.line + 1, v
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and (
                    0 <= key < len(node.value)):
                child = node.value[key]
                line = child.start_mark.line + 1
            if child is None:
                break
            node = child
        return line


def _parse_yaml(doc: _Doc) -> Any:
    """Plain data only (the safe loader, never Python objects), and only once the node
    graph is known to stay small when its aliases are expanded."""
    path, text = doc.path, doc.text
    try:
        loader = yaml.SafeLoader(text)  # reads the start already: may raise ReaderError
        try:
            doc.node = loader.get_single_node()
            if doc.node is None:
                return None
            _check_aliases(path, doc.node)
            return loader.construct_document(doc.node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise InputError(f"invalid YAML: {shown(str(e.problem or e.context))}", path=path,
                         line=mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as e:  # control characters, e.g. binary data
        raise InputError(f"invalid YAML: {e.reason} (character #x{e.character:04x})",
                         path=path, line=text[:e.position].count("\n") + 1) from None
    except (yaml.YAMLError, RecursionError) as e:
        raise InputError(f"invalid YAML: {shown(str(e)) if str(e) else 'nested too deeply'}",
                         path=path) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_aliases(path: Path, root: yaml.Node) -> None:
    """Refuse a graph whose aliases are many, recursive, or expand it past the bound.

    Sizes are counted per distinct node (memoized, iterative), so the count
    costs the nodes written in the file, however large the expansion.
    """
    size: dict[int, int] = {}
    open_: set[int] = set()  # entered, not finished: the current node's ancestors
    aliases = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
        elif key in open_:
            raise InputError("a YAML alias refers to a node that contains it", path=path,
                             line=node.start_mark.line + 1)
        elif key in size:  # met before: only an alias makes the composer reuse a node
            aliases += 1
            if aliases > MAX_YAML_ALIASES:
                raise InputError(f"more than {MAX_YAML_ALIASES} YAML aliases", path=path,
                                 line=node.start_mark.line + 1)
        else:
            open_.add(key)
            stack.append((node, True))
            stack += [(c, False) for c in reversed(_children(node))]
    if size[id(root)] > len(size) + MAX_YAML_EXPANSION:
        raise InputError(f"YAML aliases expand this file to {size[id(root)]:,} nodes; at most "
                         f"{MAX_YAML_EXPANSION:,} more than it writes out are allowed",
                         path=path)


def _non_string_key(data: Any, keys: list[str | int], seen: set[int]) -> list[str | int] | None:
    """Key path of the first mapping key that is not a string (JSON has none)."""
    if id(data) in seen:  # aliases share objects; visiting once keeps this linear
        return None
    seen.add(id(data))
    items: Any = data.items() if isinstance(data, dict) else (
        enumerate(data) if isinstance(data, list) else ())
    for k, v in items:
        if isinstance(data, dict) and not isinstance(k, str):
            return [*keys, str(k)]
        found = _non_string_key(v, [*keys, k], seen)
        if found is not None:
            return found
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_config(doc: _Doc, config: Any) -> None:
    """Our own checks: the parts attnsched reads, with messages showing the form."""
    if not isinstance(config, dict):
        raise doc.error("expected a mapping of cluster-launcher keys (cluster_name, provider, "
                        f"head_node_type, available_node_types, ...), got {type(config).__name__}",
                        [])
    bad_key = _non_string_key(config, [], set())
    if bad_key is not None:
        raise doc.error("keys must be strings", bad_key)
    types = config.get("available_node_types")
    if not isinstance(types, dict) or not types:
        raise doc.error("expected a non-empty mapping TYPE: {resources: {CPU: 32, GPU: 8}, "
                        "node_config: {...}, min_workers: N}", ["available_node_types"])
    head = config.get("head_node_type")
    if not isinstance(head, str) or head not in types:
        raise doc.error(f"{clip(head)} is not one of available_node_types "
                        f"({shown(', '.join(map(str, types)))})",
                        ["head_node_type"])
    for name, spec in types.items():
        at = ["available_node_types", name]
        if "/" in name:
            raise doc.error("node type names may not contain '/' (it separates device ids)", at)
        if not isinstance(spec, dict):
            raise doc.error("expected a mapping with resources and node_config", at)
        resources = spec.get("resources", {})
        if not isinstance(resources, dict):
            raise doc.error('expected a mapping RESOURCE: amount, e.g. {"CPU": 32, "GPU": 8}',
                            [*at, "resources"])
        for res, amount in resources.items():
            if res == "GPU" and not (_is_number(amount) and isinstance(amount, int)
                                     and 0 <= amount <= MAX_GPUS_PER_NODE):
                raise doc.error(f"expected a whole number of GPUs 0..{MAX_GPUS_PER_NODE}, "
                                f"got {clip(amount)}", [*at, "resources", res])
            if not _is_number(amount) or amount < 0:
                raise doc.error(f"expected a number >= 0, got {clip(amount)}",
                                [*at, "resources", res])
        for key in ("min_workers", "max_workers"):
            n = spec.get(key, 0)
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_NODES_PER_TYPE:
                raise doc.error(f"expected a whole number 0..{MAX_NODES_PER_TYPE}, got {clip(n)}",
                                [*at, key])
        if "max_workers" in spec and spec.get("min_workers", 0) > spec["max_workers"]:
            raise doc.error(f"min_workers ({spec.get('min_workers', 0)}) exceeds max_workers "
                            f"({spec['max_workers']})", [*at, "min_workers"])
    total_min = sum(spec.get("min_workers", 0) for spec in types.values())
    max_workers = config.get("max_workers")
    if isinstance(max_workers, int) and total_min > max_workers:
        # Ray's own validate_config refuses this too.
        raise doc.error(f"smaller than the sum of min_workers over node types ({total_min})",
                        ["max_workers"])


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


def _check_ray_schema(doc: _Doc, config: dict[str, Any]) -> None:
    schema = _ray_schema()
    if schema is None:
        return
    import jsonschema  # deferred: only cluster-file loading needs it

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    error = jsonschema.exceptions.best_match(cls(schema).iter_errors(config))
    if error is None:
        return
    keys: list[str | int] = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        keys += [k for k in error.validator_value if k not in error.instance][:1]
    raise doc.error(f"{schema_message(error)} (Ray cluster-launcher schema)", keys)


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
    _check_ray_schema(doc, config)
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


def _accelerator(resources: Mapping[str, Any]) -> str | None:
    """The model Ray's ``accelerator_type:X`` resource names, if any."""
    return next((k[len(_ACCEL):] for k in sorted(resources) if k.startswith(_ACCEL)), None)


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


def from_ray_nodes(nodes: Sequence[Mapping[str, Any]]) -> ClusterSpec:
    """The live cluster as ``ray.nodes()`` reports it; dead nodes are left out.

    The head is named ``head``; other nodes by the first 8 hex digits of their
    NodeID (the prefix ``ray status`` shows), the full id on a clash. Nodes are
    ordered head first, then by NodeID, so the same cluster gives the same spec.
    """
    alive: list[tuple[bool, str, Mapping[str, Any]]] = []
    for i, info in enumerate(nodes):
        if not info.get("Alive", info.get("alive", False)):
            continue
        node_id = info.get("NodeID")
        if not isinstance(node_id, str) or not node_id:
            raise InputError(f"expected a NodeID string, got {clip(node_id)}", field=f"nodes[{i}]")
        for key, amount in (info.get("Resources") or {}).items():
            if not _is_number(amount) or amount < 0:
                raise InputError(f"expected a number >= 0, got {clip(amount)}",
                                 field=f"nodes[{i}].Resources.{shown(str(key))}")
        alive.append((_RAY_HEAD_MARKER not in (info.get("Resources") or {}), node_id, info))
    alive.sort(key=lambda a: a[:2])
    shorts = [node_id[:8] for _, node_id, _ in alive]
    out = []
    for i, (not_head, node_id, info) in enumerate(alive):
        res = info.get("Resources") or {}
        head = i == 0 and not not_head
        gpus, model = int(res.get("GPU", 0)), _accelerator(res)
        address = info.get("NodeManagerAddress")
        out.append(_make_node(
            "head" if head else (shorts[i] if shorts.count(shorts[i]) == 1 else node_id),
            "head" if head else ((model or "gpu") if gpus else "cpu"),
            cpus=float(res.get("CPU", 0)), memory_bytes=int(res.get("memory", 0)), gpus=gpus,
            gpu_model=model, address=address if isinstance(address, str) else None,
            ray_id=node_id))
    return ClusterSpec(tuple(out), "ray.nodes()")


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


def load_cluster(path: str | Path, nodes: Mapping[str, int] | None = None) -> ClusterSpec:
    """A cluster spec from a Ray cluster .yaml/.yml or an Alibaba node-list .csv."""
    p = Path(path)
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


def make_cluster(gpu_nodes: int = 1, gpus_per_node: int = 8, cpu_nodes: int = 0,
                 gpu_model: str = "H100", cpus_per_node: float = 32.0,
                 memory_per_node: int = 512 * GiB) -> ClusterSpec:
    """A uniform cluster built in code, for tests, benchmarks and notebooks."""
    nodes = [_make_node(f"gpu-{k}", "gpu", cpus=cpus_per_node, memory_bytes=memory_per_node,
                        gpus=gpus_per_node, gpu_model=gpu_model) for k in range(gpu_nodes)]
    nodes += [_make_node(f"cpu-{k}", "cpu", cpus=cpus_per_node, memory_bytes=memory_per_node,
                         gpus=0, gpu_model=None) for k in range(cpu_nodes)]
    return ClusterSpec(tuple(nodes), f"make_cluster({gpu_nodes}x{gpus_per_node} {gpu_model}, "
                                     f"{cpu_nodes} cpu)")


def for_live_run(spec: ClusterSpec, emulated_gpus: bool, cpu_workers: int) -> ClusterSpec:
    """Adapt a discovered cluster to how a live run uses it.

    Emulated GPUs (``--emulate-gpus``: slots declared to Ray, compute on the
    CPU) are timed with the CPU profile and get an equal share of the node's
    memory. ``cpu_workers > 0`` splits each GPU-less node's CPUs into that many
    CPU devices, one worker each.
    """
    nodes = []
    for node in spec.nodes:
        devices = list(node.devices)
        if emulated_gpus and node.gpus:
            share = node.memory_bytes // max(node.gpus, 1)
            devices = [DeviceSpec(d.id, d.node, "gpu", "emulated", share, "cpu", d.cpus)
                       if d.kind == "gpu" else d for d in devices]
        cpu = [d for d in devices if d.kind == "cpu"]
        if cpu_workers > 0 and cpu and node.cpus >= cpu_workers:
            each = node.cpus / cpu_workers
            devices = [d for d in devices if d.kind != "cpu"] + [
                DeviceSpec(f"{node.name}/cpu{i}", node.name, "cpu", "cpu",
                           node.memory_bytes // cpu_workers, "cpu", each)
                for i in range(cpu_workers)]
        nodes.append(NodeSpec(node.name, node.node_type, node.cpus, node.memory_bytes, node.gpus,
                              node.gpu_model, tuple(devices), node.address, node.ray_id))
    return ClusterSpec(tuple(nodes), spec.source)
