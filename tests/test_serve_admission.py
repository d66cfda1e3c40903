"""Admission control's rules, on its own: SLO shedding, quotas with borrowing, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.errors import InputError
from scheduler.jobs import AttentionJob, DType, JobKind
from scheduler.serve.admission import Admission, Quota, parse_classes, parse_quotas


def _job(i: int, tenant: str = "t", q_len: int = 64) -> AttentionJob:
    return AttentionJob(id=f"j{i}", submit_time=10.0, kind=JobKind.PREFILL, tenant=tenant,
                        batch=1, heads=2, kv_heads=1, q_len=q_len, kv_len=q_len, head_dim=16,
                        dtype=DType.FP32)


def test_an_interactive_job_is_shed_once_its_predicted_delay_passes_the_target() -> None:
    admission = Admission(devices=2, seconds_of=lambda job: 1.0)  # interactive: 2 s
    for i in range(8):  # batch work never counts against the more urgent class
        assert admission.admit(_job(100 + i), "batch")[1].admit
    verdicts = [admission.admit(_job(i), "interactive")[1] for i in range(6)]
    assert [v.admit for v in verdicts] == [True] * 5 + [False]  # 5 s over 2 devices: 2.5 s
    assert verdicts[-1].reason == "slo" and verdicts[-1].retry_after == 1
    job, verdict = admission.admit(_job(50), "batch")  # best effort: never shed for delay
    assert verdict.admit and job.priority == 0 and job.deadline is None
    job, _ = admission.admit(_job(51), None)
    assert job.priority == 0  # no class: batch
    admission.release("j0")
    job, verdict = admission.admit(_job(5), "interactive")
    assert verdict.admit and job.priority == 10 and job.deadline == 2.0 + 1.0  # after submit
    assert admission.counts[("slo", "t", "interactive")] == 1


def test_a_tenant_borrows_idle_quota_and_is_refused_when_none_is_left() -> None:
    admission = Admission(devices=1, seconds_of=lambda job: 1.0,
                          quotas={"alice": Quota(2.0), "bob": Quota(2.0)})
    alice = [admission.admit(_job(i, "alice"), "batch")[1] for i in range(5)]
    assert [v.admit for v in alice] == [True, True, True, True, False]
    assert [v.borrowed for v in alice[:4]] == [False, False, True, True]  # bob's quota, idle
    assert alice[4].reason == "quota" and "no idle quota" in alice[4].detail
    assert admission.admit(_job(9, "bob"), "batch")[1].admit  # bob's own quota still holds
    assert admission.counts[("borrowed", "alice", "batch")] == 2


def test_a_memory_quota_bounds_what_a_tenants_jobs_plan_to_hold() -> None:
    """Memory is a quota resource of its own: within it, borrowed from idle quota, then
    refused naming memory, whatever the device-seconds say; a tenant's own quota holds."""
    gib = 1 << 30
    admission = Admission(devices=1, seconds_of=lambda job: 0.1,
                          memory_of=lambda job: job.q_len * gib // 64,
                          quotas={"alice": Quota(100.0, 4 * gib), "bob": Quota(None, 2 * gib)})
    mine = admission.admit(_job(0, "alice", q_len=64 * 4), "batch")[1]
    assert mine.admit and not mine.borrowed  # 4 GiB: its own
    borrowed = admission.admit(_job(1, "alice", q_len=128), "batch")[1]
    assert borrowed.admit and borrowed.borrowed  # bob's 2 GiB lie idle
    refused = admission.admit(_job(2, "alice", q_len=64), "batch")[1]
    assert not refused.admit and refused.reason == "quota"
    assert "6 GiB of device memory outstanding of its 4 GiB" in refused.detail
    assert admission.admit(_job(3, "bob", q_len=64), "batch")[1].admit  # its own still holds
    assert admission.tenants["alice"].memory == 6 * gib and admission.tenants["bob"].memory == gib
    admission.release("j1")
    assert admission.tenants["alice"].memory == 4 * gib
    never = admission.admit(_job(9, "alice", q_len=64 * 7), "batch")[1]  # 7 GiB > 4 + 2
    assert not never.admit and never.retry_after == 0 and "can ever hold" in never.detail


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alice", "bob", "carol"]),
                          st.sampled_from(["interactive", "batch"]), st.booleans(),
                          st.integers(1, 4)), max_size=60))
def test_admission_never_passes_its_bounds(steps) -> None:
    """Whatever the order of submissions and ends: the queue bound holds, a tenant past its
    quota was admitted only from idle quota, and every admitted job is held exactly once."""
    quotas = {"alice": 4.0, "bob": 3.0, "default": 2.0}
    memory = {"alice": 5, "bob": 3, "default": 4}  # bytes: a job holds its size in bytes
    admission = Admission(devices=2, seconds_of=lambda job: float(job.q_len) / 64,
                          memory_of=lambda job: job.q_len // 64,
                          quotas={t: Quota(q, memory[t]) for t, q in quotas.items()},
                          max_queue=6)
    held: list[str] = []
    for i, (tenant, slo, end_one, size) in enumerate(steps):
        if end_one and held:
            admission.release(held.pop(0))
        before = sum(h.seconds for h in admission.held.values() if h.tenant == tenant)
        total = sum(h.seconds for h in admission.held.values())
        before_mem = sum(h.memory for h in admission.held.values() if h.tenant == tenant)
        total_mem = sum(h.memory for h in admission.held.values())
        job, verdict = admission.admit(_job(i, tenant, q_len=64 * size), slo)
        if verdict.admit:
            held.append(job.id)
            assert len(admission.held) <= 6
            if before + size > quotas.get(tenant, quotas["default"]):
                assert verdict.borrowed and total + size <= sum(quotas.values())
            if before_mem + size > memory.get(tenant, memory["default"]):
                assert verdict.borrowed and total_mem + size <= sum(memory.values())
        else:
            assert job.id not in admission.held and verdict.reason in ("queue", "slo", "quota")
    assert sorted(admission.held) == sorted(held)


def test_bad_options_name_the_flag() -> None:
    assert parse_quotas(["alice=3", "default=1.5:0.5", "bob=none:2"]) == {
        "alice": Quota(3.0), "default": Quota(1.5, 1 << 29), "bob": Quota(None, 2 << 30)}
    classes = parse_classes(["interactive=0.5", "bulk=none:-1"])
    assert classes["interactive"].max_delay_s == 0.5 and classes["interactive"].priority == 10
    assert classes["bulk"].max_delay_s is None and classes["bulk"].priority == -1
    for bad in (["alice"], ["alice=-1"], ["=3"], ["alice=x"], ["alice=none"], ["alice=1:0"],
                ["alice=1:lots"]):
        with pytest.raises(InputError, match="TENANT=SECONDS"):
            parse_quotas(bad)
    for bad in (["x"], ["x=0"], ["x=fast"], ["x=1:high"]):
        with pytest.raises(InputError, match="NAME=SECONDS"):
            parse_classes(bad)
    with pytest.raises(InputError, match="unknown class 'gold'"):
        Admission(devices=1, seconds_of=lambda job: 1.0).admit(_job(0), "gold")


def test_the_delay_prediction_follows_how_long_jobs_really_take() -> None:
    """Jobs taking 3x their predicted time make the same backlog predict 3x the delay."""
    admission = Admission(devices=1, seconds_of=lambda job: 1.0)
    assert admission.admit(_job(0), "interactive")[1].admit  # 1 s ahead: within 2 s
    for _ in range(200):
        admission.observe(predicted=1.0, taken=3.0)
    assert admission.scale == pytest.approx(3.0, rel=0.01)
    verdict = admission.admit(_job(1), "interactive")[1]
    assert not verdict.admit and verdict.reason == "slo"  # 1 s of work now predicts 3 s


def test_the_running_sums_match_the_jobs_held() -> None:
    """Admit, re-hold after a restart and release in any order: the per-tenant and per-class
    sums the verdicts read are those of the jobs held, and vanish with the last of them."""
    admission = Admission(devices=1, seconds_of=lambda job: job.q_len / 64,
                          quotas={"default": Quota(100.0)})
    for i in range(6):
        admission.admit(_job(i, "ab"[i % 2], q_len=64 * (i + 1)), ("batch", "interactive")[i % 2])
    admission.hold(_job(0, "a", q_len=64), "batch")  # the same job counted once
    admission.release("j1")
    admission.release("nope")
    by_tenant = {t: sum(h.seconds for h in admission.held.values() if h.tenant == t)
                 for t in "ab"}
    assert {t: s.seconds for t, s in admission.tenants.items()} == by_tenant
    by_class = {c: sum(h.slo == c for h in admission.held.values())
                for c in ("batch", "interactive")}
    assert {c: s.jobs for c, s in admission.by_class.items()} == by_class
    assert by_class == {"batch": 3, "interactive": 1}  # j5 shed (6 s ahead > 2 s), j1 ended
    for job in list(admission.held):
        admission.release(job)
    assert admission.tenants == {} and admission.by_class == {}
