"""Placing cluster jobs (pods): host CPUs and memory, best fit, and adaptive's ordering.

Each trace is worked out by hand: cluster jobs hold their GPUs for exactly
their duration, so start times follow from where and in what order they go.
"""

from __future__ import annotations

from typing import Any

import pytest

from policies.base import BUILT_IN, load_policy
from policies.common import BestFit, place_cluster_job
from scheduler.cluster import make_cluster
from scheduler.decisions import Decisions
from scheduler.jobs import Job
from tests.builders import cluster_job
from tests.simkit import Recorder, Scripted, controller, run

TWO_BY_TWO = make_cluster(2, 2, cpus_per_node=8.0)


def starts_and_rejections(jobs: list[Job], policy: Any, cluster: Any) -> tuple[dict[str, float],
                                                                           int]:
    recorder = Recorder()
    result = run(jobs, policy, cluster, observer=recorder)
    assert result.exit_code == 0, result.message
    assert all(r.state.value == "done" for r in recorder.finished)
    rejected = sum(row["outcome"] == "rejected" for row in recorder.rows)
    return {r.id: r.start for r in recorder.finished if r.start is not None}, rejected


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_pod_skips_the_node_whose_cpus_are_taken(name: str) -> None:
    # hog takes all 8 CPUs of the first node but one of its GPUs; the pod needs 4 CPUs.
    # Blind to the host, a policy offers the first node's free GPU and is rejected there
    # every round until hog ends at 100; seeing it, the pod starts at once on the other.
    jobs: list[Job] = [cluster_job(id="hog", duration=100.0, cpus=8.0),
                       cluster_job(id="pod", submit_time=1.0, duration=1.0, cpus=4.0)]
    starts, rejected = starts_and_rejections(jobs, load_policy(name), TWO_BY_TWO)
    assert starts == {"hog": 0.0, "pod": 1.0}
    assert rejected == 0


def test_the_view_shows_each_nodes_free_host_resources() -> None:
    seen: list[dict[str, tuple[float, int, bool]]] = []

    def decide(view: Any) -> Decisions:
        seen.append({n: (v.cpus_free, v.memory_free, v.fits(4.0, 0))
                     for n, v in view.nodes.items()})
        job = next(iter(view.pending.values()))
        place = place_cluster_job(view, job, set(), "first fit")
        return Decisions((place,) if place else ())

    ctl, _ = controller(Scripted(decide), TWO_BY_TWO)
    ctl.submit(cluster_job(id="a", cpus=6.0, memory_bytes=2**30), 0.0)
    ctl.decide(0.0, "arrival")
    ctl.submit(cluster_job(id="b", submit_time=0.5, cpus=1.0), 0.5)
    ctl.decide(0.5, "arrival")
    first, second = seen
    assert first == {"gpu-0": (8.0, 512 * 2**30, True), "gpu-1": (8.0, 512 * 2**30, True)}
    assert second["gpu-0"] == (2.0, 511 * 2**30, False)  # a holds 6 CPUs and 1 GiB there
    assert second["gpu-1"] == (8.0, 512 * 2**30, True)


def test_best_fit_keeps_a_whole_node_free_for_a_gang() -> None:
    # wide holds both GPUs of gpu-0 until 1; long holds one GPU of gpu-1 from 0.1.
    # At 3, one: first fit takes gpu-0 (the first node with room), best fit the
    # fuller gpu-1. At 4, pair needs two GPUs of one node: after first fit no node
    # has two free until long ends at ~100; after best fit gpu-0 has both.
    jobs: list[Job] = [cluster_job(id="wide", duration=1.0, gpus=2),
                       cluster_job(id="long", submit_time=0.1, duration=100.0),
                       cluster_job(id="one", submit_time=3.0, duration=100.0),
                       cluster_job(id="pair", submit_time=4.0, duration=1.0, gpus=2)]
    first, _ = starts_and_rejections(jobs, load_policy("fifo"), TWO_BY_TWO)
    best, _ = starts_and_rejections(jobs, load_policy("adaptive"), TWO_BY_TWO)
    assert first["pair"] >= 100.0
    assert best == {"wide": 0.0, "long": 0.1, "one": 3.0, "pair": 4.0}


def test_best_fit_puts_a_fractional_pod_on_the_fullest_node() -> None:
    chosen: dict[str, tuple[str, ...]] = {}

    def decide(view: Any) -> Decisions:
        fit = BestFit(view)
        actions = []
        for job in view.pending.values():
            place = fit.place(job, set(), "best fit")
            assert place is not None
            chosen[job.id] = (place.device, *place.gang)
            actions.append(place)
            break  # one a round: each round sees the previous placement
        return Decisions(tuple(actions))

    ctl, _ = controller(Scripted(decide), TWO_BY_TWO)
    ctl.submit(cluster_job(id="half", gpu_fraction=0.5), 0.0)
    ctl.submit(cluster_job(id="small", gpu_fraction=0.25), 0.0)
    ctl.submit(cluster_job(id="cpu", gpus=0, cpus=1.0), 0.0)
    for t in (0.0, 0.1, 0.2):
        ctl.decide(t, "arrival")
    # half lands on the first of two empty nodes; small fills the same GPU (the least
    # share free that still fits); the CPU-only pod goes to the node with least GPU
    # free, leaving gpu-1's host to the jobs that want its GPUs.
    assert chosen == {"half": ("gpu-0/gpu0",), "small": ("gpu-0/gpu0",),
                      "cpu": ("gpu-0/gpu0",)}


def test_adaptive_ages_a_long_job_against_its_own_size() -> None:
    # The GPU is busy until 200; long (1,000 s) has waited 200 s when it frees, short
    # (1 s) has just come. Aging on the clock alone (aging_rel=0) lifts long past the
    # short-first term, so short waits 1,000 s; aged against its size, long waits 1 s.
    one_gpu = make_cluster(1, 1)
    jobs: list[Job] = [cluster_job(id="busy", duration=200.0),
                       cluster_job(id="long", duration=1000.0),
                       cluster_job(id="short", submit_time=199.0, duration=1.0)]
    relative, _ = starts_and_rejections(jobs, load_policy("adaptive"), one_gpu)
    clock, _ = starts_and_rejections(jobs, load_policy("adaptive", {"aging_rel": "0"}),
                                     one_gpu)
    assert relative == {"busy": 0.0, "short": 200.0, "long": 201.0}
    assert clock == {"busy": 0.0, "long": 200.0, "short": 1200.0}


def test_adaptive_does_not_hold_a_tenant_behind_a_gang_that_cannot_start() -> None:
    # blocker (tenant b) holds one of the two GPUs until 10. Tenant a's gang needs both;
    # its one-GPU job, queued behind it, starts on the free GPU at once.
    one_node = make_cluster(1, 2)
    jobs: list[Job] = [cluster_job(id="blocker", duration=10.0, tenant="b"),
                       cluster_job(id="gang", submit_time=1.0, duration=1.0, gpus=2,
                                   tenant="a"),
                       cluster_job(id="solo", submit_time=1.1, duration=1.0, tenant="a")]
    starts, _ = starts_and_rejections(jobs, load_policy("adaptive"), one_node)
    assert starts == {"blocker": 0.0, "gang": 10.0, "solo": 1.1}


def test_best_fit_counts_the_hosts_cpus_its_round_already_gave_out() -> None:
    # Each pod fits gpu-0's 8 CPUs alone, not both together: the second of one round
    # goes to gpu-1 (the view is frozen for the round; BestFit keeps the tally).
    chosen: list[str] = []

    def decide(view: Any) -> Decisions:
        fit = BestFit(view)
        actions = []
        for job in view.pending.values():
            place = fit.place(job, set(chosen), "best fit")
            assert place is not None
            chosen.append(place.device)
            actions.append(place)
        return Decisions(tuple(actions))

    ctl, sink = controller(Scripted(decide), TWO_BY_TWO)
    ctl.submit(cluster_job(id="p1", cpus=5.0), 0.0)
    ctl.submit(cluster_job(id="p2", cpus=5.0), 0.0)
    ctl.decide(0.0, "arrival")
    assert chosen == ["gpu-0/gpu0", "gpu-1/gpu0"]
    assert [row["outcome"] for row in sink.rows] == ["applied", "applied"]
