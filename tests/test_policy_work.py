"""Policy work per decision does not grow with the queue.

A deep queue is where a scheduler's decision cost shows: every built-in
policy must look a bounded distance into it (a window of jobs, of tenants),
whatever it holds. Work is counted, not timed: calls the policy makes to the
cost model and to the job records (``view.ready_time``, ``view.info``) in one
``decide``, on the same cluster with queues 8 times apart, both deeper than any window.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from policies.base import BUILT_IN, load_policy
from scheduler.cluster import make_cluster
from scheduler.decisions import Decisions
from scheduler.jobs import Job
from scheduler.view import View
from tests.builders import attention_job
from tests.snapshots import view

CLUSTER = make_cluster(2, 4, cpu_nodes=1)
ONE_FREE_GPU = {f"gpu-{n}/gpu{g}": [attention_job(id=f"r{n}{g}")]
                for n in range(2) for g in range(4) if (n, g) != (0, 0)}


class CountingCost:
    """The view's cost model, counting every call a policy makes to it."""

    def __init__(self, inner: Any, counts: collections.Counter[str]) -> None:
        self._inner, self._counts = inner, counts

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._counts[name] += 1
            return attr(*args, **kwargs)
        return call


class CountingRecords(Mapping[str, Any]):
    """The view's job records (behind ``ready_time`` and ``info``), counting lookups."""

    def __init__(self, inner: Mapping[str, Any], counts: collections.Counter[str]) -> None:
        self._inner, self._counts = inner, counts

    def __getitem__(self, key: str) -> Any:
        self._counts["record"] += 1
        return self._inner[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._inner)

    def __len__(self) -> int:
        return len(self._inner)


def queue(n: int, tenants: int) -> list[Job]:
    return [attention_job(id=f"p{i}", submit_time=i * 1e-3, tenant=f"t{i % tenants}",
                          q_len=128 * (1 + i % 7), kv_len=128 * (1 + i % 7)) for i in range(n)]


def work(policy: str, n: int, tenants: Callable[[int], int],
         running: Mapping[str, Sequence[Job]]) -> tuple[int, int]:
    """(calls, jobs placed) of one decision over ``n`` pending jobs."""
    counts: collections.Counter[str] = collections.Counter()
    snapshot: View = view(queue(n, max(1, tenants(n))), cluster=CLUSTER, running=running,
                          now=5.0)
    snapshot = dataclasses.replace(snapshot, cost=CountingCost(snapshot.cost, counts),
                                   _records=CountingRecords(snapshot._records, counts))
    decisions = load_policy(policy).decide(snapshot)
    actions = decisions.actions if isinstance(decisions, Decisions) else decisions
    return sum(counts.values()), sum(len(getattr(a, "jobs", ())) for a in actions)


SCENARIOS = {
    "one tenant, every device free": (lambda n: 1, {}),
    "one tenant, one GPU free": (lambda n: 1, ONE_FREE_GPU),
    "a tenant per two jobs, one GPU free": (lambda n: n // 2, ONE_FREE_GPU),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("policy", BUILT_IN)
def test_work_per_decision_is_flat_in_the_queue(policy: str, scenario: str) -> None:
    tenants, running = SCENARIOS[scenario]
    small, placed_small = work(policy, 800, tenants, running)
    large, placed_large = work(policy, 6_400, tenants, running)
    assert placed_small > 0 and placed_large > 0  # the count is of a decision that did work
    assert large <= small * 1.1 + 16, (small, large)
