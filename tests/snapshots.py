"""Views for policy unit tests, built directly: no controller, no run.

A policy is a pure function of its view, so its tests need only the state
they are about: the queue, what runs where, the latest telemetry. The view
comes from the same :class:`~scheduler.snapshot.ViewBuilder` the controller
uses, over a :class:`JobBook` and a :class:`Capacity` filled here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.capacity import Capacity
from scheduler.cluster import ClusterSpec, make_cluster
from scheduler.jobbook import JobBook
from scheduler.jobs import Job
from scheduler.pricing import ClusterCost, load_profiles
from scheduler.records import Sink
from scheduler.snapshot import ViewBuilder
from scheduler.state import Batch, JobRecord, JobState
from scheduler.view import Telemetry, View


def view(pending: Sequence[Job] = (), *, cluster: ClusterSpec | None = None,
         running: Mapping[str, Sequence[Job]] | None = None,
         telemetry: Sequence[Telemetry] = (), now: float = 0.0, event: str = "arrival",
         state: Any = None, seed: int = 0, slots: int = 1,
         cached: Mapping[str, Sequence[Job]] | None = None, detached: bool = False) -> View:
    """``pending`` queued in order; ``running``: device -> jobs running there as one
    batch started at 0; ``telemetry``: the latest sample per device, as given;
    ``cached``: device -> prefills that ran there, their prompt blocks kept."""
    spec = cluster or make_cluster(1, 2, cpu_nodes=1)
    cost = ClusterCost(spec, load_profiles(spec))
    jobs, capacity = JobBook(cost, Sink(), None, max_attempts=5), Capacity(spec, cost, slots)
    for job in pending:
        record = JobRecord(job, ready_time=job.submit_time)
        jobs.records[job.id] = record
        jobs.enqueue(record, now)
    for n, (device, batch_jobs) in enumerate((running or {}).items()):
        memory = sum(cost.memory(j, device) for j in batch_jobs)
        flops = sum(cost.flops(j, device) for j in batch_jobs)
        batch = Batch(f"running{n}", device, tuple(j.id for j in batch_jobs), 0.0,
                      cost.seconds(batch_jobs, device), 1.0 / slots, memory, flops)
        capacity.book(batch)
        for job in batch_jobs:
            jobs.records[job.id] = JobRecord(job, JobState.RUNNING, start=0.0, device=device,
                                             batch=batch.id, attempts=1)
    for device, done in (cached or {}).items():
        for job in done:
            capacity.caches.keep(job, device)
    builder = ViewBuilder(jobs, capacity, {s.device: s for s in telemetry}, cost)
    return builder.build(now, event, seed, state, detached)
