"""Shared fixtures. Ray must bind to loopback only: set before anything imports ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TRACES = SHARED / "traces"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def shared_trace():
    """Path to a file in ../shared/traces, skipping when the folder is absent."""

    def get(name: str) -> Path:
        path = TRACES / name
        if not path.exists():
            pytest.skip(f"{path} not present")
        return path

    return get


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from scheduler.cli.main import main

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run
