"""Malformed traces and configs through the real CLI: exit 2, one line, located.

Hypothesis generates files that are guaranteed to be malformed (see
``tests/malformed.py``); every one must be rejected with exit code 2 and a
single line naming the file and, where the format has lines, the line; none
may print a traceback. Over 500 files run in total.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings

from tests import malformed
from tests.conftest import REPO
from tests.malformed import run_cli

SETTINGS = settings(malformed.FUZZ, max_examples=150)


def check_rejected(folder: Path, case: tuple[str, bytes, bool], *command: str,
                   key_instead_of_line: bool = False) -> None:
    name, data, expect_line = case
    path = folder / name
    path.write_bytes(data)
    code, text = run_cli(*command, str(path))
    assert code == 2, (data[:300], text)
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith(f"attnsched: error: {path}"), text
    if expect_line:
        located = re.search(rf"{re.escape(str(path))}:\d+: ", lines[0])
        assert located or key_instead_of_line, text


@SETTINGS
@given(case=malformed.bad_canonical())
def test_malformed_canonical_traces(tmp_path: Path, case) -> None:
    check_rejected(tmp_path, case, "trace", "stats")


@SETTINGS
@given(case=malformed.bad_azure())
def test_malformed_azure_traces(tmp_path: Path, case) -> None:
    check_rejected(tmp_path, case, "trace", "stats")


@settings(SETTINGS, max_examples=60)
@given(case=malformed.bad_mooncake())
def test_malformed_mooncake_traces(tmp_path: Path, case) -> None:
    check_rejected(tmp_path, case, "trace", "stats")


GOOD_CLUSTER = (REPO / "cluster.yaml").read_text()


@settings(SETTINGS, max_examples=120)
@given(case=malformed.bad_cluster_yaml(GOOD_CLUSTER))
def test_malformed_cluster_configs(tmp_path: Path, case) -> None:
    check_rejected(tmp_path, case, "cluster", "show")


GOOD_PROFILE = json.loads((REPO / "scheduler" / "profile_data" / "h100.json").read_text())


@settings(SETTINGS, max_examples=60)
@given(case=malformed.bad_profile(GOOD_PROFILE))
def test_malformed_profiles(tmp_path: Path, case) -> None:
    check_rejected(tmp_path, case, "profile", "show", key_instead_of_line=True)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_garbage_in_any_format(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(bytes(range(256)) * 4)
    code, text = run_cli("trace", "stats", str(path))
    assert code == 2
    assert text.startswith(f"attnsched: error: {path}")
    assert "Traceback" not in text


@pytest.mark.parametrize("case", ["trace", "policy"])
def test_real_entry_point_prints_no_traceback(tmp_path: Path, case: str) -> None:
    """The installed ``attnsched`` script, in its own process: exit 2, one line.

    ``policy``: a plugin that calls sys.exit() must not end the CLI with its code.
    """
    script = Path(sys.executable).with_name("attnsched")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "scheduler.cli"]
    trace = tmp_path / "t.jsonl"
    if case == "trace":
        trace.write_bytes(b'{"id": "a", "submit_time": 1' + b"0" * 5000 + b"}\n")
        args = ["trace", "stats", str(trace)]
    else:
        trace.write_text(json.dumps({**malformed.GOOD_ROW}) + "\n")
        args = ["simulate", str(trace), "--policy", "sys:exit", "--cluster",
                str(REPO / "cluster.yaml")]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("attnsched: error: "), result.stderr
