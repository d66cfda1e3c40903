from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler import __version__


def test_version(cli) -> None:
    code, out, _ = cli("--version")
    assert (code, out.strip()) == (0, f"attnsched {__version__}")


def test_console_script_runs_as_a_new_user_would(repo) -> None:
    exe = repo / ".venv" / "bin" / "attnsched"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "scheduler.cli"]
    result = subprocess.run([*cmd, "trace", "stats", "missing.csv"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "attnsched: error: missing.csv: no such file"


def test_azure_stats_command(cli, shared_trace) -> None:
    code, out, err = cli("trace", "stats", shared_trace("azure_llm_2023_conv.csv"), "--model",
                         "llama3-8b")
    assert code == 0, err
    assert "19,366" in out
    assert "58.4 min" in out
    assert "1,020" in out and "4,142" in out


def test_convert_round_trip_keeps_stats_identical(cli, shared_trace, tmp_path) -> None:
    src = shared_trace("azure_llm_2023_conv.csv")
    pq, jl = tmp_path / "t.parquet", tmp_path / "t.jsonl"
    assert cli("trace", "convert", src, "-o", pq)[0] == 0
    assert cli("trace", "convert", pq, "-o", jl)[0] == 0
    stats = []
    for path in (src, pq, jl):
        code, out, err = cli("trace", "stats", path, "--json")
        assert code == 0, err
        stats.append({k: v for k, v in json.loads(out).items()
                      if k not in ("trace", "format", "model")})
    assert stats[0] == stats[1] == stats[2]
    assert stats[0]["requests"] == 19_366


def test_convert_sort_fixes_unsorted_traces(cli, tmp_path) -> None:
    src = tmp_path / "u.jsonl"
    rows = [{"id": i, "submit_time": t, "kind": "prefill", "batch": 1, "heads": 1, "q_len": 4,
             "kv_len": 4, "head_dim": 8} for i, t in (("a", 3.0), ("b", 1.0), ("c", 2.0))]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = cli("trace", "stats", src)
    assert code == 2 and "u.jsonl:2: submit_time" in err
    out = tmp_path / "s.csv"
    assert cli("trace", "convert", src, "-o", out, "--sort")[0] == 0
    code, text, _ = cli("trace", "stats", out, "--json")
    assert code == 0
    assert json.loads(text)["first_submit_s"] == 1.0


def test_convert_failure_leaves_no_partial_output(cli, tmp_path) -> None:
    src = tmp_path / "bad.jsonl"
    good = {"id": "a", "submit_time": 0, "kind": "prefill", "batch": 1, "heads": 1, "q_len": 4,
            "kv_len": 4, "head_dim": 8}
    src.write_text(json.dumps(good) + "\n" + '{"id": "b", "submit_time": 1, "kind"\n')
    out = tmp_path / "out.parquet"
    code, _, err = cli("trace", "convert", src, "-o", out)
    assert code == 2 and "bad.jsonl:2" in err
    assert list(tmp_path.iterdir()) == [src]


def test_convert_refuses_to_overwrite_its_input(cli, tmp_path) -> None:
    src = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", src, "--jobs", "5")[0] == 0
    before = src.read_bytes()
    code, _, err = cli("trace", "convert", src, "-o", src)
    assert code == 2 and "overwrite" in err
    assert src.read_bytes() == before


def test_generate_is_byte_identical_per_seed(cli, tmp_path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    for path in (a, b):
        assert cli("trace", "generate", "-o", path, "--jobs", "300", "--seed", "3", "--rate",
                   "10", "--arrivals", "bursty", "--model", "llama3-8b")[0] == 0
    assert a.read_bytes() == b.read_bytes()
    code, out, _ = cli("trace", "stats", a, "--json")
    assert code == 0 and json.loads(out)["jobs"] == 300


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["trace", "generate", "-o", "x.jsonl", "--jobs", "0"], "--jobs"),
        (["trace", "generate", "-o", "x.jsonl", "--jobs", "abc"], "--jobs"),
        (["trace", "generate", "-o", "x.jsonl", "--jobs", "3", "--rate", "-1"], "--rate"),
        (["trace", "generate", "-o", "x.jsonl", "--jobs", "3", "--mix", "prefill"], "--mix"),
        (["trace", "generate", "-o", "x.jsonl", "--jobs", "3", "--model", "gpt"], "--model"),
        (["trace", "generate", "-o", "x.txt", "--jobs", "3"], "x.txt"),
        (["trace", "generate", "-o", "nodir/x.jsonl", "--jobs", "3"], "nodir"),
        (["trace", "stats", "x.jsonl", "--format", "excel"], "--format"),
        (["trace", "stats"], "Missing argument 'trace'"),
        (["trace", "frobnicate"], "frobnicate"),
        (["--log-level", "LOUD", "trace", "stats", "x"], "--log-level"),
    ],
)
def test_bad_options_exit_2_with_one_line(cli, tmp_path, monkeypatch, args, needle) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("attnsched: error:")
    assert needle in err
    assert not (tmp_path / "x.jsonl").exists()


def test_cluster_show_prints_eight_h100s_per_gpu_node(cli, repo) -> None:
    code, out, err = cli("cluster", "show", repo / "cluster.yaml", "--nodes", "gpu_h100=2")
    assert code == 0, err
    assert out.count("8× H100 (80 GiB)") == 2
    assert "16 GPUs" in out
    code, out, _ = cli("cluster", "show", repo / "cluster.yaml", "--json")
    nodes = json.loads(out)["nodes"]
    gpu_node = next(n for n in nodes if n["type"] == "gpu_h100")
    assert [d["model"] for d in gpu_node["devices"]] == ["H100"] * 8


def test_profile_show(cli) -> None:
    code, out, _ = cli("profile", "show", "h100", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["points"] == 72
    best = {(r["head_dim"], r["causal"], r["seq"]): r for r in summary["best"]}
    assert best[(128, False, 16384)]["tflops"] == 629.9
    assert best[(128, False, 16384)]["backend"] == "cudnn"


def test_json_logs_are_one_object_per_line(tmp_path) -> None:
    from tests.conftest import REPO

    trace = tmp_path / "t.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "--log-format", "json", "--log-level", "info",
         "trace", "generate", "-o", str(trace), "--jobs", "20", "--model", "tiny"],
        cwd=REPO, capture_output=True, text=True, check=True)
    result = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "--log-format", "json", "--log-level", "info",
         "simulate", str(trace), "--policy", "greedy", "--out", str(tmp_path / "r")],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(e["logger"] == "scheduler.report" and e["message"].startswith("wrote ")
               for e in entries), result.stderr
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)


# -- issue 20: option bounds and unwritable outputs, each named in one line, exit 2 ----------

@pytest.mark.parametrize(("args", "option"), [
    (["simulate", "{trace}", "--limit", "99999999999999999999999"], "--limit"),
    (["simulate", "{trace}", "--telemetry-interval", "1e-9"], "--telemetry-interval"),
    (["simulate", "{trace}", "--load", "1e-320"], "--load"),
    (["simulate", "{trace}", "--seed", "-1"], "--seed"),
    (["compare", "{trace}", "--jobs", str(2**64)], "--jobs"),
    (["trace", "generate", "-o", "{tmp}/g.jsonl", "--jobs", "5", "--rate", "1e-320"], "--rate"),
    (["trace", "convert", "{trace}", "-o", "{tmp}/c.jsonl", "--limit", str(10**30)], "--limit"),
])
def test_the_reported_option_values_exit_2_naming_the_option(cli, tmp_path, args,
                                                            option) -> None:
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "5")[0] == 0
    code, _, err = cli(*(a.format(trace=trace, tmp=tmp_path) for a in args))
    assert code == 2, err
    assert err.startswith(f"attnsched: error: {option}: ") and err.count("\n") == 1, err
    assert "submit_time" not in err


@pytest.mark.parametrize("folder", ["/proc", "/sys", "file"])
def test_unwritable_outputs_of_trace_and_report_exit_2_naming_the_path(cli, tmp_path,
                                                                       folder) -> None:
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "3")[0] == 0
    where = (trace / "x") if folder == "file" else Path(folder) / "attnsched-x"
    for args, option in ((["trace", "generate", "--jobs", "3", "-o", where], "--output"),
                         (["trace", "convert", trace, "-o", where], "--output"),
                         (["report", tmp_path, "--out", where], "--out"),
                         (["calibrate", "--quick", "-o", where], "--output")):
        code, _, err = cli(*args)
        assert code == 2, (args, err)
        assert str(where) in err and option in err and err.count("\n") == 1, err
        assert "internal error" not in err


def test_outputs_in_a_read_only_folder_exit_2(cli, tmp_path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores file modes")
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "3")[0] == 0
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    for args in (["trace", "generate", "--jobs", "3", "-o", folder / "g.jsonl"],
                 ["report", tmp_path, "--out", folder / "r"]):
        code, _, err = cli(*args)
        assert code == 2 and "cannot write" in err, err
