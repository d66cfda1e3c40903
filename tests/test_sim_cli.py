"""simulate, compare and explain as a user runs them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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


# -- outcomes: exit 0 only when every job completed ------------------------------------------

HUGE = {"id": "huge", "submit_time": 0.5, "kind": "prefill", "tenant": "t", "batch": 4096,
        "heads": 128, "kv_heads": 128, "q_len": 131072, "kv_len": 131072, "head_dim": 256,
        "layers": 1, "dtype": "bf16", "causal": True, "steps": 1}


def test_a_run_whose_nodes_all_fail_exits_3_saying_how_many_jobs_failed_and_why(
        cli, tmp_path, repo) -> None:
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "20", "--model", "tiny")[0] == 0
    base = ["--cluster", repo / "cluster.yaml"]
    code, _, err = cli("simulate", trace, *base, "--out", tmp_path / "ok")
    assert code == 0, err
    assert "failed" not in err
    every_node = ["--fail-node", "gpu_h100-0@1", "--fail-node", "cpu-0@1"]
    code, _, err = cli("simulate", trace, *base, *every_node, "--out", tmp_path / "lost")
    summary = json.loads((tmp_path / "lost" / "summary.json").read_text())
    assert summary["jobs_failed"] > 0
    assert code == 3, err
    assert f"{summary['jobs_failed']} of 20 jobs failed" in err
    assert "no device that can run it is up" in err
    assert (tmp_path / "lost" / "report.md").exists()  # a finished run: outputs as usual
    code, _, err = cli("compare", trace, *base, *every_node, "--policies", "static,greedy",
                       "--out", tmp_path / "cmp")
    assert code == 3, err
    assert "static: " in err and "greedy: " in err


def test_a_job_that_fits_no_device_makes_the_run_exit_3(cli, tmp_path, repo) -> None:
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "5", "--model", "tiny")[0] == 0
    trace.write_text(trace.read_text() + json.dumps(HUGE) + "\n")
    code, out, err = cli("simulate", trace, "--cluster", repo / "cluster.yaml")
    assert code == 3, err
    assert "1 of 6 jobs failed: fits no device" in " ".join(err.split())
    assert "5/6 jobs done, 1 failed" in out


def test_a_load_too_small_for_the_trace_is_blamed_on_load(cli, tmp_path, repo) -> None:
    """A tiny --load stretches arrivals: refused as --load, not as a job's submit_time."""
    trace = tmp_path / "pods.jsonl"
    pods = [{"id": "a", "submit_time": 0, "kind": "cluster", "duration": 1e9, "gpus": 8},
            {"id": "b", "submit_time": 10, "kind": "cluster", "duration": 1, "gpus": 1}]
    trace.write_text("".join(json.dumps(p) + "\n" for p in pods))
    code, _, err = cli("simulate", trace, "--cluster", repo / "cluster.yaml", "--load", "0.001")
    assert code == 2, err
    assert err.startswith("attnsched: error: --load: ") and "submit_time" not in err
    assert err.count("\n") == 1


def test_telemetry_too_fine_for_the_trace_is_refused_before_the_run(cli, tmp_path,
                                                                   repo) -> None:
    """A sample every ms over 1e5 s of arrivals is 1e8 samples: refused, not a hang."""
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "2", "--rate", "1e-5")[0] == 0
    code, _, err = cli("simulate", trace, "--cluster", repo / "cluster.yaml",
                       "--telemetry-interval", "0.001", "--out", tmp_path / "r")
    assert code == 2, err
    assert "--telemetry-interval" in err and "expected at least" in err
    assert not (tmp_path / "r").exists()


def read_only_dir(tmp_path: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root ignores file modes")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_an_unwritable_out_exits_2_naming_it_before_the_run(cli, tmp_path, repo) -> None:
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "3")[0] == 0
    for out in (Path("/proc/attnsched-x"), Path("/sys/attnsched-x"), trace / "x"):
        for command in (["simulate", trace, "--cluster", repo / "cluster.yaml"],
                        ["compare", trace, "--policies", "greedy"]):
            code, _, err = cli(*command, "--out", out)
            assert code == 2, (command, out, err)
            assert f"{out}" in err and "--out" in err and err.count("\n") == 1
            assert "internal error" not in err


def test_an_out_in_a_read_only_folder_exits_2(cli, tmp_path, repo) -> None:
    folder = read_only_dir(tmp_path)
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "3")[0] == 0
    for command in (["simulate", trace], ["compare", trace, "--policies", "greedy"]):
        code, _, err = cli(*command, "--out", folder / "run")
        assert code == 2 and "--out" in err and "cannot write" in err, err


def test_the_default_generated_trace_runs_on_the_gpus(cli, tmp_path, repo) -> None:
    """`trace generate` and `simulate` on their defaults: the tiny fp32 jobs go to the
    H100s (at the profile's flagged fp32 extrapolation), not all to the one CPU."""
    import pyarrow.parquet as pq

    trace, out = tmp_path / "t.parquet", tmp_path / "r"
    assert cli("trace", "generate", "-o", trace, "--jobs", "300", "--seed", "8")[0] == 0
    code, text, err = cli("simulate", trace, "--cluster", repo / "cluster.yaml", "--out", out)
    assert code == 0, err
    devices = pq.read_table(out / "jobs.parquet", columns=["device"]).column(0).to_pylist()
    assert len(devices) == 300
    on_gpus = sum(d.startswith("gpu_h100") for d in devices)
    assert on_gpus > 250, devices
    info = json.loads((out / "run.json").read_text())
    assert [line.split(":")[0] for line in info["extrapolated"]] == ["profile h100"]
    assert "fp32 priced at" in text


@pytest.mark.parametrize("extra", [[], ["--load", "0.5"], ["--limit", "40"]])
def test_simulate_reads_the_trace_once(cli, tmp_path, repo, monkeypatch, extra) -> None:
    """The pass that counts, prices and checks the arrivals keeps the jobs for the run:
    every row is parsed once, not once per check and again by the simulator."""
    from scheduler import runs

    trace = tmp_path / "t.parquet"
    assert cli("trace", "generate", "-o", trace, "--jobs", "120", "--seed", "3")[0] == 0
    rows = {"read": 0}
    open_trace = runs.open_trace

    class Counted:
        def __init__(self, opened) -> None:
            self.opened = opened

        def jobs(self):
            for job in self.opened.jobs():
                rows["read"] += 1
                yield job

    def counting(*args, **kwargs):
        return Counted(open_trace(*args, **kwargs))

    monkeypatch.setattr(runs, "open_trace", counting)
    out = tmp_path / "r"
    code, _, err = cli("simulate", trace, "--cluster", repo / "cluster.yaml", "--out", out,
                       *extra)
    assert code == 0, err
    expected = 40 if extra == ["--limit", "40"] else 120
    assert json.loads((out / "summary.json").read_text())["jobs_completed"] == expected
    assert rows["read"] == expected


def test_a_trace_longer_than_keep_is_read_again_not_held(cli, tmp_path) -> None:
    from scheduler.runs import RunSpec, replay, scan_arrivals

    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "30", "--seed", "3")[0] == 0
    spec = RunSpec(trace=trace, policy="fifo")
    held = scan_arrivals(spec, keep=30)
    assert held.jobs == 30 and held.kept is not None and len(held.kept) == 30
    assert list(replay(spec, held)) == held.kept == list(replay(spec, held))  # reusable
    streamed = scan_arrivals(spec, keep=29)
    assert streamed.jobs == 30 and streamed.kept is None
    assert [j.id for j in replay(spec, streamed)] == [j.id for j in held.kept]


FLAKY = '''
from policies.base import load_policy


class Flaky:
    name = "flaky"

    def __init__(self):
        self.calls, self.inner = 0, load_policy("greedy")

    def decide(self, view):
        self.calls += 1
        if self.calls > 4:
            raise RuntimeError("boom")
        return self.inner.decide(view)
'''


def test_a_fallback_is_credited_in_the_summary_report_and_table(cli, tmp_path, repo) -> None:
    """After --fallback-policy took over, every output names both policies and how many
    jobs each placed, not only run.json."""
    (tmp_path / "flaky.py").write_text(FLAKY)
    trace, out = tmp_path / "t.jsonl", tmp_path / "r"
    assert cli("trace", "generate", "-o", trace, "--jobs", "60", "--seed", "3")[0] == 0
    code, text, err = cli("simulate", trace, "--policy", f"{tmp_path / 'flaky.py'}:Flaky",
                          "--fallback-policy", "greedy", "--out", out)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fallback"]["policy"] == "greedy" and "boom" in summary["fallback"]["why"]
    placed = summary["placed_by"]
    assert set(placed) == {summary["policy"], "greedy"} and all(placed.values())
    assert sum(placed.values()) == summary["jobs_completed"] == 60
    report = (out / "report.md").read_text()
    assert "→ greedy" in report and "placed by" in report and "greedy: " in report
    assert "→ greedy" in text
    code, _, err = cli("simulate", trace, "--fallback-policy", "nope")
    assert code == 2 and "nope" in err


def test_explain_on_a_comparison_tells_the_job_in_each_run(cli, tmp_path) -> None:
    trace, out = tmp_path / "t.jsonl", tmp_path / "cmp"
    assert cli("trace", "generate", "-o", trace, "--jobs", "40", "--seed", "5")[0] == 0
    assert cli("compare", trace, "--policies", "static,greedy", "--jobs", "1", "--out",
               out)[0] == 0
    code, text, err = cli("explain", out, "j3")
    assert code == 0, err
    greedy, static = text.index("greedy ("), text.index("static (")  # runs by name
    assert greedy < static
    assert text[greedy:static].count("j3: done") == 1 and text[static:].count("j3: done") == 1
    code, _, err = cli("explain", out, "j999")
    assert code == 2 and "no job 'j999' in these runs (greedy, static)" in err


def test_explain_without_a_job_lists_what_a_folder_holds(cli, tmp_path) -> None:
    """A comparison's folder lists its runs (each with its outcome and the jobs worth
    asking about) instead of demanding a job id."""
    trace, out = tmp_path / "t.jsonl", tmp_path / "cmp"
    assert cli("trace", "generate", "-o", trace, "--jobs", "40", "--seed", "5")[0] == 0
    assert cli("compare", trace, "--policies", "static,greedy", "--jobs", "1", "--out",
               out)[0] == 0
    code, text, err = cli("explain", out)
    assert code == 0, err
    text = " ".join(text.split())
    assert "greedy (" in text and "static (" in text
    assert text.count("40/40 jobs done, 0 failed") == 2 and "waited" in text
    code, text, err = cli("explain", out / "greedy")
    assert code == 0 and "policy greedy" in " ".join(text.split()) and "static" not in text
