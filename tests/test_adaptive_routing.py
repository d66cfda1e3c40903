"""adaptive's straggler rule: slow is measured against the device's peers."""

from __future__ import annotations

import pytest

from policies.adaptive import AdaptivePolicy
from scheduler.cluster import make_cluster
from scheduler.decisions import Place
from scheduler.view import Telemetry
from tests.builders import attention_job
from tests.snapshots import view

GPU0, GPU1 = "gpu-0/gpu0", "gpu-0/gpu1"


def sample(device: str, speed: float) -> Telemetry:
    return Telemetry(0.0, device, 0.5, 0, 1, 0, 1, 0.0, speed, 0.5, speed)


@pytest.mark.parametrize(("speeds", "runs_now"), [
    # Both lag the profile alike (a host slowed as a whole, two workers sharing cores):
    # gpu0 is below 0.8 of the profile but no straggler, so the job runs on it now.
    ((0.78, 0.82), True),
    # gpu0 lags its peer 3×: waiting for gpu1, nearly done, finishes sooner.
    ((0.3, 1.0), False),
])
def test_a_device_is_slow_only_against_its_peers(speeds: tuple[float, float],
                                                 runs_now: bool) -> None:
    probe = view(running={GPU1: [attention_job(id="busy")]}, cluster=make_cluster(1, 2))
    seconds = probe.cost.seconds([attention_job()], GPU1)
    now = 0.9 * seconds  # gpu1 (running a job like the next one) frees in a tenth of it
    snapshot = view([attention_job(id="next", submit_time=now)], now=now,
                    running={GPU1: [attention_job(id="busy")]}, cluster=make_cluster(1, 2),
                    telemetry=[sample(GPU0, speeds[0]), sample(GPU1, speeds[1])])
    placed = [a for a in AdaptivePolicy().decide(snapshot).actions if isinstance(a, Place)]
    assert [(a.jobs, a.device) for a in placed] == ([(("next",), GPU0)] if runs_now else [])


def test_one_policy_sees_each_views_peers_not_a_memo_of_an_earlier_one() -> None:
    """The peers' speed is kept per view epoch: a policy that served a view where gpu0
    was no straggler must judge a later view (new telemetry, new epoch) afresh, and
    back again."""
    policy = AdaptivePolicy()
    probe = view(running={GPU1: [attention_job(id="busy")]}, cluster=make_cluster(1, 2))
    now = 0.9 * probe.cost.seconds([attention_job()], GPU1)

    def placed(speeds: tuple[float, float]) -> list[str]:
        snapshot = view([attention_job(id="next", submit_time=now)], now=now,
                        running={GPU1: [attention_job(id="busy")]},
                        cluster=make_cluster(1, 2),
                        telemetry=[sample(GPU0, speeds[0]), sample(GPU1, speeds[1])])
        return [a.device for a in policy.decide(snapshot).actions if isinstance(a, Place)]

    assert placed((0.3, 0.3)) == [GPU0]  # both slow alike: no straggler
    assert placed((0.3, 1.0)) == []  # now gpu0 lags its peer: wait for gpu1
    assert placed((0.3, 0.3)) == [GPU0]
