"""simulate, compare and explain as a user runs them."""

from __future__ import annotations

import json

OUTPUTS = ("jobs.parquet", "summary.json", "telemetry.parquet", "decisions.jsonl", "report.md",
           "run.json", "plots/jct_cdf.png", "plots/queue.png", "plots/utilization.png",
           "plots/tenant_share.png")


def test_compare_writes_every_output_per_policy(cli, shared_trace, repo, tmp_path) -> None:
    out = tmp_path / "x"
    code, text, err = cli("compare", shared_trace("azure_llm_2023_conv.csv"), "--policies",
                          "static,greedy,adaptive", "--model", "llama3-8b", "--load", "0.9",
                          "--limit", "3000", "--cluster", repo / "cluster.yaml", "--out", out)
    assert code == 0, err
    for policy in ("static", "greedy", "adaptive"):
        for name in OUTPUTS:
            assert (out / policy / name).exists(), (policy, name)
        summary = json.loads((out / policy / "summary.json").read_text())
        assert summary["jobs_completed"] == 3000
        assert summary["load"] == 0.9
    comparison = (out / "comparison.md").read_text()
    assert all(p in comparison for p in ("static", "greedy", "adaptive"))
    assert "comparison.md" in text


def test_explain_tells_a_jobs_story(cli, tmp_path, repo) -> None:
    from scheduler.presets import get_preset
    from scheduler.traces import write_trace
    from scheduler.traces.synth import SynthSpec, generate

    trace = tmp_path / "t.jsonl"
    write_trace(generate(SynthSpec(jobs=50, seed=4, rate=100.0), get_preset("llama3-8b")), trace)
    code, _, err = cli("simulate", trace, "--cluster", repo / "cluster.yaml", "--out",
                       tmp_path / "r", "--fail", "gpu_h100-0/gpu0@0.1")
    assert code == 0, err
    code, text, _ = cli("explain", tmp_path / "r", "j7")
    assert code == 0
    assert "place on" in text and "-> applied" in text
    assert "j7: done after" in text
    code, _, err = cli("explain", tmp_path / "r", "j9999")
    assert code == 2 and "no job 'j9999'" in err


def test_simulate_rejects_bad_options_in_one_line(cli, tmp_path, repo) -> None:
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "5")[0] == 0
    for args, needle in ((["--load", "-1"], "--load"), (["--fail", "gpu9@1"], "no device"),
                         (["--fail", "gpu_h100-0/gpu0@soon"], "DEVICE@SECONDS"),
                         (["--slow", "x"], "DEVICE=FACTOR"), (["--slots", "0"], "--slots"),
                         (["--decision-interval", "-2"], "--decision-interval")):
        code, _, err = cli("simulate", trace, "--cluster", repo / "cluster.yaml", *args)
        assert code == 2, args
        assert needle in err
        assert err.count("\n") == 1


def test_simulate_times_devices_with_a_calibrated_profile(cli, tmp_path, repo) -> None:
    """--profile PATH replaces the shipped profile of its name: a device twice as slow
    per call shows in the results; a bad profile is one line, exit 2."""
    from scheduler.profiles import load_profile

    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "40", "--seed", "2", "--model",
               "llama3-8b")[0] == 0
    shipped = json.loads((repo / "scheduler/profile_data/h100.json").read_text())
    slow = {**shipped, "call_host_us": shipped["call_host_us"] * 50,
            "bandwidth_gb_s": shipped["bandwidth_gb_s"] / 50}
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    assert load_profile(tmp_path / "slow.json").name == "h100"
    runs = {}
    for label, extra in (("shipped", []), ("slow", ["--profile", tmp_path / "slow.json"]),
                         ("named", ["--profile", f"h100={tmp_path / 'slow.json'}"])):
        code, _, err = cli("simulate", trace, "--cluster", repo / "cluster.yaml", "--out",
                           tmp_path / label, *extra)
        assert code == 0, err
        runs[label] = json.loads((tmp_path / label / "summary.json").read_text())
    assert runs["slow"]["jct_mean"] > 5 * runs["shipped"]["jct_mean"]
    assert runs["named"]["jct_mean"] == runs["slow"]["jct_mean"]
    for bad, needle in (("nope.json", "nope.json"), (f"a100={tmp_path / 'slow.json'}",
                                                      "a100")):
        code, _, err = cli("simulate", trace, "--cluster", repo / "cluster.yaml",
                           "--profile", bad)
        assert code == 2 and needle in err and err.count("\n") == 1, err


def test_live_costs_are_charged_by_default_and_recorded(cli, tmp_path, repo) -> None:
    """Every batch pays the profile's Ray round trip unless --no-live-costs asks for the
    plain device model; summary.json says which one ran."""
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "30", "--seed", "5", "--model",
               "llama3-8b")[0] == 0
    summaries = {}
    for label, extra in (("live", []), ("ideal", ["--no-live-costs"])):
        code, _, err = cli("simulate", trace, "--cluster", repo / "cluster.yaml", "--nodes",
                           "cpu=0", "--out", tmp_path / label, *extra)
        assert code == 0, err
        summaries[label] = json.loads((tmp_path / label / "summary.json").read_text())
    assert summaries["live"]["live_costs"] is True
    assert summaries["ideal"]["live_costs"] is False
    assert summaries["live"]["jct_mean"] > summaries["ideal"]["jct_mean"]
