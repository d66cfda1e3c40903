"""Every registered policy against the invariants, on generated traces and clusters.

Whatever a policy decides: every job ends exactly once (done, or failed with a
reason); no device is ever over-committed in memory, share or slots; time
never goes backwards; the same inputs and seed give the same results.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.base import available, load_policy
from scheduler.cluster import make_cluster
from scheduler.jobs import AttentionJob, ClusterJob, Job
from scheduler.view import View
from tests.simkit import Recorder, run


class Checked:
    """Wraps a policy and checks the controller's state every time it is consulted."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.last = inner, inner.name, -1.0
        self.description = ""

    def decide(self, view: View) -> Any:
        assert view.now >= self.last, "time went backwards"
        self.last = view.now
        for device in view.devices.values():
            assert device.share_free >= -1e-9, device
            assert device.memory_free >= 0, device
            assert device.slots_free >= 0, device
        for d in view.free.values():
            assert d.up and d.slots_free > 0
        return self.inner.decide(view)


@st.composite
def traces(draw: st.DrawFn) -> list[Job]:
    n = draw(st.integers(1, 40))
    jobs: list[Job] = []
    t = 0.0
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.0001, 0.001, 0.01, 0.5]))
        tenant = draw(st.sampled_from(["a", "b", "c"]))
        priority = draw(st.integers(0, 2))
        deadline = draw(st.none() | st.floats(0.001, 5.0))
        if draw(st.integers(0, 9)) == 0:
            jobs.append(ClusterJob(id=f"c{i}", submit_time=t, duration=draw(st.floats(0.01, 1)),
                                   gpus=draw(st.integers(0, 2)), cpus=1.0, tenant=tenant,
                                   priority=priority, deadline=deadline))
            continue
        kind = draw(st.sampled_from(["prefill", "decode", "train"]))
        heads, group = draw(st.sampled_from([(8, 1), (8, 4), (32, 4)]))
        q = 1 if kind == "decode" else draw(st.integers(1, 2048))
        parent = None
        if i and draw(st.booleans()) and isinstance(jobs[-1], AttentionJob):
            parent = jobs[-1].id
        jobs.append(AttentionJob(
            id=f"j{i}", submit_time=t, kind=kind, batch=draw(st.sampled_from([1, 2, 4, 64])),
            heads=heads, kv_heads=heads // group, q_len=q, kv_len=draw(st.integers(1, 1 << 14)),
            head_dim=draw(st.sampled_from([64, 128])), layers=draw(st.sampled_from([1, 4])),
            dtype=draw(st.sampled_from(["bf16", "fp32"])), causal=draw(st.booleans()),
            steps=draw(st.integers(1, 20)), tenant=tenant, priority=priority, deadline=deadline,
            depends_on=parent))
    return jobs


clusters = st.builds(make_cluster, gpu_nodes=st.integers(1, 2), gpus_per_node=st.integers(1, 4),
                     cpu_nodes=st.integers(0, 1))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(jobs=traces(), cluster=clusters, policy=st.sampled_from(sorted(available())),
       seed=st.integers(0, 3))
def test_every_policy_keeps_the_invariants(jobs, cluster, policy, seed) -> None:
    check_contract(jobs, cluster, policy, seed)


def check_contract(jobs: list[Job], cluster: Any, policy: str, seed: int) -> None:
    """Run ``policy`` twice on ``jobs`` and assert every invariant of the contract."""
    results = []
    for _ in range(2):
        recorder = Recorder()
        checked = Checked(load_policy(policy))
        result = run_with_sink(jobs, checked, cluster, recorder, seed)
        finished = [r.id for r in recorder.finished]
        assert sorted(finished) == sorted(j.id for j in jobs), "a job was lost or duplicated"
        for record in recorder.finished:
            assert record.state.value in ("done", "failed")
            assert record.state.value == "done" or record.reason
            # The built-ins are work-conserving: admitted work that fits somewhere runs.
            assert "unplaced" not in (record.reason or ""), (policy, record.job, record.reason)
            if record.state.value == "done":
                assert record.end is not None and record.start is not None
                assert record.job.submit_time <= record.start <= record.end
        results.append((result.summary, [(r.id, r.state, r.end, r.device)
                                         for r in recorder.finished]))
    assert results[0] == results[1], "not deterministic for a seed"


def run_with_sink(jobs, policy, cluster, recorder, seed):
    return run(jobs, policy, cluster, seed=seed, observer=recorder)
