"""``attnsched fidelity`` end to end on a local Ray, and its input checks."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from scheduler import fidelity
from tests import rayenv
from tests.test_live_cli import write_trace

SHIPPED_CPU = Path(__file__).resolve().parents[1] / "scheduler" / "profile_data" / "cpu.json"


@pytest.fixture(scope="module")
def local_ray():
    with rayenv.local_ray(gpus=2) as ray:
        yield ray


def test_fidelity_runs_each_policy_both_ways(cli, local_ray, tmp_path: Path) -> None:
    trace = write_trace(tmp_path / "t.jsonl", 24)
    out = tmp_path / "fid"
    code, text, err = cli("fidelity", trace, "--policies", "static,adaptive", "--model", "tiny",
                          "--speed", "2", "--repeats", "2", "--retime", "--out", out)
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
        rounds = [json.loads((out / name / m / "summary.json").read_text())
                  for m in ("live", "live-2")]
        assert entry["live_spread"] == fidelity.live_spread(rounds)
        assert entry["live_spread"]["jct_mean"] == pytest.approx(
            abs(rounds[0]["jct_mean"] - rounds[1]["jct_mean"])
            / (rounds[0]["jct_mean"] + rounds[1]["jct_mean"]))
    assert "round spread" in text
    assert result["sensitivity_slow"] == 1.05
    for entry in result["policies"].values():
        moved = entry["sensitivity"]["jct_mean"]
        assert moved is not None and moved > 0  # slower devices, longer jobs
    assert "5% slower would move the simulated mean JCT" in text
    assert isinstance(result["same_ranking"], bool)
    assert result["speed"] == 2 and result["repeats"] == 2
    assert (out / "plots" / "fidelity_jct.png").stat().st_size > 1000
    assert "ranking by mean JCT" in text
    # the shipped profile has no replay to re-time: said so, used as given, simulated once
    assert "no profile here was calibrated with a live replay" in err
    assert result["retimed"] is None and "as_given" not in result
    assert not (out / "profiles").exists()
    assert not (out / "static" / "sim-as-given").exists()
    assert [set(r) for r in result["rounds"]] == [{"static", "adaptive"}] * 2


def test_fidelity_retimes_a_replay_calibrated_profile_before_the_runs(
        cli, local_ray, tmp_path: Path, monkeypatch) -> None:
    from workers import calibrate_live

    monkeypatch.setattr(calibrate_live, "retimed",
                        functools.partial(calibrate_live.retimed, jobs=40))
    data = json.loads(SHIPPED_CPU.read_text())
    data["reference"] = {**data.get("reference", {}), "live_replay": {"jobs": 600}}
    data["node_sharing"] = [[1, 1.0], [2, 0.8]]
    given = tmp_path / "cpu.json"
    given.write_text(json.dumps(data))
    trace = write_trace(tmp_path / "t.jsonl", 16)
    out = tmp_path / "fid"
    code, text, err = cli("fidelity", trace, "--policies", "static,greedy", "--model", "tiny",
                          "--speed", "2", "--repeats", "2", "--profile", given, "--retime",
                          "--out", out)
    assert code == 0, err
    result = json.loads((out / "fidelity.json").read_text())
    assert result["retimed"] == "cpu"
    # the given profile with the replays' levels and round trip folded in; sharing kept
    redone = json.loads((out / "profiles" / "retimed.json").read_text())
    replay = redone["reference"]["retimed"]
    assert replay["jobs"] == 40 and replay["rounds"] == len(replay["per_round"]) == 3
    assert redone["reference"]["live_replay"] == data["reference"]["live_replay"]
    assert redone["sdpa"] == data["sdpa"]  # the device's rates are the calibration's
    assert redone["node_sharing"] == data["node_sharing"]
    assert replay["slowdown_per_busy_peer"] == pytest.approx(0.25)  # 1 / 0.8 - 1, kept
    assert redone["batch_call_us"] == pytest.approx(max(
        data["actor_call_us"], replay["round_trip_beyond_worker_us"],
        replay["held_beyond_worker_us"] - data["decision_us"]), abs=1e-3)
    assert {k: [y for _, y in v] for k, v in redone["worker_scale"].items()} == {
        k: [v] for k, v in replay["worker_level"].items()}
    # the fixed cost it found replaces the profile's (which its prediction had left out)
    assert redone["worker_batch_us"] == pytest.approx(max(
        0.0, replay["worker_fixed_us"] - data["worker_job_us"]), abs=1e-3)
    for name, entry in result["policies"].items():
        sim = json.loads((out / name / "sim" / "summary.json").read_text())
        assert entry["sim"]["jct_mean"] == sim["jct_mean"]
        given_sim = json.loads((out / name / "sim-as-given" / "summary.json").read_text())
        assert result["as_given"]["policies"][name]["sim"]["jct_mean"] == given_sim["jct_mean"]
        assert result["as_given"]["policies"][name]["live"] == entry["live"]
    assert [set(r) for r in result["rounds"]] == [{"static", "greedy"}] * 2
    # Rounds, not policy after policy: round 2's runs all come after round 1's.
    done = {(n, m): (out / n / m / "jobs.parquet").stat().st_mtime
            for n in ("static", "greedy") for m in ("live", "live-2")}
    assert max(done["static", "live"], done["greedy", "live"]) < min(
        done["static", "live-2"], done["greedy", "live-2"])
    assert "re-timed before the runs" in text


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
