"""The simulator's model of live-path costs: round trips, decisions, setup, contention."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from policies.base import load_policy
from scheduler import costmodel
from scheduler.cluster import make_cluster
from scheduler.decisions import Place
from scheduler.profiles import DeviceProfile, load_profile
from scheduler.sim.executor import LiveCosts
from scheduler.sim.runner import SimConfig, simulate
from scheduler.view import View
from tests.builders import attention_job
from tests.simkit import Recorder, Scripted


def profile(**figures: Any) -> DeviceProfile:
    """The H100 profile with no live-path figures but the ones given."""
    return dataclasses.replace(load_profile("h100"), **{"actor_call_s": 0.0, **figures})


def one_per_device(view: View) -> list[Place]:
    """Each pending job alone on the next free device, in order."""
    free = list(view.free)
    return [Place((j,), d, "one per device") for j, d in zip(view.pending, free, strict=False)]


def jcts(jobs: list[Any], prof: DeviceProfile, live: LiveCosts | None, gpus: int = 1,
         policy: Any = None, **config: Any) -> dict[str, float]:
    spec = make_cluster(1, gpus)
    sink = Recorder()
    simulate(jobs, spec, {"h100": prof}, policy or load_policy("greedy"), "p", None,
             SimConfig(live=live, observer=sink, **config))
    return {r.id: (r.end or 0.0) - r.job.submit_time for r in sink.finished}


def test_a_job_pays_the_round_trip_the_decision_and_its_setup() -> None:
    prof = profile(actor_call_s=0.002, worker_job_s=0.0005, decision_s=0.001)
    job = attention_job(id="a", submit_time=0.0)
    solo = costmodel.estimate(job, prof).seconds
    live = LiveCosts.from_profiles([prof])
    assert live.decision_s == 0.001
    assert jcts([job], prof, live)["a"] == pytest.approx(solo + 0.002 + 0.0005 + 0.001)
    assert jcts([job], prof, None)["a"] == pytest.approx(solo)  # the ideal model


def test_time_scale_stretches_everything_like_a_faster_replay() -> None:
    prof = profile(actor_call_s=0.002)
    job = attention_job(id="a", submit_time=0.0)
    solo = costmodel.estimate(job, prof).seconds
    scaled = jcts([job], prof, LiveCosts.from_profiles([prof], time_scale=4.0))
    assert scaled["a"] == pytest.approx(4 * (solo + 0.002))


def test_workers_of_one_node_slow_each_other_by_the_measured_curve() -> None:
    prof = profile(node_sharing=((1.0, 1.0), (2.0, 0.5)))
    a = attention_job(id="a", submit_time=0.0)
    b = attention_job(id="b", submit_time=0.0)
    solo = costmodel.estimate(a, prof).seconds
    spread = Scripted(one_per_device)
    both = jcts([a, b], prof, LiveCosts.from_profiles([prof]), gpus=2, policy=spread)
    assert both == pytest.approx({"a": 2 * solo, "b": 2 * solo})
    # Without contention in the profile, two devices run side by side at full speed.
    assert jcts([a, b], profile(), LiveCosts(), gpus=2, policy=spread) == pytest.approx(
        {"a": solo, "b": solo})


def test_contention_ends_when_the_peer_goes_idle() -> None:
    prof = profile(node_sharing=((1.0, 1.0), (2.0, 0.5)))
    short = attention_job(id="short", submit_time=0.0, q_len=4096, kv_len=4096)
    long = attention_job(id="long", submit_time=0.0, q_len=16384, kv_len=16384)
    s = costmodel.estimate(short, prof).seconds
    ln = costmodel.estimate(long, prof).seconds
    assert s < ln
    out = jcts([short, long], prof, LiveCosts.from_profiles([prof]), gpus=2,
               policy=Scripted(one_per_device))
    assert out["short"] == pytest.approx(2 * s)
    # Half speed while the short job ran (it did s of its work), full speed after.
    assert out["long"] == pytest.approx(2 * s + (ln - s))


def test_telemetry_reaches_the_policy_a_round_trip_late() -> None:
    seen: list[tuple[float, float | None]] = []

    def decide(view: View) -> list[Place]:
        sample = view.telemetry.get("gpu-0/gpu0")
        seen.append((view.now, sample.time if sample else None))
        return [Place((j,), "gpu-0/gpu0", "first free") for j in list(view.pending)[:1]
                if view.free]

    prof = profile(telemetry_s=0.3)
    jobs = [attention_job(id=f"j{i}", submit_time=t) for i, t in enumerate((1.1, 1.5))]
    jcts(jobs, prof, LiveCosts.from_profiles([prof]), policy=Scripted(decide),
         telemetry_interval=1.0)
    at = dict(seen)
    assert at[1.1] is None  # the t=1 sample is still on its way
    assert at[1.5] == 1.0
    seen.clear()
    jcts(jobs, prof, None, policy=Scripted(decide), telemetry_interval=1.0)
    assert dict(seen)[1.1] == 1.0  # the ideal model delivers at once


def test_a_batch_pays_the_calibrated_batch_round_trip_when_there_is_one() -> None:
    prof = profile(actor_call_s=0.001, batch_call_s=0.003)
    job = attention_job(id="a", submit_time=0.0)
    solo = costmodel.estimate(job, prof).seconds
    assert jcts([job], prof, LiveCosts.from_profiles([prof]))["a"] == pytest.approx(solo + 0.003)


def test_a_workers_fixed_cost_is_paid_once_a_batch_and_counted_as_the_workers() -> None:
    """``worker_batch_s`` is timed inside the worker: once per batch, whatever its jobs, and
    in the speed its telemetry reports (unlike the round trip outside it)."""
    speeds: dict[float, float | None] = {}

    def decide(view: View) -> list[Place]:
        sample = view.telemetry.get("gpu-0/gpu0")
        speeds[view.now] = sample.speed if sample else None
        jobs = tuple(view.pending)
        return [Place(jobs, "gpu-0/gpu0", "all at once")] if jobs and view.free else []

    prof = profile(batch_call_s=0.003, worker_job_s=0.0005, worker_batch_s=0.002)
    three = [attention_job(id=f"j{i}", submit_time=0.0, q_len=128 + i) for i in range(3)]
    later = attention_job(id="late", submit_time=1.5)
    together = costmodel.batch_estimate(three, prof).seconds
    got = jcts([*three, later], prof, LiveCosts.from_profiles([prof]), policy=Scripted(decide),
               telemetry_interval=1.0)
    for job in three:
        assert got[job.id] == pytest.approx(together + 0.003 + 0.002 + 3 * 0.0005)
    # the t=1 sample, which the late job's decision sees, is of the batch of three
    assert speeds[1.5] == pytest.approx(together / (together + 0.002 + 3 * 0.0005))
