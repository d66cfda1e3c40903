"""Fuzzing cluster files and device profiles through the real CLI in-process.

Cluster files: Ray cluster-launcher YAML (``cluster show``, with ``--nodes``)
and Alibaba node lists; device profiles: ``profile show PATH`` and
``simulate --profile NAME=PATH``. Inputs are the shipped files with arbitrary
edits (any value at any key path, keys dropped or renamed, text cut or
spliced, YAML aliases and tags). The property: accepted, or exit 2 with one
line naming the file; never an internal error. A profile that is accepted but
measures too little (missing grid points) must still run every job to an end.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tests.conftest import REPO
from tests.malformed import FUZZ, assert_clean, examples, run_cli

EDGE: list[Any] = [None, "", "x", "H100", "gpu", "cpu", 0, 1, -1, 8, 0.5, 2**31, 2**63, 10**30,
                   1e308, math.nan, math.inf, -math.inf, True, [], [1], {}, {"CPU": 1},
                   "1e400", "\U0001f600", "a/b", "x" * 300]
VALUES = st.one_of(st.sampled_from(EDGE), st.integers(), st.floats(), st.text(max_size=6),
                   st.lists(st.integers(), max_size=3))

SMALL_CLUSTER = {
    "cluster_name": "fuzz", "max_workers": 3, "provider": {"type": "local", "head_ip": "127.0.0.1"},
    "auth": {"ssh_user": "u"}, "head_node_type": "head",
    "available_node_types": {
        "head": {"min_workers": 0, "max_workers": 0, "resources": {"CPU": 0}, "node_config": {}},
        "gpu": {"min_workers": 1, "max_workers": 2, "node_config": {},
                "resources": {"CPU": 8, "GPU": 2, "memory": 2**36,
                              "accelerator_type:H100": 1}},
        "cpu": {"min_workers": 1, "max_workers": 1, "node_config": {},
                "resources": {"CPU": 4, "memory": 2**34}},
    },
}


def key_paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into nested dicts and lists, the root included."""
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += key_paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += key_paths(v, (*prefix, i))
    return out


@st.composite
def edited(draw: st.DrawFn, good: Any, max_edits: int = 3) -> Any:
    """``good`` with up to ``max_edits`` edits: set, drop or rename at any key path."""
    data = copy.deepcopy(good)
    for _ in range(draw(st.integers(1, max_edits))):
        path = draw(st.sampled_from(key_paths(data)))
        if not path:
            if draw(st.integers(0, 9)) == 0:
                data = draw(VALUES)
            continue
        parent = data
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        how = draw(st.sampled_from(["set", "set", "drop", "rename"]))
        if how == "set":
            parent[key] = draw(VALUES)
        elif how == "drop":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["x", "", "GPU", "CPU", "memory", "min_workers"]))] = \
                parent.pop(key)
    return data


YAML_TEXTS = [
    "a: &a [1, 2]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b]\n",
    "!!python/object:os.system {}\n", "available_node_types: !!binary aGVsbG8=\n",
    "head_node_type: 2001-12-14\n", "? [a, b]\n: c\n", "[" * 5000, "a:\n" + "  " * 3000 + "b",
    "---\na: 1\n---\nb: 2\n", "%YAML 9.9\n---\na: 1\n", "a: 1\na: 2\n", "\t", "\x00",
]


@st.composite
def cluster_yaml(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        text = draw(st.sampled_from(YAML_TEXTS))
        if draw(st.booleans()):  # a bomb or a tag inside an otherwise valid file
            text = yaml.safe_dump(SMALL_CLUSTER) + "\n" + text
        return text.encode()
    config = draw(edited(SMALL_CLUSTER))
    text = yaml.safe_dump(config, allow_unicode=draw(st.booleans()))
    if draw(st.integers(0, 4)) == 0:  # text-level damage on top
        lines = text.splitlines()
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.sampled_from(["  - ]x", "key: [", "\tx: 1", "a: b: c", "'",
                                               "*undefined", "&a x", "!!int x"])))
        text = "\n".join(lines)
    return text.encode("utf-8", "surrogatepass")


NODE_COUNTS = ["gpu=2", "cpu=0", "gpu=100001", "gpu=-1", "gpu=1.5", "nosuch=1", "gpu", "=3",
               "gpu=2,gpu=3", "head=2", "gpu=99999,cpu=99999", "gpu=\u0663", ""]


@settings(FUZZ, max_examples=examples(150))
@given(data=cluster_yaml(), nodes=st.lists(st.sampled_from(NODE_COUNTS), max_size=2),
       suffix=st.sampled_from([".yaml", ".yml"]))
def test_fuzzed_cluster_yaml(tmp_path: Path, data: bytes, nodes: list[str], suffix: str) -> None:
    path = tmp_path / f"cluster{suffix}"
    path.write_bytes(data)
    args = [x for n in nodes for x in ("--nodes", n)]
    code, text = run_cli("cluster", "show", path, "--json", *args)
    # --nodes errors are about the option, not the file: any location will do.
    assert_clean(code, text, None if nodes else path)
    if code == 0:
        spec = json.loads(text)
        ids = [d["id"] for n in spec["nodes"] for d in n["devices"]]
        assert len(ids) == len(set(ids))


NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model"
NODE_CELLS = ["", "0", "1", "-1", "64000", "1.5", "nan", "1e3", "99999999999999999999", "x",
              "2", "1025", "P100", "T4", "G1", "H100", "node/0", "\u0663", " 8 ", "a\"b"]


@st.composite
def node_list(draw: st.DrawFn) -> bytes:
    header = draw(st.sampled_from([NODE_HEADER, "sn,gpu,model", NODE_HEADER + ",extra",
                                   "model,gpu,memory_mib,cpu_milli,sn", ""]))
    width = len(header.split(","))
    rows = []
    for i in range(draw(st.integers(0, 4))):
        cells = [f"node-{i}", "64000", "262144", "2", "P100", "e"][:width]
        cells += ["e"] * (width - len(cells))
        for _ in range(draw(st.integers(0, 3))):
            cells[draw(st.integers(0, width - 1))] = draw(
                st.one_of(st.sampled_from(NODE_CELLS), st.text(max_size=4)))
        if draw(st.integers(0, 9)) == 0:
            cells = cells[:draw(st.integers(0, width))]
        rows.append(",".join(cells))
    return "\n".join([header, *rows]).encode("utf-8", "surrogatepass")


@settings(FUZZ, max_examples=examples(100))
@given(data=node_list())
def test_fuzzed_node_lists(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "nodes.csv"
    path.write_bytes(data)
    code, text = run_cli("cluster", "show", path, "--json")
    assert_clean(code, text, path)


GOOD_PROFILE = json.loads((REPO / "scheduler" / "profile_data" / "cpu.json").read_text())
GOOD_PROFILE.pop("reference")  # large and free-form: edits there prove nothing


@st.composite
def profile_json(draw: st.DrawFn, max_edits: int = 3) -> bytes:
    data = draw(edited(GOOD_PROFILE, max_edits)) if max_edits else copy.deepcopy(GOOD_PROFILE)
    if isinstance(data, dict) and isinstance(data.get("sdpa"), list) and draw(st.booleans()):
        # Missing grid points: keep only some backends, dtypes or head sizes.
        keep = draw(st.sampled_from([("backend", "math"), ("dtype", "bf16"), ("head_dim", 16),
                                     ("causal", True), ("q_len", 128)]))
        data["sdpa"] = [p for p in data["sdpa"] if isinstance(p, dict) and p.get(keep[0]) ==
                        keep[1]]
    text = json.dumps(data, indent=1)
    if max_edits and draw(st.integers(0, 9)) == 0:
        text = text[:draw(st.integers(0, len(text) - 1))]
    return text.encode("utf-8", "surrogatepass")


@settings(FUZZ, max_examples=examples(150))
@given(data=profile_json())
def test_fuzzed_profiles(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(data)
    code, text = run_cli("profile", "show", path, "--json")
    assert_clean(code, text, path)


CPU_CLUSTER = {**SMALL_CLUSTER, "available_node_types": {
    "head": SMALL_CLUSTER["available_node_types"]["head"],  # type: ignore[index]
    "cpu": {"min_workers": 2, "max_workers": 2, "node_config": {},
            "resources": {"CPU": 4, "memory": 2**34}}}}
TRACE_ROWS = [
    {"id": f"j{i}", "submit_time": i * 0.01, "kind": kind, "batch": 1, "heads": 2, "kv_heads": 1,
     "q_len": q, "kv_len": 256, "head_dim": hd, "dtype": dtype, "causal": causal, "steps": steps}
    for i, (kind, q, hd, dtype, causal, steps) in enumerate([
        ("prefill", 256, 16, "fp32", True, 1), ("decode", 1, 16, "fp32", False, 4),
        ("prefill", 256, 64, "bf16", True, 1), ("train", 256, 128, "fp16", False, 2),
        ("prefill", 256, 16, "fp32", False, 1)])]


@settings(FUZZ, max_examples=examples(30))
@given(data=st.integers(0, 1).flatmap(profile_json), named=st.booleans())
def test_fuzzed_profile_in_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data: bytes,
                                 named: bool) -> None:
    """A run with a fuzzed ``--profile``: rejected up front, or every job ends, once."""
    monkeypatch.setattr("scheduler.report.write_report", lambda out: None)  # plots: seconds
    (tmp_path / "p.json").write_bytes(data)
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in TRACE_ROWS))
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump(CPU_CLUSTER))
    out = tmp_path / "run"
    spec = f"cpu={tmp_path / 'p.json'}" if named else str(tmp_path / "p.json")
    code, text = run_cli("simulate", trace, "--cluster", cluster, "--profile", spec,
                         "--policy", "greedy", "--out", out, "--no-live-costs")
    if code != 1:
        assert_clean(code, text, None)
        if code == 2:
            return
    assert "internal error" not in text and "Traceback" not in text, text
    jobs = pq.read_table(out / "jobs.parquet").to_pylist()
    assert sorted(j["id"] for j in jobs) == sorted(r["id"] for r in TRACE_ROWS)
    for job in jobs:  # failed only with a reason
        assert job["status"] == "done" or job["reason"], job


# --- alias graphs: small ones load or fail cleanly, big ones are refused, none hangs ---------

ALIAS_PLACES = ["nowhere", "head_node_type", "resource", "node_config"]


@st.composite
def alias_graph(draw: st.DrawFn) -> tuple[str, int]:
    """(YAML text, nodes the aliases add, roughly): a laughs-style chain of ``depth``
    levels, each listing (or merging) the one before ``width`` times, kept in a node's
    free-form ``node_config`` and referenced from somewhere the checks read."""
    depth, width = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    merge, place = draw(st.booleans()), draw(st.sampled_from(ALIAS_PLACES))
    if merge:  # merge keys copy the pairs of every mapping they name
        levels = ["l0: &l0 {a: x, b: y}"] + [
            f"l{i}: &l{i} {{<<: [{', '.join([f'*l{i - 1}'] * width)}], k{i}: v}}"
            for i in range(1, depth)]
    else:
        levels = [f"l0: &l0 [{', '.join(['x'] * width)}]"] + [
            f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, depth)]
    top = f"*l{depth - 1}"
    config = yaml.safe_dump(CPU_CLUSTER, default_flow_style=None).replace(
        "node_config: {}", f"node_config: {{{', '.join(levels)}}}", 1)
    if place == "head_node_type":
        config = config.replace("head_node_type: head", f"head_node_type: {top}")
    elif place == "resource":
        config = config.replace("CPU: 4", f"CPU: {top}")
    elif place == "node_config":
        config = config.replace("node_config: {}", f"node_config: {{x: {top}}}", 1)
    return config, sum(width ** k for k in range(2, depth + 1))


@settings(FUZZ, max_examples=examples(40))
@given(case=alias_graph())
def test_fuzzed_alias_graphs(tmp_path: Path, case: tuple[str, int]) -> None:
    from scheduler.cluster import MAX_YAML_EXPANSION
    from tests.malformed import run_cli_guarded as bounded

    text, added = case
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    code, out = bounded("cluster", "show", path, "--json")
    assert_clean(code, out, path)
    event("alias bound hit" if "YAML alias" in out else "alias bound not hit")
    if added > 10 * MAX_YAML_EXPANSION:
        assert code == 2 and "YAML alias" in out, out[:300]
    elif added < MAX_YAML_EXPANSION // 10:
        assert "YAML alias" not in out, out[:300]  # small graphs are judged on their content
    assert code == 0 or len(out) < 400, out[:400]  # a message never echoes an expansion


@settings(FUZZ, max_examples=examples(20))
@given(n=st.integers(1, 300), place=st.sampled_from(["list", "map"]))
def test_fuzzed_alias_counts(tmp_path: Path, n: int, place: str) -> None:
    """Aliases that each expand to one scalar: refused past the count, however flat."""
    from scheduler.cluster import MAX_YAML_ALIASES
    from tests.malformed import run_cli_guarded as bounded

    refs = (f"[{', '.join(['*v'] * n)}]" if place == "list" else
            "{" + ", ".join(f"k{i}: *v" for i in range(n)) + "}")
    path = tmp_path / "cluster.yaml"
    path.write_text(f"v: &v 1\nrefs: {refs}\n" + yaml.safe_dump(CPU_CLUSTER))
    code, out = bounded("cluster", "show", path, "--json")
    assert_clean(code, out, path)
    assert ("more than" in out and "YAML aliases" in out) == (n > MAX_YAML_ALIASES), out[:300]


# --- non-regular and oversized config files ---------------------------------------------------

SPECIAL_KINDS = ["fifo", "zero", "null", "dir", "dangling", "huge"]
SPECIAL_USES = ["cluster show .yaml", "cluster show .csv", "profile show .json",
                "simulate --cluster .yaml", "simulate --cluster .csv", "simulate --profile .json"]
SPECIAL_SAYS = {"fifo": "is a FIFO", "zero": "is a device", "null": "is a device",
                "dir": "is a directory", "dangling": "no such file", "huge": "larger than"}


def _special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind in ("zero", "null", "dangling"):
        path.symlink_to({"zero": "/dev/zero", "null": "/dev/null"}.get(kind, path.parent / "no"))
    elif kind == "dir":
        path.mkdir()
    else:  # sparse: past every config cap, costing no disk
        with path.open("wb") as handle:
            handle.truncate((16 << 20) + 1)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX only")
@settings(FUZZ, max_examples=examples(36))
@given(kind=st.sampled_from(SPECIAL_KINDS), use=st.sampled_from(SPECIAL_USES),
       n=st.integers(0, 10**9))
def test_fuzzed_non_regular_config_files(tmp_path: Path, kind: str, use: str, n: int) -> None:
    from tests.malformed import run_cli_guarded as bounded

    command, suffix = use.rsplit(" ", 1)
    path = tmp_path / f"{kind}-{n}{suffix}"
    if path.exists() or path.is_symlink():
        return  # drawn before: tmp_path is shared across examples
    _special(path, kind)
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in TRACE_ROWS))
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump(CPU_CLUSTER))
    args: list[object] = {
        "cluster show": ["cluster", "show", path],
        "profile show": ["profile", "show", path],
        "simulate --cluster": ["simulate", trace, "--cluster", path],
        "simulate --profile": ["simulate", trace, "--cluster", cluster, "--profile", path],
    }[command]
    if args[0] == "simulate":
        args += ["--out", tmp_path / "run", "--no-live-costs"]
    code, out = bounded(*args)
    assert_clean(code, out, path, must_fail=True)
    assert SPECIAL_SAYS[kind] in out, out[:300]


# --- policy specs naming dangerous callables: refused, and none of them runs ------------------

# Each dangerous callable with the options that would make it do harm if it were called.
DANGEROUS: dict[str, list[str]] = {
    "os:system": ["command=touch {bait}/ran"], "os:popen": ["cmd=touch {bait}/ran"],
    "os:remove": ["path={bait}/victim"], "os:unlink": ["path={bait}/victim"],
    "os:rmdir": ["path={bait}/empty"], "os:mkdir": ["path={bait}/ran"],
    "os:makedirs": ["name={bait}/ran", "exist_ok=true"],
    "os:rename": ["src={bait}/victim", "dst={bait}/ran"], "os:chdir": ["path={bait}"],
    "os:truncate": ["path={bait}/victim", "length=0"], "os:kill": ["pid=0", "signal=0"],
    "os:execv": ["path=/bin/true", "argv=x"], "os:putenv": ["name=X", "value={bait}"],
    "shutil:rmtree": ["path={bait}"], "shutil:move": ["src={bait}/victim", "dst={bait}/ran"],
    "shutil:copy": ["src={bait}/victim", "dst={bait}/ran"],
    "shutil:copyfile": ["src={bait}/victim", "dst={bait}/ran"],
    "subprocess:getoutput": ["cmd=touch {bait}/ran"],
    "subprocess:Popen": ["args=touch {bait}/ran", "shell=true"],
    "subprocess:run": ["args=touch {bait}/ran", "shell=true"],
    "subprocess:call": ["args=touch {bait}/ran", "shell=true"],
    "subprocess:check_output": ["args=touch {bait}/ran", "shell=true"],
    "builtins:open": ["file={bait}/ran", "mode=w"], "io:open": ["file={bait}/ran", "mode=w"],
    "builtins:exec": ["source=open('{bait}/ran', 'w')"],
    "builtins:eval": ["source=open('{bait}/ran', 'w')"],
    "builtins:compile": ["source=x", "filename={bait}/ran", "mode=exec"],
    "builtins:__import__": ["name=this"], "builtins:print": ["sep=x"],
    "pathlib:Path": [], "tempfile:mkdtemp": ["dir={bait}"], "tempfile:mkstemp": ["dir={bait}"],
    "sys:exit": ["status=3"], "atexit:register": ["func=x"],
    "importlib:import_module": ["name=this"], "runpy:run_path": ["path_name={bait}/victim"],
}
# Events a call of one of them raises (PEP 578): seen, it ran.
RUNS = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.kill",
        "os.putenv", "os.chdir", "shutil.rmtree", "shutil.move", "shutil.copyfile", "os.remove",
        "os.rmdir", "os.mkdir", "os.rename", "os.truncate", "tempfile.mkdtemp",
        "tempfile.mkstemp", "open")
PROCESS = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.kill")
_SEEN: list[tuple[str, tuple[Any, ...]]] = []
_WATCH: list[str] = []  # the bait folder while a spec is loaded; empty otherwise


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Record a process start anywhere, or a file event touching the bait folder."""
    if not _WATCH or not event.startswith(RUNS):
        return
    if event.startswith(PROCESS) or any(_WATCH[0] in str(a) for a in args):
        _SEEN.append((event, args))


@functools.cache
def _hooked() -> bool:
    sys.addaudithook(_audit)  # once per process: hooks cannot be removed
    return True


@st.composite
def dangerous_spec(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A dangerous callable with its harmful options, some dropped, some noise added."""
    spec = draw(st.sampled_from(sorted(DANGEROUS)))
    options = [o for o in DANGEROUS[spec] if draw(st.integers(0, 5))]
    noise = ["x=1", "command=touch {bait}/ran", "path={bait}/victim", "shell=true", "mode=w"]
    options += draw(st.lists(st.sampled_from(noise), max_size=1))
    return spec, options


@settings(FUZZ, max_examples=examples(80))
@given(case=dangerous_spec())
def test_fuzzed_dangerous_policy_specs(tmp_path: Path, case: tuple[str, list[str]]) -> None:
    from tests.malformed import run_cli_guarded as bounded

    spec, options = case
    _hooked()
    bait = tmp_path / "bait"
    bait.mkdir(exist_ok=True)
    (bait / "victim").write_text("keep")
    (bait / "empty").mkdir(exist_ok=True)
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in TRACE_ROWS))
    cluster = tmp_path / "c.yaml"
    cluster.write_text(yaml.safe_dump(CPU_CLUSTER))
    args = [x for o in options for x in ("--policy-opt", o.format(bait=bait))]
    _SEEN.clear()
    _WATCH[:] = [str(bait)]
    try:
        code, out = bounded("simulate", trace, "--cluster", cluster, "--policy", spec, *args,
                            "--out", tmp_path / "run", "--no-live-costs")
    finally:
        _WATCH.clear()
    assert_clean(code, out, None, must_fail=True)
    assert "--policy" in out, out[:300]
    assert _SEEN == [], f"{spec} ran: {_SEEN[:3]}"
    assert sorted(p.name for p in bait.iterdir()) == ["empty", "victim"], "a side effect is left"
    assert (bait / "victim").read_text() == "keep"
