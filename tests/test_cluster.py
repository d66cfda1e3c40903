"""Cluster specs: cluster.yaml is a real Ray config, and bad input is located precisely."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from scheduler import cluster
from scheduler.cluster import (
    ClusterSpec,
    from_ray_nodes,
    load_alibaba_nodes,
    load_cluster,
    load_cluster_yaml,
    parse_node_counts,
)
from scheduler.errors import InputError

ALIBABA_NODES = Path(__file__).parents[2] / "shared" / "traces" / "alibaba_gpu_v2023_gpu_nodes.csv"
GiB = 1 << 30


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).parents[1]


def ray_schema() -> dict[str, Any]:
    """Ray's own cluster-launcher schema, from the installed package (ray is not imported)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None, "ray must be installed"
    assert spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


# --- cluster.yaml is a real Ray cluster-launcher config -------------------------------------


def test_cluster_yaml_validates_against_rays_schema(repo_root: Path) -> None:
    schema = ray_schema()
    config = yaml.safe_load((repo_root / "cluster.yaml").read_text(encoding="utf-8"))
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = [e.message for e in validator_cls(schema).iter_errors(config)]
    assert errors == []
    assert config["cluster_name"] == "attnsched"
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] == "us-west-2"
    assert config["head_node_type"] == "head"
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_cluster_yaml_passes_rays_launcher_validation(repo_root: Path) -> None:
    """What `ray up` runs before launching anything: defaults filled in, then validated."""
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = yaml.safe_load((repo_root / "cluster.yaml").read_text(encoding="utf-8"))
    prepared = util.prepare_config(config)
    util.validate_config(prepared)  # raises on any problem
    head_start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    assert any("$RAY_HEAD_IP:6379" in c for c in prepared["worker_start_ray_commands"])
    assert any("pip install -e ~/attnsched" in c for c in prepared["setup_commands"])


# --- load_cluster_yaml ------------------------------------------------------------------------


def test_cluster_yaml_spec(repo_root: Path) -> None:
    spec = load_cluster_yaml(repo_root / "cluster.yaml")
    by_name = {n.name: n for n in spec.nodes}
    assert list(by_name) == ["head", "gpu_h100-0", "cpu-0"]
    assert by_name["head"].devices == ()
    assert by_name["head"].cpus == 0

    gpu = by_name["gpu_h100-0"]
    assert (gpu.node_type, gpu.gpus, gpu.gpu_model, gpu.cpus) == ("gpu_h100", 8, "H100", 192)
    assert [d.id for d in gpu.devices] == [f"gpu_h100-0/gpu{i}" for i in range(8)]
    assert {(d.kind, d.model, d.profile, d.cpus) for d in gpu.devices} == {
        ("gpu", "H100", "h100", 1.0)}
    assert all(d.memory_bytes > 79e9 for d in gpu.devices)

    cpu = by_name["cpu-0"]
    assert len(cpu.devices) == 1
    dev = cpu.devices[0]
    assert (dev.id, dev.kind, dev.model, dev.profile, dev.cpus) == (
        "cpu-0/cpu", "cpu", "cpu", "cpu", 32.0)
    assert dev.memory_bytes == cpu.memory_bytes == 120 * GiB

    assert spec.gpus == 8
    assert len(spec.devices) == 9
    assert spec.device("gpu_h100-0/gpu3").node == "gpu_h100-0"
    with pytest.raises(KeyError, match="gpu_h100-0/gpu8"):
        spec.device("gpu_h100-0/gpu8")


def test_nodes_override_scales_a_type(repo_root: Path) -> None:
    spec = load_cluster(repo_root / "cluster.yaml", parse_node_counts(["gpu_h100=3"]))
    assert spec.gpus == 24
    assert {d.model for d in spec.devices if d.kind == "gpu"} == {"H100"}
    assert [n.name for n in spec.nodes if n.node_type == "gpu_h100"] == [
        "gpu_h100-0", "gpu_h100-1", "gpu_h100-2"]
    assert len({d.id for d in spec.devices}) == len(spec.devices) == 25

    none_cpu = load_cluster_yaml(repo_root / "cluster.yaml", {"cpu": 0})
    assert [d.kind for d in none_cpu.devices] == ["gpu"] * 8


def test_without_rays_schema_own_rules_still_apply(
        repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster, "_ray_schema", lambda: None)
    assert load_cluster_yaml(repo_root / "cluster.yaml").gpus == 8
    bad = tmp_path / "c.yaml"
    bad.write_text(GOOD.replace("GPU: 8", "GPU: 2.5"), encoding="utf-8")
    with pytest.raises(InputError, match=r"c\.yaml:11: available_node_types\.gpu\.resources\.GPU"):
        load_cluster_yaml(bad)


# --- bad cluster files ------------------------------------------------------------------------

GOOD = textwrap.dedent("""\
    cluster_name: t
    max_workers: 2
    provider: {type: aws, region: us-west-2}
    head_node_type: head
    available_node_types:
      head:
        resources: {CPU: 0}
        node_config: {InstanceType: m7i.2xlarge}
      gpu:
        resources:
          GPU: 8
          CPU: 8
        node_config: {InstanceType: p5.48xlarge}
        min_workers: 1
        max_workers: 2
    """)


def test_good_fixture_loads(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD, encoding="utf-8")
    spec = load_cluster_yaml(path)
    # No accelerator_type resource and no matching profile: model unknown, memory 0.
    assert {(d.model, d.memory_bytes, d.profile) for d in spec.devices} == {("GPU", 0, None)}
    assert spec.gpus == 8


BAD_FILES: list[tuple[str, str | bytes, dict[str, int] | None, int | None, str | None]] = [
    # id, content, --nodes, expected line, expected field
    ("gpu-wrong-type", GOOD.replace("GPU: 8", "GPU: eight"), None, 11,
     "available_node_types.gpu.resources.GPU"),
    ("gpu-fraction", GOOD.replace("GPU: 8", "GPU: 0.5"), None, 11,
     "available_node_types.gpu.resources.GPU"),
    ("cpu-negative", GOOD.replace("CPU: 8", "CPU: -1"), None, 12,
     "available_node_types.gpu.resources.CPU"),
    ("unknown-head-type", GOOD.replace("head_node_type: head", "head_node_type: nope"), None, 4,
     "head_node_type"),
    ("min-over-max", GOOD.replace("min_workers: 1", "min_workers: 3"), None, 14,
     "available_node_types.gpu.min_workers"),
    ("no-node-types", GOOD.split("available_node_types:")[0] + "available_node_types: {}\n",
     None, 5, "available_node_types"),
    # Ray's schema (not our rules) catches these; the line falls back to the nearest parent.
    ("missing-node-config", GOOD.replace("    node_config: {InstanceType: p5.48xlarge}\n", ""),
     None, 9, "available_node_types.gpu.node_config"),
    ("missing-provider", GOOD.replace("provider: {type: aws, region: us-west-2}\n", ""), None, 1,
     "provider"),
    ("yaml-syntax", GOOD.replace("node_config: {InstanceType: p5.48xlarge}",
                                 "node_config: {InstanceType: [p5"), None, 14, None),
    ("top-level-list", "- a\n- b\n", None, 1, None),
    ("empty", "", None, None, None),
    ("comments-only", "# nothing here\n", None, None, None),
    ("binary-garbage", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", None, 1, None),
    ("nul-bytes", "cluster_name: t\n\x00\x01\n", None, 2, None),
    ("unknown-nodes-type", GOOD, {"gpu_h99": 3}, None, "--nodes"),
    ("negative-nodes-count", GOOD, {"gpu": -1}, None, "--nodes"),
]


@pytest.mark.parametrize(("content", "nodes", "line", "field"),
                         [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_bad_cluster_files_are_located(tmp_path: Path, content: str | bytes,
                                       nodes: dict[str, int] | None, line: int | None,
                                       field: str | None) -> None:
    path = tmp_path / "bad-cluster.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_cluster_yaml(path, nodes)
    err, text = info.value, str(info.value)
    assert err.path == str(path)
    assert "bad-cluster.yaml" in text
    assert err.line == line
    if line is not None:
        assert f"bad-cluster.yaml:{line}" in text
    assert err.field == field
    if field is not None:
        assert field in text
    assert "\n" not in text
    assert err.reason


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nowhere\.yaml: no such file"):
        load_cluster(tmp_path / "nowhere.yaml")
    other = tmp_path / "cluster.toml"
    other.write_text("x = 1\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"cluster\.toml: .*\.yaml/\.yml .*\.csv"):
        load_cluster(other)
    with pytest.raises(InputError, match="--nodes"):
        load_cluster(tmp_path / "nodes.csv", {"T4": 1})


# --- --nodes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("items", "expected"), [
    ([], {}),
    (["gpu_h100=3"], {"gpu_h100": 3}),
    (["gpu_h100=3", "cpu=0"], {"gpu_h100": 3, "cpu": 0}),
    (["gpu_h100=3,cpu=2"], {"gpu_h100": 3, "cpu": 2}),
    ([" cpu = 100000 "], {"cpu": 100000}),
])
def test_parse_node_counts(items: list[str], expected: dict[str, int]) -> None:
    assert parse_node_counts(items) == expected


@pytest.mark.parametrize("item", ["gpu_h100", "gpu_h100=", "=3", "gpu_h100=-1", "gpu_h100=1.5",
                                  "gpu_h100=three", "gpu_h100=100001", "a=1,", "a=1,a=2", "a=٣"])
def test_parse_node_counts_rejects(item: str) -> None:
    with pytest.raises(InputError) as info:
        parse_node_counts([item])
    assert info.value.field == "--nodes"
    assert "TYPE=N" in str(info.value) or "twice" in str(info.value)


# --- Alibaba GPU v2023 node list --------------------------------------------------------------


def test_alibaba_node_list() -> None:
    if not ALIBABA_NODES.exists():
        pytest.skip(f"{ALIBABA_NODES} not present")
    spec = load_cluster(ALIBABA_NODES)
    assert len(spec.nodes) == 1213
    assert spec.gpus == 6212
    by_model: dict[str, int] = {}
    for node in spec.nodes:
        by_model[node.node_type] = by_model.get(node.node_type, 0) + 1
    assert by_model == {"G2": 549, "T4": 404, "P100": 134, "V100M16": 55, "G3": 39,
                        "V100M32": 30, "A10": 2}
    node = spec.nodes[0]
    assert (node.name, node.cpus, node.memory_bytes, node.gpus) == (
        "openb-node-0000", 64.0, 262144 << 20, 2)
    memory = {d.model: d.memory_bytes for d in spec.devices}
    assert memory == {"P100": 16 * GiB, "T4": 16 * GiB, "V100M16": 16 * GiB,
                      "V100M32": 32 * GiB, "A10": 24 * GiB, "G2": 0, "G3": 0}
    assert {d.profile for d in spec.devices} == {None}


HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"


@pytest.mark.parametrize(("text", "line", "field"), [
    (HEADER + "n0,64000,262144,2,P100\nn1,lots,262144,2,P100\n", 3, "cpu_milli"),
    (HEADER + "n0,64000,-5,2,P100\n", 2, "memory_mib"),
    (HEADER + "n0,64000,262144,2.5,P100\n", 2, "gpu"),
    (HEADER + "n0,64000,262144,2,\n", 2, "model"),
    (HEADER + "n0,64000,262144,2,P100\nn0,64000,262144,2,P100\n", 3, "sn"),
    (HEADER + "n0,64000,262144,2\n", 2, None),
    ("sn,cpu_milli,memory_mib,model\nn0,1,1,T4\n", 1, "gpu"),
    (HEADER, None, None),
    ("", None, None),
    ("\n\n", 1, None),
])
def test_bad_alibaba_rows(tmp_path: Path, text: str, line: int | None,
                          field: str | None) -> None:
    path = tmp_path / "nodes.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_alibaba_nodes(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), line, field)
    assert "nodes.csv" in str(err)


def test_alibaba_cpu_only_node(tmp_path: Path) -> None:
    path = tmp_path / "nodes.csv"
    path.write_text(HEADER + "c0,32000,1024,0,\n", encoding="utf-8")
    (node,) = load_alibaba_nodes(path).nodes
    assert [(d.id, d.kind, d.cpus, d.memory_bytes) for d in node.devices] == [
        ("c0/cpu", "cpu", 32.0, 1 << 30)]


# --- a live cluster, as ray.nodes() reports it --------------------------------------------------


def test_from_ray_nodes_skips_dead_nodes() -> None:
    node_id = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c"
    alive = {
        "NodeID": node_id,
        "Alive": True,
        "NodeManagerAddress": "10.0.0.7",
        "Resources": {"CPU": 192.0, "GPU": 8.0, "memory": 1.9e12, "object_store_memory": 2e11,
                      "accelerator_type:H100": 1.0, "node:10.0.0.7": 1.0},
    }
    dead = {**alive, "NodeID": "ffff" + node_id[4:], "Alive": False,
            "NodeManagerAddress": "10.0.0.8"}
    spec = from_ray_nodes([dead, alive])
    assert spec.source == "ray.nodes()"
    (node,) = spec.nodes
    assert (node.name, node.node_type, node.address, node.cpus, node.gpus) == (
        "a1b2c3d4", "H100", "10.0.0.7", 192.0, 8)
    assert [d.id for d in node.devices] == [f"a1b2c3d4/gpu{i}" for i in range(8)]
    assert {(d.model, d.profile) for d in node.devices} == {("H100", "h100")}
    assert all(d.memory_bytes > 79e9 for d in node.devices)


def test_from_ray_nodes_names_the_head_and_orders_deterministically() -> None:
    head = {"NodeID": "99" * 28, "Alive": True, "NodeManagerAddress": "127.0.0.1",
            "Resources": {"CPU": 2.0, "memory": 4e9, "node:__internal_head__": 1.0}}
    worker = {"NodeID": "11" * 28, "Alive": True, "NodeManagerAddress": "127.0.0.2",
              "Resources": {"CPU": 4.0, "memory": 8e9}}
    spec = from_ray_nodes([worker, head])
    assert spec == from_ray_nodes([head, worker])
    assert [d.id for d in spec.devices] == ["head/cpu", "11111111/cpu"]
    assert spec.device("head/cpu").cpus == 2.0
    with pytest.raises(InputError, match=r"Resources\.GPU"):
        from_ray_nodes([{**worker, "Resources": {"GPU": "eight"}}])


def test_cluster_spec_rejects_duplicate_names() -> None:
    spec = from_ray_nodes([{"NodeID": "ab" * 28, "Alive": True, "Resources": {"CPU": 1.0}}])
    with pytest.raises(InputError, match="unique"):
        ClusterSpec(spec.nodes * 2, "test")


def test_core_loads_clusters_without_ray_torch_or_pynvml(repo_root: Path) -> None:
    code = ("import sys; sys.modules.update(torch=None, pynvml=None)\n"
            "from scheduler.cluster import load_cluster\n"
            "assert load_cluster('cluster.yaml').gpus == 8\n"
            "assert 'ray' not in sys.modules, 'scheduler.cluster imported ray'\n")
    subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=True, timeout=60)


@pytest.mark.parametrize(("cpus", "asked", "workers", "threads"), [
    (2.0, 0, 2, 1.0),  # by default one single-threaded worker per core
    (40.0, 0, 16, 2.5),  # at most 16 by default; the cores shared out
    (1.0, 0, 1, 1.0), (2.0, 1, 1, 2.0),  # one worker owns the node
    (2.0, 4, 1, 2.0),  # asked for more workers than cores: one
    (32.0, 4, 4, 8.0)])
def test_a_gpu_less_node_runs_cpu_workers_sized_to_its_cores(
        cpus: float, asked: int, workers: int, threads: float) -> None:
    node = {"NodeID": "ab" * 28, "Alive": True, "Resources": {"CPU": cpus, "memory": 8e9}}
    spec = cluster.for_live_run(cluster.from_ray_nodes([node]), emulated_gpus=False,
                                cpu_workers=asked)
    devices = spec.devices
    assert len(devices) == workers and {d.cpus for d in devices} == {threads}
    assert sum(d.memory_bytes for d in devices) <= 8e9
    assert len({d.id for d in devices}) == workers
