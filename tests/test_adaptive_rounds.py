"""adaptive's round on a deep queue: once every free GPU is taken, only CPU work is tried."""

from __future__ import annotations

from typing import Any

from policies.adaptive import AdaptivePolicy
from scheduler.cluster import make_cluster
from scheduler.decisions import Offload, Place
from scheduler.jobs import Job
from tests.builders import attention_job
from tests.snapshots import view

GPU, CPU = "gpu-0/gpu0", "cpu-0/cpu"
ONE_GPU_AND_A_CPU = make_cluster(1, 1, cpu_nodes=1)


def big(i: int, tenant: str) -> Job:
    """A job a GPU runs and the CPU could, but far beyond adaptive's offload limit."""
    return attention_job(id=f"{tenant}{i}", tenant=tenant, heads=32, kv_heads=8, q_len=2048,
                         kv_len=2048, head_dim=128, layers=32, causal=True, submit_time=i)


def counted(policy: AdaptivePolicy) -> list[str]:
    """The jobs ``policy`` tries to place, in order (its ``_place_one`` calls)."""
    tried: list[str] = []
    inner = policy._place_one

    def place_one(view: Any, job: Job, *args: Any) -> Any:
        tried.append(job.id)
        return inner(view, job, *args)

    policy._place_one = place_one  # type: ignore[method-assign]
    return tried


def test_jobs_only_a_gpu_takes_are_not_tried_once_the_gpus_are_taken() -> None:
    queue = [big(i, t) for i in range(200) for t in "abc"]
    snapshot = view(queue, cluster=ONE_GPU_AND_A_CPU, now=300.0)
    assert snapshot.cost.seconds([queue[0]], CPU) > AdaptivePolicy().offload_max_s
    policy = AdaptivePolicy()
    tried = counted(policy)
    actions = policy.decide(snapshot).actions
    assert [(type(a), a.device) for a in actions] == [(Place, GPU)]
    # The GPU's batch, and the one failed try that shows only the CPU is left (before,
    # the round tried 4 x 2 + 8 = 16 jobs, every one of them in vain but the first).
    assert len(tried) <= 2


def test_a_small_job_deep_in_a_tenants_window_still_goes_to_the_cpu() -> None:
    # A decode packs with no prefill, so the GPU's batch cannot take it; it is b's 21st
    # job, deeper than the 16 tries the round used to make before giving up.
    small = attention_job(id="small", kind="decode", tenant="b", q_len=1, kv_len=64,
                          steps=4, submit_time=19.5)
    queue = sorted([*(big(i, t) for i in range(200) for t in "ab"), small],
                   key=lambda j: j.submit_time)
    snapshot = view(queue, cluster=ONE_GPU_AND_A_CPU, now=300.0)
    assert snapshot.cost.seconds([small], CPU) <= AdaptivePolicy().offload_max_s
    actions = AdaptivePolicy().decide(snapshot).actions
    offloads = [(a.jobs, a.device) for a in actions if isinstance(a, Offload)]
    assert offloads == [(("small",), CPU)]
    assert [a.device for a in actions if isinstance(a, Place)] == [GPU]
