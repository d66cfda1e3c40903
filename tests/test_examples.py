"""Examples are documentation that runs: each must keep working."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_docs_commands import check_command_exists, shell_commands


def test_cost_of_a_trace_example_runs() -> None:
    result = subprocess.run([sys.executable, "examples/cost_of_a_trace.py", "--model", "tiny"],
                            cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1000 jobs")
    assert "cpu/flash" in result.stdout


def run_example(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            check=False, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_replay_azure_example_runs_the_trace_simulated_and_live(shared_trace,
                                                                tmp_path: Path) -> None:
    """The example's one live run: 60 jobs on a local Ray, the rest in the simulator."""
    shared_trace("azure_llm_2023_conv.csv")
    out = run_example("examples/replay_azure.py", "--sim-limit", "1000", "--limit", "60",
                      "--out", str(tmp_path)).stdout
    assert "simulated: 1,000/1,000 jobs" in out
    assert "live     : 60/60 jobs" in out
    for mode in ("sim", "live"):
        summary = json.loads((tmp_path / mode / "summary.json").read_text(encoding="utf-8"))
        assert summary["mode"] == mode and summary["policy"] == "adaptive"
    assert (tmp_path / "report" / "report.html").stat().st_size > 10_000


def test_sweep_load_example_writes_a_table_and_a_plot(shared_trace, tmp_path: Path) -> None:
    shared_trace("azure_llm_2023_conv.csv")
    out = run_example("examples/sweep_load.py", "--limit", "300", "--loads", "0.5,0.9",
                      "--out", str(tmp_path)).stdout
    with (tmp_path / "sweep.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["policy"], float(r["load"])) for r in rows] == [
        (p, load) for p in ("static", "greedy", "adaptive") for load in (0.5, 0.9)]
    assert all(r["jobs_completed"] == r["jobs_total"] == "300" for r in rows)
    assert all(float(r["jct_mean"]) > 0 for r in rows)
    assert (tmp_path / "mean_jct.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean_jct.png" in out


PLUGIN = REPO / "examples" / "plugin_package"


def test_plugin_package_declares_the_entry_point_its_readme_uses() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((PLUGIN / "pyproject.toml").read_text(encoding="utf-8"))
    points = project["project"]["entry-points"]["attnsched.policies"]
    assert points == {"tenant-rr": "attnsched_tenant_rr:TenantRoundRobin"}
    readme = (PLUGIN / "README.md").read_text(encoding="utf-8")
    assert "pip install -e examples/plugin_package" in readme
    assert "--policy tenant-rr" in readme


def test_plugin_package_installs_and_runs_by_name(shared_trace, tmp_path: Path) -> None:
    """``pip install`` into a folder of its own (the shared .venv stays as it is), found by name."""
    azure = shared_trace("azure_llm_2023_conv.csv")
    source = shutil.copytree(PLUGIN, tmp_path / "src")  # the build writes next to its source
    target = tmp_path / "site"
    run_example("-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                "--target", str(target), str(source))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(REPO)])}
    listed = run_example("-m", "scheduler.cli", "policies", env=env).stdout
    assert "tenant-rr" in listed and "plugin from attnsched-tenant-rr 0.1.0" in listed
    assert "tenants take turns" in listed  # the package's own description, not imported
    ran = run_example("-m", "scheduler.cli", "simulate", str(azure), "--policy", "tenant-rr",
                      "--policy-opt", "lookahead=4", "--limit", "300", "--out",
                      str(tmp_path / "run"), env=env)
    assert "300/300 jobs done, 0 failed" in " ".join(ran.stdout.split())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert summary["policy"] == "tenant-rr" and summary["jobs_completed"] == 300
    decisions = (tmp_path / "run" / "decisions.jsonl").read_text(encoding="utf-8")
    assert "'s turn" in decisions  # the plugin's own reasons, so its code decided


CLUSTER_EXAMPLE = REPO / "examples" / "cluster"


def test_cluster_example_script_is_valid_bash() -> None:
    result = subprocess.run(["bash", "-n", str(CLUSTER_EXAMPLE / "run_on_cluster.sh")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def cluster_example_commands() -> list[list[str]]:
    words = []
    for path in (CLUSTER_EXAMPLE / "run_on_cluster.sh", CLUSTER_EXAMPLE / "README.md"):
        words += shell_commands(path.read_text(encoding="utf-8"), ("ray", "attnsched"),
                                markdown=path.suffix == ".md")
    return words


def test_cluster_example_uses_ray_up_and_job_submit() -> None:
    seen = {" ".join(c[:3]) for c in cluster_example_commands()}
    assert {"ray up -y", "ray job submit", "ray down -y"} <= seen
    submitted = [c for c in cluster_example_commands() if c[:2] == ["attnsched", "run"]]
    assert submitted and all("--address" in c and "auto" in c for c in submitted)


@pytest.mark.parametrize("words", cluster_example_commands(), ids=lambda w: " ".join(w[:3]))
def test_every_cluster_example_command_and_flag_exists(words: list[str]) -> None:
    check_command_exists(words)
