"""Summary statistics of a trace, computed in one streaming pass."""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from scheduler.costmodel import total_flops
from scheduler.jobs import AttentionJob, ClusterJob, Job, JobKind

PERCENTILES = (50, 90, 99)


def _summary(values: array[Any]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.frombuffer(values, dtype=np.float64)
    out = {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}
    out.update(mean=float(arr.mean()), max=float(arr.max()), min=float(arr.min()))
    return out


def trace_stats(jobs: Iterable[Job]) -> dict[str, Any]:
    """Counts, time span, arrival rate, shape percentiles, FLOPs and tenants.

    A *request* is a job that depends on nothing: for token traces that is a
    prefill (its decode depends on it); for other traces every job.
    """
    kinds: Counter[str] = Counter()
    tenants: Counter[str] = Counter()
    first = last = None
    requests = 0
    flops = 0.0
    gpu_seconds = 0.0
    series: dict[str, array[Any]] = {name: array("d") for name in (
        "prompt_tokens", "decode_steps", "train_seq", "train_batch", "duration", "gpus")}
    for job in jobs:
        kinds[job.kind.value] += 1
        tenants[job.tenant] += 1
        first = job.submit_time if first is None else first
        last = job.submit_time
        requests += job.depends_on is None
        flops += total_flops(job)
        if isinstance(job, ClusterJob):
            series["duration"].append(job.duration)
            gpu_seconds += job.gpus * job.gpu_fraction * job.duration
            series["gpus"].append(job.gpus * job.gpu_fraction)
            continue
        assert isinstance(job, AttentionJob)
        if job.kind is JobKind.PREFILL:
            series["prompt_tokens"].append(job.q_len)
        elif job.kind is JobKind.DECODE:
            series["decode_steps"].append(job.steps)
        else:
            series["train_seq"].append(job.q_len)
            series["train_batch"].append(job.batch)
    jobs_total = sum(kinds.values())
    span = (last - first) if first is not None and last is not None else 0.0
    return {
        "jobs": jobs_total,
        "requests": requests,
        "kinds": dict(sorted(kinds.items())),
        "first_submit_s": first,
        "last_submit_s": last,
        "span_s": span,
        "arrival_rate_per_s": requests / span if span > 0 else None,
        "total_flops": flops,
        "cluster_gpu_hours": gpu_seconds / 3600,
        "tenants": dict(tenants.most_common()),
        "distributions": {name: s for name, values in series.items()
                          if (s := _summary(values)) is not None},
    }
