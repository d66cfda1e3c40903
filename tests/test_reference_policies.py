"""The reference policies: the shared contract, and each one's order on a hand-made trace.

Each trace is small enough to work out by hand: cluster jobs hold a GPU for
exactly their duration, so start times follow from the order alone.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.base import available, load_policy
from scheduler.cluster import make_cluster
from scheduler.jobs import Job
from scheduler.pricing import ClusterCost, load_profiles
from tests.builders import attention_job, cluster_job
from tests.simkit import Recorder, run
from tests.test_policy_contract import check_contract, clusters, traces

REFERENCE = ("fifo", "sjf", "las", "drf", "edf", "srtf", "prefix-affinity")
ONE_GPU = make_cluster(1, 1)
TWO_GPUS = make_cluster(1, 2)


def starts(jobs: list[Job], policy: Any, cluster: Any = ONE_GPU) -> dict[str, float]:
    """Start time of each job's completed attempt, after a whole simulated run."""
    recorder = Recorder()
    result = run(jobs, policy, cluster, observer=recorder)
    assert result.exit_code == 0, result.message
    assert all(r.state.value == "done" for r in recorder.finished)
    return {r.id: r.start for r in recorder.finished if r.start is not None}


def records(jobs: list[Job], policy: Any, cluster: Any = ONE_GPU) -> dict[str, Any]:
    recorder = Recorder()
    assert run(jobs, policy, cluster, observer=recorder).exit_code == 0
    return {r.id: r for r in recorder.finished}


def test_every_reference_policy_is_registered() -> None:
    names = available()
    for name in REFERENCE:
        assert names.get(name)
        policy = load_policy(name)
        assert policy.name == name
        doc = sys.modules[type(policy).__module__].__doc__ or ""
        assert re.search(r"\b(19|20)\d\d\b|'\d\d\b", doc), name  # cites its source


@pytest.mark.parametrize("policy", REFERENCE)
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.function_scoped_fixture])
@given(jobs=traces(), cluster=clusters, seed=st.integers(0, 3))
def test_reference_policy_keeps_the_contract(policy, jobs, cluster, seed) -> None:
    check_contract(jobs, cluster, policy, seed)


def test_fifo_runs_in_arrival_order_and_the_head_blocks() -> None:
    # One node, two GPUs: c0 holds one GPU until 10; c1 needs both; c2 needs one.
    jobs: list[Job] = [cluster_job(id="c0", duration=10.0),
                       cluster_job(id="c1", submit_time=0.1, duration=1.0, gpus=2),
                       cluster_job(id="c2", submit_time=0.2, duration=1.0)]
    assert starts(jobs, load_policy("fifo"), TWO_GPUS) == {"c0": 0.0, "c1": 10.0, "c2": 11.0}
    backfill = load_policy("fifo", {"backfill": "true"})
    assert starts(jobs, backfill, TWO_GPUS) == {"c0": 0.0, "c1": 10.0, "c2": 0.2}


def test_sjf_runs_the_shortest_predicted_first() -> None:
    jobs: list[Job] = [cluster_job(id="long", duration=3.0),
                       cluster_job(id="short", duration=1.0),
                       cluster_job(id="mid", duration=2.0)]
    assert starts(jobs, load_policy("sjf")) == {"short": 0.0, "mid": 1.0, "long": 3.0}
    assert starts(jobs, load_policy("fifo")) == {"long": 0.0, "short": 3.0, "mid": 4.0}


def test_sjf_sizes_attention_jobs_with_the_cost_model() -> None:
    jobs: list[Job] = [attention_job(id=f"k{n}", kv_len=n, q_len=n, layers=8)
                       for n in (8192, 512, 2048)]
    cost = ClusterCost(ONE_GPU, load_profiles(ONE_GPU))
    assert sorted(jobs, key=cost.best_seconds)[0].id == "k512"
    got = starts(jobs, load_policy("sjf"))
    assert sorted(got, key=got.__getitem__) == ["k512", "k2048", "k8192"]


def test_edf_runs_the_earliest_deadline_first() -> None:
    jobs: list[Job] = [cluster_job(id="none", duration=1.0),
                       cluster_job(id="late", duration=1.0, deadline=50.0),
                       cluster_job(id="soon", submit_time=0.0, duration=1.0, deadline=5.0),
                       cluster_job(id="block", duration=1.0)]
    got = starts(jobs, load_policy("edf"))
    assert got == {"soon": 0.0, "late": 1.0, "none": 2.0, "block": 3.0}


def test_las_serves_the_tenant_with_least_attained_service() -> None:
    # At t=5 tenant a has had 5 GPU-seconds, b none: b's job passes a's older one.
    jobs: list[Job] = [cluster_job(id="a1", duration=5.0, tenant="a"),
                       cluster_job(id="a2", submit_time=0.1, duration=1.0, tenant="a"),
                       cluster_job(id="b1", submit_time=0.2, duration=1.0, tenant="b")]
    assert starts(jobs, load_policy("las")) == {"a1": 0.0, "b1": 5.0, "a2": 6.0}
    assert starts(jobs, load_policy("fifo")) == {"a1": 0.0, "a2": 5.0, "b1": 6.0}


def test_las_promotes_a_starving_job() -> None:
    # a2 has waited 10x its own size by t=5 (promote=4.5 x 1 s): back to the top queue.
    jobs: list[Job] = [cluster_job(id="a1", duration=5.0, tenant="a"),
                       cluster_job(id="a2", submit_time=0.1, duration=1.0, tenant="a"),
                       cluster_job(id="b1", submit_time=0.2, duration=1.0, tenant="b")]
    got = starts(jobs, load_policy("las", {"promote": "4.5"}))
    assert got == {"a1": 0.0, "a2": 5.0, "b1": 6.0}


def test_drf_offers_the_free_gpu_to_the_smallest_dominant_share() -> None:
    # At t=0.1 tenant a holds one of two GPUs (share 0.5), b nothing: b goes first.
    jobs: list[Job] = [cluster_job(id="a1", duration=10.0, tenant="a"),
                       cluster_job(id="a2", submit_time=0.1, duration=1.0, tenant="a"),
                       cluster_job(id="b1", submit_time=0.1, duration=1.0, tenant="b")]
    assert starts(jobs, load_policy("drf"), TWO_GPUS) == {"a1": 0.0, "b1": 0.1, "a2": 1.1}


def test_drf_weighs_cpu_when_cpu_dominates() -> None:
    # b holds no GPU but 60 CPUs; as drf sees the node (2 GPUs x 16 CPUs) that is
    # a dominant share of 1.9, above a's 1 of 2 GPUs: a goes first though b2 came first.
    jobs: list[Job] = [cluster_job(id="a1", duration=10.0, tenant="a"),
                       cluster_job(id="b1", duration=10.0, gpus=0, cpus=60.0, tenant="b"),
                       cluster_job(id="b2", submit_time=0.1, duration=1.0, tenant="b"),
                       cluster_job(id="a2", submit_time=0.1, duration=1.0, tenant="a")]
    cluster = make_cluster(1, 2, cpus_per_node=64.0)
    got = starts(jobs, load_policy("drf"), cluster)
    assert (got["a2"], got["b2"]) == (0.1, 1.1)
    got = starts(jobs, load_policy("fifo", {"backfill": "true"}), cluster)
    assert (got["b2"], got["a2"]) == (0.1, 1.1)


def test_srtf_preempts_a_long_batch_for_a_short_job() -> None:
    long_job = attention_job(id="long", q_len=16384, kv_len=16384, layers=32, heads=32,
                             kv_heads=8, head_dim=128)
    cost = ClusterCost(ONE_GPU, load_profiles(ONE_GPU))
    long_s = cost.best_seconds(long_job)
    short = attention_job(id="short", submit_time=long_s / 10)
    assert cost.best_seconds(short) * 2 < long_s * 0.9  # worth preempting by the rule
    got = records([long_job, short], load_policy("srtf"))
    assert got["short"].start == pytest.approx(long_s / 10)
    assert got["long"].attempts == 2  # stopped once, restarted from zero
    assert got["long"].start == pytest.approx(got["short"].end)
    calm = records([long_job, short], load_policy("srtf", {"preempt_ratio": "0"}))
    assert calm["long"].attempts == 1 and calm["short"].start == pytest.approx(long_s)


def test_srtf_leaves_a_batch_that_is_mostly_done() -> None:
    long_job = attention_job(id="long", q_len=16384, kv_len=16384, layers=32, heads=32,
                             kv_heads=8, head_dim=128)
    cost = ClusterCost(ONE_GPU, load_profiles(ONE_GPU))
    long_s = cost.best_seconds(long_job)
    short = attention_job(id="short", submit_time=long_s * 0.6)  # past half: finish it
    got = records([long_job, short], load_policy("srtf"))
    assert got["long"].attempts == 1
    assert got["short"].start == pytest.approx(long_s)
