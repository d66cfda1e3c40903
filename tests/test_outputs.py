"""Run outputs as a user finds them: whole or clearly partial, and never a flood."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO

DEFER_THEN_GREEDY = '''
from policies.base import load_policy
from scheduler.decisions import Decisions, Defer


class Patient:
    name = "patient"

    def __init__(self):
        self.calls, self.inner = 0, load_policy("greedy")

    def decide(self, view):
        self.calls += 1
        if self.calls <= 200:
            return Decisions((Defer(None, "not yet"),))
        return self.inner.decide(view)
'''


def test_a_policy_that_defers_every_tick_writes_one_line_for_the_run(cli, tmp_path) -> None:
    (tmp_path / "patient.py").write_text(DEFER_THEN_GREEDY)
    trace, out = tmp_path / "t.jsonl", tmp_path / "r"
    assert cli("trace", "generate", "-o", trace, "--jobs", "30", "--seed", "4")[0] == 0
    code, _, err = cli("simulate", trace, "--policy", f"{tmp_path / 'patient.py'}:Patient",
                       "--telemetry-interval", "0.01", "--out", out)
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "decisions.jsonl").read_text().splitlines()]
    defers = [r for r in rows if r["action"] == "defer"]
    assert len(defers) == 1 and defers[0]["count"] == 200
    assert defers[0]["t_last"] > defers[0]["t"]
    places = [r for r in rows if r["action"] == "place"]
    assert all("count" not in r for r in places)  # distinct decisions stay one a line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"]["applied"] == 200 + len(places)  # every record counted
    code, text, _ = cli("explain", out, places[0]["jobs"][0])
    assert code == 0 and "place" in text
    assert not list(out.glob("*.partial"))


def test_a_killed_run_leaves_no_truncated_output_under_a_final_name(cli, tmp_path) -> None:
    trace, out = tmp_path / "t.parquet", tmp_path / "r"
    assert cli("trace", "generate", "-o", trace, "--jobs", "200000", "--seed", "1")[0] == 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.Popen([sys.executable, "-m", "scheduler.cli", "simulate", str(trace),
                            "--out", str(out)], env=env, cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (out / "jobs.parquet.partial").exists() and run.poll() is None:
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.05)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    for name in ("jobs.parquet", "telemetry.parquet", "decisions.jsonl", "summary.json"):
        assert not (out / name).exists(), name
    code, _, err = cli("report", out)
    assert code == 2 and "stopped before it finished" in err, err


def test_a_long_run_reports_progress_where_no_bar_is_drawn(cli, tmp_path, monkeypatch) -> None:
    """stderr is not a terminal here (a pipe, a log file, CI): rich draws no bar, so the
    run prints plain progress lines instead of staying silent."""
    from scheduler.cli import progress

    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a line per update, not per 10 s
    trace = tmp_path / "t.parquet"  # a report every 4,096 arrivals: two here
    assert cli("trace", "generate", "-o", trace, "--jobs", "9000", "--seed", "4")[0] == 0
    code, _, err = cli("simulate", trace)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("simulate adaptive")]
    assert len(lines) == 2 and "8,192/9,000 jobs" in lines[-1] and "queue" in lines[-1], err
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 1e9)
    code, _, err = cli("simulate", trace)
    assert code == 0 and len([x for x in err.splitlines() if "simulate adaptive" in x]) == 1
