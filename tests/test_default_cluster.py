"""A run from a folder of the user's own needs no --cluster: ./cluster.yaml where there is
one, else the cluster shipped with the package (the repository's cluster.yaml)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from scheduler.cluster import PACKAGED_CLUSTER, cluster_path


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """A fresh working folder outside the checkout, holding a small generated trace."""
    folder = tmp_path / "mine"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _trace(cli, folder: Path) -> Path:
    trace = folder / "t.parquet"
    assert cli("trace", "generate", "-o", trace, "--jobs", "40", "--seed", "2")[0] == 0
    return trace


def test_the_packaged_cluster_is_the_repositorys(repo) -> None:
    assert PACKAGED_CLUSTER.read_bytes() == (repo / "cluster.yaml").read_bytes()


def test_simulate_without_a_cluster_uses_the_packaged_one(cli, elsewhere) -> None:
    import pyarrow.parquet as pq

    code, _, err = cli("simulate", _trace(cli, elsewhere), "--out", elsewhere / "r")
    assert code == 0, err
    summary = json.loads((elsewhere / "r" / "summary.json").read_text())
    assert Path(summary["cluster"]) == PACKAGED_CLUSTER
    devices = pq.read_table(elsewhere / "r" / "jobs.parquet", columns=["device"]).column(0)
    assert len(devices) == 40
    assert any(d.startswith("gpu_h100") for d in devices.to_pylist())


def test_a_cluster_yaml_in_the_folder_comes_first(cli, elsewhere, repo) -> None:
    shutil.copy(repo / "cluster.yaml", elsewhere / "cluster.yaml")
    assert cluster_path(None) == Path("cluster.yaml")
    code, _, err = cli("simulate", _trace(cli, elsewhere), "--nodes", "gpu_h100=2", "--out",
                       elsewhere / "r")
    assert code == 0, err
    summary = json.loads((elsewhere / "r" / "summary.json").read_text())
    assert summary["cluster"] == "cluster.yaml"
    assert summary["devices"] == 2 * 8 + 1  # the folder's file, sized by --nodes


def test_a_named_cluster_is_used_as_named(elsewhere) -> None:
    assert cluster_path("nodes.csv") == Path("nodes.csv")
    assert cluster_path(None) == PACKAGED_CLUSTER


def test_the_python_api_and_cluster_show_need_no_cluster(cli, elsewhere) -> None:
    from scheduler.api import simulate

    result = simulate(_trace(cli, elsewhere), "greedy")
    assert result.summary["jobs_completed"] == 40
    code, text, err = cli("cluster", "show", "--json")
    assert code == 0, err
    assert json.loads(text)["source"] == str(PACKAGED_CLUSTER)
