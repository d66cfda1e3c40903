"""Each built-in policy's decision on views built by hand: no controller, no run.

A policy is a pure function of its view, so these tests state the queue and
what runs where, call ``decide`` once and check what it placed.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.base import BUILT_IN, available, load_policy
from scheduler.cluster import make_cluster
from scheduler.decisions import Decisions, Place
from scheduler.jobs import Job
from scheduler.view import View
from tests.builders import attention_job
from tests.snapshots import view

ONE_GPU, TWO_GPUS = make_cluster(1, 1), make_cluster(1, 2)
GPU0, GPU1 = "gpu-0/gpu0", "gpu-0/gpu1"


def placed(policy: str, snapshot: View, **options: str) -> list[tuple[tuple[str, ...], str]]:
    decisions = load_policy(policy, options or None).decide(snapshot)
    actions = decisions.actions if isinstance(decisions, Decisions) else decisions
    return [(a.jobs, a.device) for a in actions if isinstance(a, Place)]


def test_every_built_in_policy_is_covered() -> None:
    assert set(BUILT_IN) <= set(available())


shapes = st.builds(lambda i, q, hd, tenant, when: attention_job(
    id=f"j{i}", q_len=q, kv_len=q, head_dim=hd, tenant=tenant, submit_time=when),
    st.integers(0, 10**6), st.sampled_from([64, 128, 1024]), st.sampled_from([64, 128]),
    st.sampled_from(["a", "b"]), st.floats(0, 5))


@pytest.mark.parametrize("policy", BUILT_IN)
@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(queue=st.lists(shapes, max_size=12, unique_by=lambda j: j.id), busy=st.booleans())
def test_a_policy_places_only_pending_jobs_once_on_free_devices(
        policy: str, queue: list[Job], busy: bool) -> None:
    queue.sort(key=lambda j: j.submit_time)
    running = {GPU1: [attention_job(id="running")]} if busy else None
    snapshot = view(queue, cluster=TWO_GPUS, running=running, now=5.0)
    places = placed(policy, snapshot)
    jobs = [j for batch, _ in places for j in batch]
    assert len(jobs) == len(set(jobs))
    assert set(jobs) <= {j.id for j in queue}
    devices = [device for _, device in places]
    assert len(devices) == len(set(devices)) and set(devices) <= set(snapshot.free)
    if queue and policy != "static":  # static waits for each job's own device
        assert places, "a free device and a queue, but nothing placed"


def test_fifo_starts_the_oldest_job_first() -> None:
    queue = [attention_job(id="old", submit_time=0.0), attention_job(id="new", submit_time=1.0)]
    assert placed("fifo", view(queue, cluster=ONE_GPU, now=1.0)) == [(("old",), GPU0)]


@pytest.mark.parametrize("policy", ["sjf", "srtf"])
def test_shortest_predicted_job_goes_first(policy: str) -> None:
    queue = [attention_job(id="long", q_len=4096, kv_len=4096, submit_time=0.0),
             attention_job(id="short", head_dim=128, submit_time=1.0)]
    assert placed(policy, view(queue, cluster=ONE_GPU, now=1.0)) == [(("short",), GPU0)]


def test_edf_puts_a_deadline_ahead_of_older_jobs_without_one() -> None:
    queue = [attention_job(id="no-slo", submit_time=0.0),
             attention_job(id="slo", head_dim=128, submit_time=1.0, deadline=5.0)]
    assert placed("edf", view(queue, cluster=ONE_GPU, now=1.0)) == [(("slo",), GPU0)]


def test_greedy_packs_identical_shapes_and_sends_another_shape_elsewhere() -> None:
    queue = [attention_job(id="a"), attention_job(id="b"), attention_job(id="c", head_dim=128)]
    got = placed("greedy", view(queue, cluster=TWO_GPUS))
    assert sorted(got) == [(("a", "b"), GPU0), (("c",), GPU1)]


def test_static_waits_for_a_jobs_own_device_even_when_another_is_free() -> None:
    job = attention_job(id="bound")
    free = view([job], cluster=TWO_GPUS)
    [(_, target)] = placed("static", free)
    other = GPU1 if target == GPU0 else GPU0
    busy = view([job], cluster=TWO_GPUS, running={target: [attention_job(id="running")]})
    assert other in busy.free and placed("static", busy) == []


def fair_queue() -> list[Job]:
    return [attention_job(id="a1", tenant="a", submit_time=0.0),
            attention_job(id="a2", tenant="a", head_dim=128, submit_time=0.0),
            attention_job(id="b1", tenant="b", q_len=256, kv_len=256, submit_time=0.0)]


def test_drf_offers_the_second_device_to_the_tenant_with_the_smaller_share() -> None:
    got = placed("drf", view(fair_queue(), cluster=TWO_GPUS))
    assert sorted(j for batch, _ in got for j in batch) == ["a1", "b1"]


@pytest.mark.parametrize(("attained", "first"), [((("a", 0.0), ("b", 0.0)), "a1"),
                                                 ((("a", 100.0), ("b", 0.0)), "b1")])
def test_las_serves_the_least_served_tenant_first(attained: object, first: str) -> None:
    got = placed("las", view(fair_queue(), cluster=ONE_GPU, state=attained))
    assert got == [((first,), GPU0)]


def test_adaptive_packs_compatible_jobs_into_one_batch() -> None:
    queue = [attention_job(id=f"p{i}", q_len=64 * (i + 1), kv_len=64 * (i + 1))
             for i in range(4)]
    got = placed("adaptive", view(queue, cluster=ONE_GPU))
    assert len(got) == 1 and sorted(got[0][0]) == ["p0", "p1", "p2", "p3"]


def test_adaptive_packs_only_when_some_waiting_job_has_no_free_gpu_of_its_own() -> None:
    two = [attention_job(id=f"p{i}", q_len=64 * (i + 1), kv_len=64 * (i + 1))
           for i in range(2)]
    assert sorted(placed("adaptive", view(two, cluster=TWO_GPUS))) == [
        (("p0",), GPU0), (("p1",), GPU1)]
    three = [*two, attention_job(id="p2", q_len=192, kv_len=192)]
    got = placed("adaptive", view(three, cluster=TWO_GPUS))
    assert sorted(j for batch, _ in got for j in batch) == ["p0", "p1", "p2"]
    assert max(len(batch) for batch, _ in got) >= 2
    # a free CPU is no GPU of its own: two jobs, one GPU and a CPU free, still pack
    with_cpu = make_cluster(1, 1, cpu_nodes=1)
    assert [len(batch) for batch, _ in placed("adaptive", view(two, cluster=with_cpu))] == [2]
