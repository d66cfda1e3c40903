"""Every numeric option of every command, and every output path, refused before anything runs.

Hypothesis draws each option's value from the forms that broke it once (NaN,
infinities, negatives, zero, denormals, 1e23, 2^64, half a number, nothing):
a value out of the option's documented bound exits 2 with one line naming
the option, never a traceback, a hang or a Ray that starts. Outputs: a path
under /proc or /sys, or below a file, exits 2 naming the path and its option.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.malformed import FUZZ, examples, run_cli

VALUES = ["nan", "inf", "-inf", "-1", "0", "1e-320", "1e-9", "1e23", str(2**64), "1e", ""]
SEED = (0, 2**63 - 1)
LIMIT = (1, 10**12)
TICK = (1e-3, 3600.0)


def valid(text: str, bound: tuple[float, float], integer: bool, lo_open: bool = False) -> bool:
    """Whether ``text`` is inside the option's documented bound (then it is not a case)."""
    try:
        value: float = int(text) if integer else float(text)
    except ValueError:
        return False
    lo, hi = bound
    return math.isfinite(value) and value <= hi and (value > lo if lo_open else value >= lo)


# (command, option, bound, integer, lo_open); each command's arguments are in COMMANDS.
CASES = [
    *[("simulate", option, bound, integer, False) for option, bound, integer in (
        ("--load", (1e-3, 100.0), False), ("--limit", LIMIT, True), ("--seed", SEED, True),
        ("--slots", (1, 64), True), ("--telemetry-interval", TICK, False),
        ("--decision-interval", (0.0, 3600.0), False), ("--slow", (1.0, 1000.0), False))],
    ("compare", "--jobs", (0, 256), True, False),
    ("compare", "--limit", LIMIT, True, False),
    *[("compare-live", option, bound, integer, False) for option, bound, integer in (
        ("--speed", (1e-3, 1e6), False), ("--memory-fraction", (0.01, 1.0), False),
        ("--seed", SEED, True), ("--telemetry-interval", TICK, False),
        ("--emulate-gpus", (0, 64), True), ("--cpu-workers", (0, 256), True))],
    *[("run", option, bound, integer, False) for option, bound, integer in (
        ("--speed", (1e-3, 1e6), False), ("--memory-fraction", (0.01, 1.0), False),
        ("--limit", LIMIT, True), ("--seed", SEED, True), ("--telemetry-interval", TICK, False),
        ("--decide-timeout", (0.0, 3600.0), False), ("--metrics-port", (1, 65535), True),
        ("--emulate-gpus", (0, 64), True), ("--slow", (1.0, 1000.0), False))],
    *[("fidelity", option, bound, integer, False) for option, bound, integer in (
        ("--speed", (1e-3, 1e6), False), ("--repeats", (1, 20), True),
        ("--seed", SEED, True), ("--limit", LIMIT, True))],
    ("trace-generate", "--jobs", (1, 10**8), True, False),
    ("trace-generate", "--seed", SEED, True, False),
    ("trace-generate", "--rate", (5e-9, 1e7), False, True),  # 5 jobs: their span ≤ 1e9 s
    ("trace-generate", "--tenants", (1, 10_000), True, False),
    ("trace-generate", "--deadline-fraction", (0.0, 1.0), False, False),
    ("trace-generate", "--token-scale", (0.0, 1000.0), False, True),
    ("trace-convert", "--limit", (0, 10**12), True, False),
    ("trace-stats", "--token-scale", (0.0, 1000.0), False, True),
    ("calibrate", "--threads", (1, 1024), True, False),
]
LIVE = {"compare-live", "run", "fidelity"}


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("opts") / "t.jsonl"
    code, text = run_cli("trace", "generate", "-o", path, "--jobs", "4", "--model", "tiny")
    assert code == 0, text
    return path


def command(name: str, trace: Path, out: Path) -> list[object]:
    """The command's arguments before the option under test: valid, and cheap."""
    return {
        "simulate": ["simulate", trace, "--out", out / "s"],
        "compare": ["compare", trace, "--policies", "greedy", "--out", out / "c"],
        "compare-live": ["compare", trace, "--mode", "live", "--policies", "greedy",
                         "--out", out / "cl"],
        "run": ["run", trace, "--emulate-gpus", "1", "--out", out / "r"],
        "fidelity": ["fidelity", trace, "--policies", "greedy", "--emulate-gpus", "1",
                     "--out", out / "f"],
        "trace-generate": ["trace", "generate", "-o", out / "g.jsonl", "--jobs", "5"],
        "trace-convert": ["trace", "convert", trace, "-o", out / "c.jsonl"],
        "trace-stats": ["trace", "stats", trace],
        "calibrate": ["calibrate", "-o", out / "p.json"],
    }[name]


def option_value(option: str, value: str) -> str:
    """``--slow`` takes DEVICE=FACTOR: a device that exists, so the factor is at fault."""
    if option != "--slow":
        return value
    return f"gpu_h100-0/gpu0={value}" if value != "" else "gpu_h100-0/gpu0="


@pytest.mark.parametrize(("name", "option", "bound", "integer", "lo_open"), CASES,
                         ids=[f"{c[0]}{c[1]}" for c in CASES])
@settings(FUZZ, max_examples=examples(12))
@given(value=st.sampled_from(VALUES))
def test_an_option_out_of_bounds_exits_2_naming_it_before_anything_starts(
        trace: Path, tmp_path: Path, name: str, option: str, bound: tuple[float, float],
        integer: bool, lo_open: bool, value: str) -> None:
    assume(not valid(value, bound, integer, lo_open))
    ray_before = "ray" in sys.modules
    args = command(name, trace, tmp_path)
    if name == "run" and option == "--slow":
        args += ["--slow", f"head/gpu0={value}"]
    else:
        args += [option, option_value(option, value)]
    code, text = run_cli(*args)
    assert "Traceback" not in text and "internal error" not in text, text
    assert code == 2, (args, code, text[-500:])
    lines = text.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], text[-500:]
    assert lines[0].startswith("attnsched: error: "), lines
    if name in LIVE and not ray_before:
        assert "ray" not in sys.modules  # refused before the live stack even loads
    assert not any(tmp_path.iterdir()), sorted(tmp_path.iterdir())  # and wrote nothing


def unwritable(kind: str, tmp_path: Path) -> Path:
    if kind == "file":
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        return blocker / "out"
    return Path(kind) / "attnsched-out"


OUT_COMMANDS = {
    "simulate": lambda t, p: ["simulate", t, "--out", p],
    "compare": lambda t, p: ["compare", t, "--policies", "greedy", "--out", p],
    "compare-live": lambda t, p: ["compare", t, "--mode", "live", "--policies", "greedy",
                                  "--emulate-gpus", "1", "--out", p],
    "run": lambda t, p: ["run", t, "--emulate-gpus", "1", "--out", p],
    "fidelity": lambda t, p: ["fidelity", t, "--policies", "greedy", "--emulate-gpus", "1",
                              "--out", p],
    "report": lambda t, p: ["report", t.parent, "--out", p],
    "trace-generate": lambda t, p: ["trace", "generate", "--jobs", "3", "-o", p],
    "trace-convert": lambda t, p: ["trace", "convert", t, "-o", p],
    "calibrate": lambda t, p: ["calibrate", "--quick", "-o", p],
}


@pytest.mark.parametrize("name", sorted(OUT_COMMANDS))
@settings(FUZZ, max_examples=examples(6))
@given(kind=st.sampled_from(["/proc", "/sys", "/proc/self", "file"]))
def test_an_unwritable_output_exits_2_naming_the_path_before_anything_runs(
        trace: Path, tmp_path: Path, name: str, kind: str) -> None:
    target = unwritable(kind, tmp_path)
    ray_before = "ray" in sys.modules
    args = OUT_COMMANDS[name](trace, target)
    code, text = run_cli(*args)
    assert "Traceback" not in text and "internal error" not in text, text
    assert code == 2, (args, code, text[-500:])
    lines = text.strip().splitlines()
    option = "--output" if name.startswith(("trace", "calibrate")) else "--out"
    assert len(lines) == 1 and option in lines[0] and str(target) in lines[0], text
    assert "--resume" not in lines[0]
    if name in LIVE and not ray_before:
        assert "ray" not in sys.modules
