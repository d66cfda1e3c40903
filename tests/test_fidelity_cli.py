"""``attnsched fidelity`` end to end on a local Ray, and its input checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_live_cli import write_trace


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, num_gpus=2,
             include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


def test_fidelity_runs_each_policy_both_ways(cli, local_ray, tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.jsonl", 24)
    out = tmp_path / "fid"
    code, text, err = cli("fidelity", trace, "--policies", "static,adaptive", "--model", "tiny",
                          "--speed", "2", "--repeats", "2", "--out", out)
    assert code == 0, err
    result = json.loads((out / "fidelity.json").read_text())
    assert set(result["policies"]) == {"static", "adaptive"}
    for name, entry in result["policies"].items():
        assert entry["live"]["mode"] == "live" and entry["sim"]["mode"] == "sim"
        assert entry["live"]["jobs_completed"] == entry["sim"]["jobs_completed"] == 24
        assert set(entry["error"]) == {"jct_mean", "jct_p50", "jct_p99", "makespan",
                                       "throughput"}
        assert all(e is None or e >= 0 for e in entry["error"].values())
        for mode in ("live", "live-2", "sim"):
            assert (out / name / mode / "jobs.parquet").exists()
        assert entry["live"]["repeats"] == 2
    assert isinstance(result["same_ranking"], bool)
    assert result["speed"] == 2 and result["repeats"] == 2
    assert (out / "plots" / "fidelity_jct.png").stat().st_size > 1000
    assert "ranking by mean JCT" in text


@pytest.mark.parametrize(("args", "field"), [
    (["--policies", "static,static"], "--policies"),
    (["--policies", "nosuch"], "nosuch"),
    (["--profile", "missing.json"], "missing.json"),
    (["--speed", "0"], "--speed"),
])
def test_bad_input_is_one_line_before_ray_starts(cli, tmp_path: Path, args: list[str],
                                                 field: str) -> None:
    trace = write_trace(tmp_path / "t.jsonl", 4)
    code, _, err = cli("fidelity", trace, *args, "--out", tmp_path / "o")
    assert code == 2
    assert field in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
