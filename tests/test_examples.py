"""Examples are documentation that runs: each must keep working."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_cost_of_a_trace_example_runs() -> None:
    result = subprocess.run([sys.executable, "examples/cost_of_a_trace.py", "--model", "tiny"],
                            cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1000 jobs")
    assert "cpu/flash" in result.stdout
