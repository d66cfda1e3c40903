"""Every command's --help shows an example, and the common first mistakes say what to do.

Each hint is one line on stderr, exit code 2, and names the fix (an option or
a command to run), not only what went wrong.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import typer

from scheduler.cli.main import app


def command_paths() -> list[tuple[str, ...]]:
    """Every command and group of the CLI, the root included, as words after ``attnsched``."""
    found: list[tuple[str, ...]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        found.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def test_the_walk_finds_every_command_the_issue_names() -> None:
    top = {p[0] for p in command_paths() if p}
    assert {"trace", "cluster", "profile", "run", "simulate", "compare", "explain", "policies",
            "calibrate", "fidelity", "report"} <= top
    assert ("trace", "generate") in command_paths() and ("profile", "list") in command_paths()


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "attnsched")
def test_every_help_shows_an_example(cli, path: tuple[str, ...]) -> None:
    code, out, err = cli(*path, "--help")
    assert code == 0, err
    assert "Example" in out, f"attnsched {' '.join(path)} --help has no example"
    assert f"attnsched {' '.join(path)}".strip() in " ".join(out.split()), \
        "the example should show the command itself"


def one_line_hint(code: int, err: str) -> str:
    """The message; a live run's progress bar, erased on a terminal, may leave a blank line."""
    assert code == 2, err
    text = err.strip()
    assert "\n" not in text and text.startswith("attnsched: error: "), err
    return text


@pytest.mark.parametrize("command", ["simulate", "compare", "run", "fidelity"])
def test_no_trace_says_where_traces_are_or_how_to_make_one(cli, command: str) -> None:
    err = one_line_hint(*cli(command)[::2])
    assert "Missing argument 'trace'" in err
    assert "attnsched trace generate" in err and "../shared/traces/" in err


@pytest.mark.parametrize("command", ["simulate", "compare", "run", "fidelity"])
def test_a_missing_trace_file_says_how_to_make_one(cli, tmp_path: Path, command: str) -> None:
    err = one_line_hint(*cli(command, tmp_path / "nope.jsonl")[::2])
    assert "nope.jsonl: no such file" in err
    assert "attnsched trace generate -o" in err


def test_report_without_runs_says_what_to_give(cli) -> None:
    err = one_line_hint(*cli("report")[::2])
    assert "--out folder of a simulate, run or compare" in err


@pytest.mark.parametrize("args", [
    ["trace", "stats", "{azure}", "--model", "llama9"],
    ["simulate", "{azure}", "--model", "llama9", "--limit", "5"],
    ["trace", "generate", "-o", "{tmp}/t.jsonl", "--jobs", "5", "--model", "llama9"],
])
def test_an_unknown_preset_lists_the_known_ones(cli, shared_trace, tmp_path: Path,
                                                args: list[str]) -> None:
    azure = shared_trace("azure_llm_2023_conv.csv")
    words = [a.format(azure=azure, tmp=tmp_path) for a in args]
    err = one_line_hint(*cli(*words)[::2])
    assert "--model: unknown model preset 'llama9'" in err
    assert "known: llama3-8b, llama3-70b, tiny" in err


def test_calibrating_cuda_without_a_gpu_says_to_use_the_cpu(cli, tmp_path: Path,
                                                            monkeypatch) -> None:
    from scheduler.cli import calibrate_cmd

    monkeypatch.setattr(calibrate_cmd, "_has_cuda", lambda: False)
    err = one_line_hint(*cli("calibrate", "--device", "cuda", "-o", tmp_path / "p.json")[::2])
    assert "no CUDA device here" in err and "--device cpu" in err
    assert not (tmp_path / "p.json").exists()


GPU_TRACE = ('{"id": "pod1", "submit_time": 0, "kind": "cluster", "duration": 1, "gpus": 2, '
             '"cpus": 1, "memory_mib": 100}\n')


def test_a_live_run_of_gpu_jobs_without_gpus_says_to_emulate_them(cli, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Today's alternative: Ray starts, then every job fails "fits no node" with exit 0."""
    from scheduler.cli import live_cmd

    monkeypatch.setattr(live_cmd, "has_cuda", lambda: False)
    trace = tmp_path / "pods.jsonl"
    trace.write_text(GPU_TRACE, encoding="utf-8")
    for command in (["run", trace], ["compare", trace, "--mode", "live", "--policies", "greedy",
                                     "--out", tmp_path / "cmp"]):
        err = one_line_hint(*cli(*command)[::2])
        assert "job pod1 needs 2 GPU(s) and this machine has none" in err
        assert "add --emulate-gpus N" in err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_a_gpu_machine_or_emulated_gpus_pass_the_gpu_check(tmp_path: Path,
                                                          monkeypatch) -> None:
    from scheduler.cli import live_cmd
    from scheduler.runs import RunSpec, scan_arrivals
    from workers.executor import LiveConfig

    trace = tmp_path / "pods.jsonl"
    trace.write_text(GPU_TRACE, encoding="utf-8")
    spec = RunSpec(trace=trace, policy="greedy")
    arrivals = scan_arrivals(spec)
    assert arrivals.needs_gpu is not None and arrivals.needs_gpu.id == "pod1"
    monkeypatch.setattr(live_cmd, "has_cuda", lambda: False)
    live_cmd.check_gpus(spec, LiveConfig(emulate_gpus=2), arrivals)
    live_cmd.check_gpus(spec, LiveConfig(address="auto"), arrivals)
    monkeypatch.setattr(live_cmd, "has_cuda", lambda: True)
    live_cmd.check_gpus(spec, LiveConfig(), arrivals)


@pytest.mark.parametrize("address", ["auto", "ray://10.0.0.1:10001"])
def test_ray_not_reachable_at_address_says_to_start_it(cli, tmp_path: Path, monkeypatch,
                                                      address: str) -> None:
    """ray.init itself is replaced: a real unreachable address retries for minutes."""
    import ray

    def unreachable(**_: object) -> None:
        raise ConnectionError("Could not find any running Ray instance. Please specify the "
                              "one to connect to.\nsecond line")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", unreachable)
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "3", "--model", "tiny")[0] == 0
    err = one_line_hint(*cli("run", trace, "--address", address, "--out", tmp_path / "r")[::2])
    assert f"--address: cannot reach Ray at {address}" in err
    assert "Could not find any running Ray instance" in err and "second line" not in err
    assert "ray start --head" in err and "ray up cluster.yaml" in err
    assert "leave out --address" in err


def test_a_local_ray_that_cannot_start_says_what_to_check(cli, tmp_path: Path,
                                                         monkeypatch) -> None:
    import ray

    def broken(**_: object) -> None:
        raise RuntimeError("")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", broken)
    trace = tmp_path / "t.jsonl"
    assert cli("trace", "generate", "-o", trace, "--jobs", "3", "--model", "tiny")[0] == 0
    err = one_line_hint(*cli("run", trace, "--out", tmp_path / "r")[::2])
    assert "cannot start a local Ray (RuntimeError)" in err and "free memory" in err


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "attnsched")
def test_help_at_80_columns_shows_every_option_name_whole(path, cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    command = typer.main.get_command(app)
    for word in path:
        command = command.commands[word]  # type: ignore[attr-defined]
    code, text, _ = cli(*path, "--help")
    assert code == 0
    assert all(len(line) <= 80 for line in text.splitlines()), text
    for param in command.params:
        for name in (*param.opts, *param.secondary_opts):
            if name.startswith("-"):
                assert f"{name} " in text or f"{name}\n" in text or f"{name}," in text, name
