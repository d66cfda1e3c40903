"""Issue 20, points 2-4 on the config side: policy specs that call nothing but a policy,
YAML alias bombs refused before anything expands them, and non-regular or oversized
cluster files, node lists and profiles refused at once.

Every CLI call that could hang on a regression runs in a thread joined with a
timeout, so a regression fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import tracemalloc
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies import base
from scheduler.cluster import MAX_FILE_BYTES, load_cluster
from scheduler.errors import InputError
from tests.conftest import REPO
from tests.malformed import GUARD_S, run_cli
from tests.malformed import run_cli_guarded as bounded


def refused(code: int, text: str, path: Path | None) -> None:
    """Exit 2 with one line naming ``path`` (any location when None); never a crash."""
    assert code == 2, (code, text[:500])
    assert "Traceback" not in text and "internal error" not in text, text[:500]
    assert len(text.strip().splitlines()) == 1, text[:500]
    assert text.startswith(f"attnsched: error: {path or ''}"), text[:500]


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "t.jsonl"
    code, text = run_cli("trace", "generate", "-o", path, "--jobs", "5", "--seed", "1",
                         "--model", "tiny")
    assert code == 0, text
    return path


# --- 2: a policy spec never calls an arbitrary callable ---------------------------------------


def marker_plugin(tmp_path: Path, marker: Path) -> Path:
    """A plugin file whose function (not a class) would leave ``marker`` if called."""
    path = tmp_path / "evil.py"
    path.write_text(textwrap.dedent(f"""
        import pathlib
        def make(**options):
            pathlib.Path({str(marker)!r}).write_text(repr(options))
        class Meta(type):
            def __getattr__(cls, name):  # looked up dynamically, it would run
                pathlib.Path({str(marker)!r}).touch()
                return lambda self, view: []
        class Sneaky(metaclass=Meta):
            pass
        class NoDecide:
            def __init__(self, **options):
                pathlib.Path({str(marker)!r}).touch()
    """))
    return path


@pytest.mark.parametrize("spec", ["os:system", "builtins:eval", "subprocess:run",
                                  "subprocess:Popen", "file:make", "file:Sneaky",
                                  "file:NoDecide"])
def test_a_policy_spec_naming_a_non_policy_runs_nothing(trace: Path, tmp_path: Path,
                                                       spec: str) -> None:
    marker = tmp_path / "marker"
    if spec.startswith("file:"):
        spec = f"{marker_plugin(tmp_path, marker)}:{spec[5:]}"
    option = {"os:system": f"command=touch {marker}", "builtins:eval": "source=1",
              "subprocess:Popen": f"args=touch {marker}"}.get(spec, "command=x")
    code, text = bounded("simulate", trace, "--cluster", REPO / "cluster.yaml", "--policy", spec,
                         "--policy-opt", option, "--out", tmp_path / "r", "--no-live-costs")
    refused(code, text, None)
    assert "--policy" in text and "is not a policy" in text, text
    assert not marker.exists(), f"{spec} was called"


def test_an_entry_point_to_a_function_runs_nothing(trace: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "marker"
    marker_plugin(tmp_path, marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [EntryPoint("evil-system", "os:system", base.ENTRY_POINT_GROUP),
              EntryPoint("evil-func", "evil:make", base.ENTRY_POINT_GROUP)]
    monkeypatch.setattr(base, "entry_points", lambda group: points)
    for name, opt in (("evil-system", f"command=touch {marker}"), ("evil-func", "x=1")):
        code, text = bounded("simulate", trace, "--cluster", REPO / "cluster.yaml", "--policy",
                             name, "--policy-opt", opt, "--out", tmp_path / "r",
                             "--no-live-costs")
        refused(code, text, None)
        assert "is not a policy" in text, text
        assert not marker.exists(), f"entry point {name} was called"


def test_the_python_api_refuses_a_non_policy_uncalled(trace: Path, tmp_path: Path) -> None:
    from scheduler.api import simulate

    marker = tmp_path / "marker"
    with pytest.raises(InputError, match="is not a policy") as info:
        simulate(trace, "os:system", policy_options={"command": f"touch {marker}"},
                 cluster=REPO / "cluster.yaml", live_costs=False)
    assert info.value.field == "--policy"
    assert not marker.exists()


def test_real_policies_still_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in base._BUILTINS:
        assert callable(base.load_policy(name).decide)
    custom = base.load_policy(f"{REPO / 'examples' / 'custom_policy.py'}:ShortestJobFirst",
                              {"lookahead": "4"})
    assert custom.name == "sjf-example" and custom.lookahead == 4  # type: ignore[attr-defined]
    monkeypatch.syspath_prepend(str(REPO / "examples" / "plugin_package"))
    point = EntryPoint("tenant-rr", "attnsched_tenant_rr:TenantRoundRobin",
                       base.ENTRY_POINT_GROUP)
    monkeypatch.setattr(base, "entry_points", lambda group: [point])
    assert base.load_policy("tenant-rr").name == "tenant-rr"


def test_a_marked_factory_builds_a_policy_and_an_unmarked_one_is_refused(
        tmp_path: Path) -> None:
    plugin = tmp_path / "factories.py"
    plugin.write_text(textwrap.dedent("""
        from policies.base import policy_factory
        from policies.greedy import GreedyPolicy
        @policy_factory
        def small(max_batch: int = 2):
            return GreedyPolicy(max_batch=max_batch)
        def unmarked(max_batch: int = 2):
            return GreedyPolicy(max_batch=max_batch)
    """))
    built = base.load_policy(f"{plugin}:small", {"max_batch": "3"})
    assert built.max_batch == 3  # type: ignore[attr-defined]
    with pytest.raises(InputError, match="marked @policy_factory"):
        base.load_policy(f"{plugin}:unmarked")
    with pytest.raises(TypeError):
        base.policy_factory(os.system)  # a builtin cannot be blessed into a factory


# --- 3: YAML alias bombs ----------------------------------------------------------------------


def laughs(levels: int = 9, width: int = 9) -> str:
    """The classic "billion laughs": each level lists the one before ``width`` times."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def small_cluster() -> dict[str, Any]:
    return {"cluster_name": "c", "max_workers": 1,
            "provider": {"type": "local", "head_ip": "127.0.0.1"}, "auth": {"ssh_user": "u"},
            "head_node_type": "head",
            "available_node_types": {
                "head": {"min_workers": 0, "max_workers": 0, "resources": {"CPU": 0},
                         "node_config": {}},
                "cpu": {"min_workers": 1, "max_workers": 1, "node_config": {},
                        "resources": {"CPU": 4, "memory": 2**34}}}}


# Where a bomb is referenced: the places today's messages repr and Ray's schema walks.
BOMBS = {
    "alone": laughs(),
    "head-type": laughs() + "head_node_type: *l8\navailable_node_types: {a: {}}\n",
    "resource": laughs() + yaml.safe_dump(small_cluster()).replace("CPU: 4", "CPU: *l8"),
    "node-config": laughs() + yaml.safe_dump(small_cluster()).replace(
        "node_config: {}\n    resources:\n      CPU: 4", "node_config: *l8\n    resources:\n"
                                                        "      CPU: 4"),
    "merge": laughs(6) + "m0: &m0 {a: 1, b: 2}\n" + "".join(
        f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}\n" for i in range(1, 9)),
    "recursive": "a: &a [1, *a]\n",
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_an_alias_bomb_is_refused_at_once(trace: Path, tmp_path: Path, bomb: str) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(BOMBS[bomb])
    for args in (("cluster", "show", path), ("simulate", trace, "--cluster", path,
                                              "--out", tmp_path / "r", "--no-live-costs")):
        code, text = bounded(*args)
        refused(code, text, path)
        assert "YAML alias" in text, text
        assert len(text) < 300, text


def test_loading_a_bomb_stays_small_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(BOMBS["resource"])
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_cluster(path)
        except BaseException as e:  # handed over to the test's own thread
            errors.append(e)

    tracemalloc.start()
    try:
        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        worker.join(GUARD_S)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not worker.is_alive(), "loading the bomb hangs"
    assert isinstance(errors[0], InputError) and "YAML alias" in str(errors[0]), errors
    assert peak < 50 << 20, f"peak {peak:,} bytes"


def test_ordinary_anchors_and_merge_keys_still_load(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent("""
        cluster_name: anchors
        max_workers: 4
        provider: {type: local, head_ip: 127.0.0.1}
        auth: {ssh_user: u}
        head_node_type: head
        available_node_types:
          head: {min_workers: 0, max_workers: 0, resources: {CPU: 0}, node_config: {}}
          cpu_a: &defaults
            min_workers: 1
            max_workers: 2
            node_config: {}
            resources: &cpu {CPU: 4, memory: 17179869184}
          cpu_b:
            <<: *defaults
            min_workers: 2
            resources: *cpu
    """))
    spec = load_cluster(path)
    assert [n.name for n in spec.nodes] == ["head", "cpu_a-0", "cpu_b-0", "cpu_b-1"]
    assert all(n.cpus == 4 for n in spec.nodes[1:])


def test_an_error_in_a_big_file_quotes_a_clipped_value(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    config = small_cluster()
    config["head_node_type"] = "h" * 100_000
    config["available_node_types"]["cpu"]["resources"]["CPU"] = ["x" * 1000] * 200
    path.write_text(yaml.safe_dump(config))
    code, text = bounded("cluster", "show", path)
    refused(code, text, path)
    assert len(text) < 400, text


# --- 4: non-regular and oversized config files ------------------------------------------------


def special(tmp_path: Path, kind: str, name: str) -> Path:
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    else:  # sparse: a cap is checked while reading, so the size costs no disk
        with path.open("wb") as handle:
            handle.truncate(MAX_FILE_BYTES + 1)
    return path


@pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")
@pytest.mark.parametrize("kind", ["fifo", "zero", "huge"])
@pytest.mark.parametrize("where", ["cluster show yaml", "cluster show csv", "simulate cluster",
                                   "simulate profile", "profile show"])
def test_a_special_config_file_exits_2_at_once(trace: Path, tmp_path: Path, kind: str,
                                               where: str) -> None:
    suffix = {"cluster show csv": ".csv", "simulate profile": ".json",
              "profile show": ".json"}.get(where, ".yaml")
    path = special(tmp_path, kind, f"input{suffix}")
    args: tuple[object, ...] = {
        "cluster show yaml": ("cluster", "show", path),
        "cluster show csv": ("cluster", "show", path),
        "simulate cluster": ("simulate", trace, "--cluster", path),
        "simulate profile": ("simulate", trace, "--cluster", REPO / "cluster.yaml",
                             "--profile", path),
        "profile show": ("profile", "show", path),
    }[where]
    code, text = bounded(*args, "--out", tmp_path / "r", "--no-live-costs") if (
        args[0] == "simulate") else bounded(*args)
    refused(code, text, path)
    expected = {"fifo": "is a FIFO", "zero": "is a device", "huge": "larger than"}[kind]
    assert expected in text, text
