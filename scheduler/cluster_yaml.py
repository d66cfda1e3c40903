"""Reading a Ray cluster-launcher YAML file safely, with errors that point at the line.

The safe loader only, and only once aliases are known not to blow the file up; then
attnsched's own checks of the keys it reads, then (where Ray is installed) Ray's own
schema. Every error names the file, the line and the key path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from scheduler.cluster_spec import MAX_GPUS_PER_NODE, MAX_NODES_PER_TYPE, _is_number
from scheduler.errors import InputError
from scheduler.inputfiles import clip, shown
from scheduler.profiles import schema_message

# Aliases share one parsed object, but whatever walks the data (Ray's schema, a message's
# repr) sees every expansion: a 1 KiB "billion laughs" file would be 10**9 nodes.
MAX_YAML_ALIASES = 100
MAX_YAML_EXPANSION = 100_000  # nodes aliases may add beyond those written out


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


def _check_ray_schema(doc: _Doc, config: dict[str, Any], schema: dict[str, Any] | None) -> None:
    """Refuse ``config`` where it breaks Ray's ``schema``; no schema (no Ray): nothing to do."""
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
