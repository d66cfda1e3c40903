"""Reports from run directories: content, plots, determinism and policy comparison."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scheduler.errors import InputError
from scheduler.report import (
    PLOTS,
    fmt_seconds,
    summary_table_rows,
    tenant_shares,
    write_comparison,
    write_report,
)
from tests.conftest import REPO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TELEMETRY_SCHEMA = pa.schema([("time", pa.float64()), ("device", pa.string()),
                              ("node", pa.string()), ("util", pa.float64()),
                              ("mem_used", pa.int64()), ("mem_total", pa.int64()),
                              ("queue_len", pa.int64()), ("running", pa.int64()),
                              ("achieved_flops", pa.float64())])


def summary(policy: str, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "policy": policy, "mode": "sim", "jobs_total": 37, "jobs_completed": 31,
        "jobs_failed": 6, "jct_mean": 2.5, "jct_p50": 1.5, "jct_p99": 9.0,
        "queue_delay_mean": 0.4, "slowdown_mean": 1.8, "makespan": 60.0,
        "throughput_jobs_per_s": 0.52, "achieved_tflops": 120.0, "device_util_mean": 0.7,
        "jain_fairness": 0.9, "slo_attainment": None, "wall_seconds": 0.25,
        "trace": "t.jsonl", "seed": 0}
    fields.update(overrides)
    return fields


def make_run(root: Path, policy: str = "fifo", jobs: int = 37, telemetry: bool = True,
             jct_scale: float = 1.0, **summary_overrides: Any) -> Path:
    """A run dir: jobs across tenants alice/bob, every 6th failed (half never started)."""
    run = root / policy
    run.mkdir(parents=True)
    rows: dict[str, list[Any]] = {k: [] for k in (
        "id", "tenant", "kind", "submit", "start", "end", "jct", "queue_delay", "device",
        "node", "batch_size", "attempts", "status", "flops", "reason", "deadline", "slowdown")}
    for i in range(jobs):
        failed, started = i % 6 == 5, i % 12 != 11
        submit = float(i)
        start = submit + 0.5 * (i % 3) if started else None
        run_time = jct_scale * (0.01 * 10 ** (i % 4))  # spans 3 decades
        end = (start or submit) + run_time
        rows["id"].append(f"j{i}")
        rows["tenant"].append("alice" if i % 2 else "bob")
        rows["kind"].append(("prefill", "decode", "train")[i % 3])
        rows["submit"].append(submit)
        rows["start"].append(start)
        rows["end"].append(end)
        rows["jct"].append(None if failed else end - submit)
        rows["queue_delay"].append(None if start is None else start - submit)
        rows["device"].append(None if start is None else f"gpu{i % 2}")
        rows["node"].append(None if start is None else "node0")
        rows["batch_size"].append(1 + i % 4)
        rows["attempts"].append(2 if failed else 1)
        rows["status"].append("failed" if failed else "done")
        rows["flops"].append(1e12 * (i + 1))
        rows["reason"].append(("out of memory" if started else "no fitting device")
                              if failed else None)
        rows["deadline"].append(None)
        rows["slowdown"].append(None if failed else 1.0 + (i % 3))
    pq.write_table(pa.table(rows), run / "jobs.parquet")
    times = np.arange(0.0, 40.0, 4.0) if telemetry else []
    ticks = [(float(t), d) for t in times for d in ("gpu0", "gpu1")]
    tel = {"time": [t for t, _ in ticks], "device": [d for _, d in ticks],
           "node": ["node0" for _ in ticks], "util": [0.5 + 0.4 * np.sin(t + (d == "gpu1"))
                                                     for t, d in ticks],
           "mem_used": [2**30 for _ in ticks], "mem_total": [80 * 2**30 for _ in ticks],
           "queue_len": [int(t) % 5 for t, _ in ticks], "running": [1 for _ in ticks],
           "achieved_flops": [1e14 for _ in ticks]}
    pq.write_table(pa.table(tel, schema=TELEMETRY_SCHEMA), run / "telemetry.parquet")
    (run / "summary.json").write_text(json.dumps(summary(policy, **summary_overrides)))
    return run


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 1024, path


@pytest.mark.parametrize("telemetry", [True, False], ids=["telemetry", "no-telemetry"])
def test_report_shows_run_facts_and_links_valid_plots(tmp_path: Path, telemetry: bool) -> None:
    run = make_run(tmp_path, "srpt-fair", telemetry=telemetry)
    report = write_report(run)
    text = report.read_text()
    assert report == run / "report.md"
    assert text.startswith("# Run report: srpt-fair (sim)")
    assert "| jobs_total | 37 |" in text
    assert "| jain_fairness | 90.0% |" in text
    assert "| jct_mean | 2.5 s |" in text
    assert "| alice |" in text and "| bob |" in text
    assert "| prefill |" in text and "| decode |" in text
    assert "| out of memory | 3 |" in text and "| no fitting device | 3 |" in text
    for name in PLOTS:
        assert f"](plots/{name}.png)" in text
        assert_png(run / "plots" / f"{name}.png")


def test_report_is_byte_identical_across_calls(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    first = write_report(run).read_bytes()
    pngs = {name: (run / "plots" / f"{name}.png").read_bytes() for name in PLOTS}
    assert write_report(run).read_bytes() == first
    assert {name: (run / "plots" / f"{name}.png").read_bytes() for name in PLOTS} == pngs


def test_report_without_failures_says_so(tmp_path: Path) -> None:
    run = make_run(tmp_path, jobs=5)
    assert "No failures." in write_report(run).read_text()


def test_report_names_the_missing_file(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "jobs.parquet").unlink()
    with pytest.raises(InputError, match=r"jobs\.parquet"):
        write_report(run)


def test_comparison_bolds_best_jct_and_records_every_summary(tmp_path: Path) -> None:
    runs = {"fifo": make_run(tmp_path, "fifo", jct_mean=4.0, device_util_mean=0.9),
            "srpt": make_run(tmp_path, "srpt", jct_scale=0.5, jct_mean=2.0,
                             device_util_mean=0.6)}
    out = tmp_path / "cmp"
    md = write_comparison(runs, out)
    rows = {line.split(" | ")[0].strip("| "): line for line in md.read_text().splitlines()
            if line.startswith("| ")}
    assert "**2 s**" in rows["srpt"] and "**" not in rows["fifo"].split(" | ")[1]
    assert "90.0%" in rows["fifo"] and "**90.0%**" not in rows["fifo"]  # util: not ranked
    saved = json.loads((out / "comparison.json").read_text())
    assert set(saved) == {"fifo", "srpt"} and saved["srpt"]["jct_mean"] == 2.0
    assert_png(out / "plots" / "jct_cdf.png")


@pytest.mark.parametrize(("column", "header", "fifo", "srpt", "starred"), [
    ("jct_mean", "JCT mean", 4.0, 2.0, "srpt"),  # lower is better
    ("jct_p99", "JCT p99", 1.0, 2.0, "fifo"),
    ("device_util_mean", "device util", 0.9, 0.6, None),  # not ranked: busy is not better
    ("slo_attainment", "SLO attainment", 0.5, 0.75, "srpt"),
])
def test_summary_rows_star_the_best_cell(column: str, header: str, fifo: float, srpt: float,
                                         starred: str | None) -> None:
    head, *rows = summary_table_rows({"fifo": summary("fifo", **{column: fifo}),
                                      "srpt": summary("srpt", **{column: srpt})})
    cells = {row[0]: row[head.index(header)] for row in rows}
    if starred is None:
        assert not any(cell.endswith("*") for cell in cells.values())
        return
    other = "fifo" if starred == "srpt" else "srpt"
    assert cells[starred].endswith("*") and not cells[other].endswith("*")
    assert [row[0] for row in rows] == ["fifo", "srpt"]


def test_summary_rows_star_nothing_on_a_tie_or_a_lone_value() -> None:
    _, *rows = summary_table_rows({"a": summary("a"), "b": summary("b", slo_attainment=0.9)})
    assert not any(cell.endswith("*") for row in rows for cell in row)
    assert rows[0][-1] == "—" and rows[1][-1] == "90.0%"


@pytest.mark.parametrize(("seconds", "text"), [
    (0.0, "0 s"), (2.5, "2.5 s"), (1234.5, "1,230 s"), (0.01234, "12.3 ms"),
    (4.2e-5, "42 µs"), (0.99951, "1 s"), (None, "—"), (float("nan"), "—"),
])
def test_seconds_read_in_three_significant_digits(seconds: float | None, text: str) -> None:
    assert fmt_seconds(seconds) == text


def test_tenant_shares_sum_to_one_where_anything_ran(tmp_path: Path) -> None:
    jobs = pq.read_table(make_run(tmp_path) / "jobs.parquet")
    edges, shares = tenant_shares(jobs, bins=10)
    total = np.sum(list(shares.values()), axis=0)
    assert len(edges) == 11 and len(total) == 10 and set(shares) == {"alice", "bob"}
    assert np.allclose(total[total > 0], 1.0) and (total > 0).sum() >= 8


def test_importing_the_module_loads_no_plotting_or_live_stack() -> None:
    probe = ("import sys, scheduler.report; print(sorted(m for m in "
             "('matplotlib', 'ray', 'torch', 'pynvml') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == ["[]"]


HOSTILE_TENANTS = ("$\\undefinedcmd{x}$", "<script>alert(1)</script>", "[x](javascript:alert(1))",
                   "a|b")


def test_a_run_whose_tenants_are_markup_reports_them_as_plain_text(cli, tmp_path: Path) -> None:
    """Mathtext in a tenant once made the plot step raise (exit 1, no summary, no report);
    raw HTML and links went into report.md as they were."""
    from scheduler.presets import get_preset
    from scheduler.traces import write_trace
    from scheduler.traces.synth import SynthSpec, generate

    jobs = [dataclasses.replace(job, tenant=HOSTILE_TENANTS[i % len(HOSTILE_TENANTS)])
            for i, job in enumerate(generate(SynthSpec(jobs=60, seed=4, rate=30.0),
                                             get_preset("tiny")))]
    trace, out = tmp_path / "t.jsonl", tmp_path / "run"
    write_trace(iter(jobs), trace)
    code, stdout, stderr = cli("simulate", str(trace), "--policy", "fifo", "--nodes",
                               "gpu_h100=1", "--out", str(out))
    assert code == 0, stdout + stderr
    assert json.loads((out / "summary.json").read_text())["jobs_total"] == 60
    for name in PLOTS:
        assert_png(out / "plots" / f"{name}.png")
    text = (out / "report.md").read_text()
    assert "<script>" not in text and "](javascript:" not in text
    table = text.split("## Per tenant")[1].split("## Per kind")[0]
    tenant_rows = [row for row in table.splitlines() if row.startswith("|")][2:]
    assert len(tenant_rows) == len(HOSTILE_TENANTS)
    assert all(row.count(" | ") == 5 for row in tenant_rows), tenant_rows  # a|b: one cell


def test_report_lists_the_summary_s_failure_reasons_escaped(tmp_path: Path) -> None:
    reasons = {"device gpu0 failed": 4, "<b>x</b> | y": 2}
    run = make_run(tmp_path, failed_reasons=reasons)
    text = write_report(run).read_text()
    failures = text.split("## Failures")[1].split("## Plots")[0]
    assert "6 failed, by reason (most common first, at most 2):" in failures
    assert "| device gpu0 failed | 4 |" in failures
    assert "| &lt;b&gt;x&lt;/b&gt; \\| y | 2 |" in failures
    assert "out of memory" not in failures  # the run's own tally, not a recount
    assert "failed_reasons" not in text.split("## Failures")[0]  # not a summary metric row


def test_report_reads_jobs_in_bounded_batches(tmp_path: Path, monkeypatch) -> None:
    from scheduler import report

    monkeypatch.setattr(report, "BATCH_ROWS", 8)
    seen: list[int] = []
    original = report.JobStats.add

    def spy(self: Any, jobs: pa.Table) -> None:
        seen.append(jobs.num_rows)
        original(self, jobs)

    monkeypatch.setattr(report.JobStats, "add", spy)
    write_report(make_run(tmp_path, jobs=37))
    assert sum(seen) == 37 and max(seen) <= 8 and len(seen) == 5
