"""Small clusters, scripted policies and a one-call simulator for tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from scheduler.cluster import ClusterSpec, make_cluster
from scheduler.controller import Controller
from scheduler.decisions import Action, Decisions
from scheduler.jobs import Job
from scheduler.pricing import ClusterCost, load_profiles
from scheduler.records import DecisionRecord, Sink
from scheduler.sim.runner import RunResult, SimConfig, simulate
from scheduler.state import JobRecord
from scheduler.view import View


class Recorder(Sink):
    """Keeps every finished record and decision row, for assertions."""

    def __init__(self) -> None:
        self.finished: list[JobRecord] = []
        self.rows: list[dict[str, Any]] = []  # as decisions.jsonl has them
        self.records: list[DecisionRecord] = []

    def job_finished(self, record: JobRecord) -> None:
        self.finished.append(record)

    def decision(self, record: DecisionRecord) -> None:
        self.records.append(record)
        self.rows.append(record.row())


class Scripted:
    """A policy whose decide() is a plain function: for table-driven controller tests."""

    name = "scripted"
    description = "test policy"

    def __init__(self, fn: Callable[[View], Any]) -> None:
        self.fn = fn

    def decide(self, view: View) -> Decisions | Sequence[Action]:
        return self.fn(view)  # type: ignore[no-any-return]


def controller(policy: Any, cluster: ClusterSpec | None = None, **kw: Any
               ) -> tuple[Controller, Recorder]:
    spec = cluster or make_cluster(1, 2, cpu_nodes=1)
    sink = Recorder()
    ctl = Controller(spec, ClusterCost(spec, load_profiles(spec)), policy,
                     policy_name=getattr(policy, "name", "p"), sink=sink, **kw)
    return ctl, sink


def run(jobs: Iterable[Job], policy: Any, cluster: ClusterSpec | None = None,
        out: Path | None = None, **config: Any) -> RunResult:
    spec = cluster or make_cluster(1, 2, cpu_nodes=1)
    return simulate(jobs, spec, load_profiles(spec), policy, getattr(policy, "name", "p"), out,
                    SimConfig(**config))
