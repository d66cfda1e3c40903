"""Run outputs: jobs.parquet, telemetry.parquet, decisions.jsonl and summary.json.

Finished jobs stream to disk in row groups and leave memory; the summary is
built from compact arrays, so a run of a million jobs stays small. Each file is
written as ``NAME.partial`` and renamed when the run ends (or stops on an
error), so a killed run never leaves a truncated file under its final name. Every
output is deterministic for a deterministic run: wall-clock figures go to a
separate ``run.json``, never into these files.
"""

from __future__ import annotations

import json
import math
from array import array
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from scheduler.costmodel import total_flops
from scheduler.inputfiles import MAX_ECHO
from scheduler.jobs import AttentionJob
from scheduler.records import DecisionRecord, Sink
from scheduler.state import JobRecord, JobState
from scheduler.view import Telemetry

PARTIAL = ".partial"  # suffix of an output still being written
ROWS_PER_GROUP = 16_384  # rows buffered in Python lists before a flush: the bound on them
TOP_REASONS = 5  # failure reasons the summary names, most common first
# Distinct reasons counted one by one; reasons often name a job ("dependency 'j7'
# failed"), so past this many the rest share one bucket and memory stays bounded.
MAX_REASONS = 1_000
OTHER_REASONS = "(other reasons)"
NO_REASON = "(no reason given)"
JOB_SCHEMA = pa.schema([
    ("id", pa.string()), ("tenant", pa.string()), ("kind", pa.string()),
    ("submit", pa.float64()), ("start", pa.float64()), ("end", pa.float64()),
    ("jct", pa.float64()), ("queue_delay", pa.float64()), ("device", pa.string()),
    ("node", pa.string()), ("batch_size", pa.int64()), ("attempts", pa.int64()),
    ("status", pa.string()), ("flops", pa.float64()), ("reason", pa.string()),
    ("deadline", pa.float64()), ("slowdown", pa.float64()),
    ("cached_tokens", pa.int64()),  # of its prompt, resident where it ran (kvcache.py)
])
TELEMETRY_SCHEMA = pa.schema([
    ("time", pa.float64()), ("device", pa.string()), ("node", pa.string()),
    ("util", pa.float64()), ("mem_used", pa.int64()), ("mem_total", pa.int64()),
    ("queue_len", pa.int64()), ("running", pa.int64()), ("achieved_flops", pa.float64()),
    ("cache_bytes", pa.int64()), ("cache_hit_rate", pa.float64()),
])


# Actions that start jobs: who placed how many is counted from them (summary's placed_by).
PLACING = frozenset({"place", "offload"})


def partial(path: Path) -> Path:
    """Where an output is written until the run finishes: a run killed midway leaves
    ``NAME.partial``, never a truncated file under the final name."""
    return path.with_name(path.name + PARTIAL)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all (a temporary file renamed over ``path``)."""
    temporary = partial(path)
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


class _Table:
    """Columns buffered in memory and flushed to a Parquet file in row groups."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.schema, self.path = schema, path
        self.columns: dict[str, list[Any]] = {f.name: [] for f in schema}
        self.writer = pq.ParquetWriter(partial(path), schema, compression="zstd")
        self.rows = 0

    def append(self, row: tuple[Any, ...]) -> None:
        for column, value in zip(self.columns.values(), row, strict=True):
            column.append(value)
        self.rows += 1
        if len(self.columns["device"]) >= ROWS_PER_GROUP:
            self.flush()

    def flush(self) -> None:
        if self.columns["device"] or self.rows == 0:
            self.writer.write_table(pa.table(self.columns, schema=self.schema))
            self.columns = {f.name: [] for f in self.schema}

    def close(self) -> None:
        if self.writer.is_open:
            self.flush()
            self.writer.close()
            partial(self.path).replace(self.path)


class _DecisionLog:
    """decisions.jsonl: a line per record, and a run of records alike in all but their
    time as one line with ``count`` and ``t_last`` (a policy that defers every tick
    writes a line, not one per tick)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = partial(path).open("w", encoding="utf-8")
        self.held: dict[str, Any] | None = None  # the run's row, less its time
        self.first = self.last = 0.0
        self.count = 0

    def write(self, record: DecisionRecord) -> None:
        row = record.row()
        t = row.pop("t")
        if row == self.held:
            self.count += 1
            self.last = t
            return
        self.flush()
        self.held, self.first, self.last, self.count = row, t, t, 1

    def flush(self) -> None:
        if self.held is None:
            return
        line = {"t": self.first, **self.held}
        if self.count > 1:
            line.update(count=self.count, t_last=self.last)
        self.file.write(json.dumps(line, separators=(",", ":")) + "\n")
        self.held = None

    def close(self) -> None:
        if not self.file.closed:
            self.flush()
            self.file.close()
            partial(self.path).replace(self.path)


class RunOutputs(Sink):
    """The controller's sink for a run with ``--out DIR``; also builds the summary."""

    def __init__(self, out: Path | None, node_of: dict[str, str],
                 observer: Sink | None = None) -> None:
        self.out = out
        self.observer = observer  # sees every record too (tests, live progress)
        self.node_of = node_of
        self.jct, self.queue, self.slowdown = array("d"), array("d"), array("d")
        self.first_submit = math.inf
        self.last_end = 0.0
        self.completed = self.failed = 0
        self.flops = 0.0
        self.slo_total = self.slo_met = 0
        self.prompt_tokens = self.cached_tokens = 0  # of prefills with prefix blocks
        self.tenant_slowdown: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.decisions = {"applied": 0, "rejected": 0, "error": 0}
        self.placed_by: dict[str, int] = {}  # policy -> jobs it placed (a fallback's too)
        self.reasons: dict[str, int] = {}
        self._jobs: _Table | None = None
        self._telemetry: _Table | None = None
        self._decisions: _DecisionLog | None = None
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            self._jobs = _Table(out / "jobs.parquet", JOB_SCHEMA)
            self._telemetry = _Table(out / "telemetry.parquet", TELEMETRY_SCHEMA)
            self._decisions = _DecisionLog(out / "decisions.jsonl")

    def job_finished(self, record: JobRecord) -> None:
        if self.observer is not None:
            self.observer.job_finished(record)
        job = record.job
        done = record.state is JobState.DONE
        end = record.end if record.end is not None else job.submit_time
        self.first_submit = min(self.first_submit, job.submit_time)
        jct = end - job.submit_time if done else None
        queue = (record.start - record.ready_time) if record.start is not None and done else None
        slowdown = None
        flops = total_flops(job) if done else 0.0
        if done and jct is not None:
            self.completed += 1
            self.last_end = max(self.last_end, end)
            self.jct.append(jct)
            self.queue.append(queue or 0.0)
            slowdown = jct / record.solo_seconds if record.solo_seconds > 0 else 1.0
            self.slowdown.append(slowdown)
            per_tenant = self.tenant_slowdown[job.tenant]
            per_tenant[0] += slowdown
            per_tenant[1] += 1
            self.flops += flops
        else:
            self.failed += 1
            self._count_reason(record.reason)
        if done and isinstance(job, AttentionJob) and job.block_tokens:
            self.prompt_tokens += job.q_len
            self.cached_tokens += record.cached_tokens
        if job.deadline is not None:
            self.slo_total += 1
            self.slo_met += bool(done and jct is not None and jct <= job.deadline)
        if self._jobs is not None:
            self._jobs.append((job.id, job.tenant, job.kind.value, job.submit_time,
                               record.start if done else None, record.end, jct, queue,
                               record.device, record.node, record.batch_size, record.attempts,
                               "done" if done else "failed", flops, record.reason,
                               job.deadline, slowdown, record.cached_tokens))

    def _count_reason(self, reason: str | None) -> None:
        text = reason or NO_REASON
        if len(text) > MAX_ECHO:
            text = text[:MAX_ECHO - 1] + "…"
        if text not in self.reasons and len(self.reasons) >= MAX_REASONS:
            text = OTHER_REASONS
        self.reasons[text] = self.reasons.get(text, 0) + 1

    def failed_reasons(self) -> dict[str, int]:
        """Reason → jobs that did not complete, most common first (ties by reason)."""
        top = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_REASONS]
        return dict(top)

    def decision(self, record: DecisionRecord) -> None:
        if self.observer is not None:
            self.observer.decision(record)
        self.decisions[record.outcome] = self.decisions.get(record.outcome, 0) + 1
        if record.outcome == "applied" and record.action in PLACING and record.jobs:
            self.placed_by[record.policy] = self.placed_by.get(record.policy, 0) + len(
                record.jobs)
        if self._decisions is not None:
            self._decisions.write(record)

    def telemetry(self, samples: list[Telemetry]) -> None:
        if self._telemetry is None:
            return
        for s in samples:
            self._telemetry.append((s.time, s.device, self.node_of.get(s.device), s.util,
                                    s.mem_used, s.mem_total, s.queue_len, s.running,
                                    s.achieved_flops, s.cache_bytes, s.cache_hit_rate))

    def summary(self, **extra: Any) -> dict[str, Any]:
        """The run's figures; ``extra`` adds policy, mode, device_util_mean and context."""
        jct = np.frombuffer(self.jct, dtype=np.float64)
        makespan = self.last_end - self.first_submit if self.completed else 0.0
        shares = [1.0 / (total / n) for total, n in self.tenant_slowdown.values() if n]
        jain = (sum(shares) ** 2 / (len(shares) * sum(x * x for x in shares))) if shares else None

        def stat(values: array[float], fn: Any) -> float | None:
            return float(fn(np.frombuffer(values, dtype=np.float64))) if len(values) else None

        span = extra.get("makespan_wall_s", makespan)
        summary: dict[str, Any] = {
            "policy": extra.pop("policy"), "mode": extra.pop("mode"),
            "jobs_total": self.completed + self.failed, "jobs_completed": self.completed,
            "jobs_failed": self.failed, "failed_reasons": self.failed_reasons(),
            "jct_mean": stat(self.jct, np.mean),
            "jct_p50": float(np.percentile(jct, 50)) if len(jct) else None,
            "jct_p99": float(np.percentile(jct, 99)) if len(jct) else None,
            "queue_delay_mean": stat(self.queue, np.mean),
            "slowdown_mean": stat(self.slowdown, np.mean),
            "makespan": makespan,
            "throughput_jobs_per_s": self.completed / makespan if makespan > 0 else None,
            # Compute per real second: live, the wall clock (a trace second is 1/--speed).
            "achieved_tflops": self.flops / span / 1e12 if span > 0 else None,
            "device_util_mean": extra.pop("device_util_mean", None),
            "jain_fairness": jain,
            "slo_attainment": self.slo_met / self.slo_total if self.slo_total else None,
            "decisions": dict(self.decisions),
            "placed_by": dict(self.placed_by),
        }
        if self.prompt_tokens:  # a trace with prefix blocks: share of their prompts cached
            summary["cache_hit_rate"] = self.cached_tokens / self.prompt_tokens
        summary.update(extra)
        return summary

    def abort(self) -> None:
        """Close the files written so far (valid, but partial); write no summary."""
        for table in (self._jobs, self._telemetry):
            if table is not None:
                table.close()
        if self._decisions is not None:
            self._decisions.close()

    def close(self, summary: dict[str, Any], run_info: dict[str, Any]) -> None:
        if self.out is None:
            return
        self.abort()
        write_atomic(self.out / "summary.json", json.dumps(_ordered(summary), indent=1) + "\n")
        write_atomic(self.out / "run.json", json.dumps(run_info, indent=1, sort_keys=True) + "\n")


def _ordered(summary: dict[str, Any]) -> dict[str, Any]:
    """Keys sorted at every level (stable bytes), except ``failed_reasons``, whose order
    (most common first) is its meaning."""
    def sort(value: Any) -> Any:
        if isinstance(value, list):
            return [sort(v) for v in value]
        return {k: sort(value[k]) for k in sorted(value)} if isinstance(value, dict) else value

    return {k: dict(v) if k == "failed_reasons" and isinstance(v, dict) else sort(v)
            for k, v in sorted(summary.items())}
