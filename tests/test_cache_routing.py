"""What policies read of the prefix caches (``view.cache``), the telemetry's hit rates,
and the two rules that route by them: ``prefix-affinity`` and ``adaptive``."""

from __future__ import annotations

import pytest

from policies.base import load_policy
from scheduler.decisions import Decisions, Place
from scheduler.jobs import AttentionJob, Job
from scheduler.view import Telemetry, View
from tests.builders import attention_job
from tests.simkit import Recorder, Scripted, controller, run
from tests.snapshots import view

GPU0, GPU1 = "gpu-0/gpu0", "gpu-0/gpu1"
BASE = (0, 1, 2, 3, 4, 5, 6)  # a shared prompt head of 7 blocks


def prompt(name: str, blocks: tuple[int, ...], q_len: int = 4096,
           submit: float = 0.0) -> AttentionJob:
    return attention_job(id=name, q_len=q_len, kv_len=q_len, causal=True, heads=32,
                         kv_heads=8, head_dim=128, layers=32, prefix_blocks=blocks,
                         block_tokens=512, submit_time=submit)


SEEN = prompt("p0", (*BASE, 7))  # ran before: its 8 blocks are resident where it ran


def placed(policy: str, snapshot: View, **options: str) -> list[tuple[tuple[str, ...], str]]:
    decisions = load_policy(policy, options or None).decide(snapshot)
    actions = decisions.actions if isinstance(decisions, Decisions) else decisions
    return [(a.jobs, a.device) for a in actions if isinstance(a, Place)]


@pytest.mark.parametrize("detached", [False, True])
def test_the_view_answers_hits_and_holders(detached: bool) -> None:
    later = prompt("p1", (0, 1, 2, 50, 51, 52, 53, 54))
    snap = view([later], cached={GPU1: [SEEN]}, detached=detached)
    assert snap.cache.hit(later, GPU1) == 3 * 512 and snap.cache.hit(later, GPU0) == 0
    assert snap.cache.holders(later) == {GPU1}
    assert snap.cache.holders(prompt("p2", (9,))) == frozenset()
    assert snap.cache.hit(attention_job(id="plain"), GPU1) == 0
    assert not any(hasattr(snap.cache, name) for name in ("keep", "use", "forget"))  # reads


def test_telemetry_carries_each_devices_cache_and_hit_rate() -> None:
    ctl, _ = controller(Scripted(lambda v: [Place((j,), GPU0) for j in v.pending]))
    for t, job in enumerate((SEEN, prompt("p1", (*BASE, 60)))):
        ctl.submit(job, float(t))
        ctl.batch_done(ctl.decide(float(t), "telemetry").started[0].id, t + 0.5)
    sample = Telemetry(2.0, GPU0, 0.5, 0, 1, 0, 0, 0.0)
    first = ctl.observe([sample])[0]
    assert first.cache_hit_rate == pytest.approx(7 * 512 / (2 * 4096))
    assert first.cache_bytes == ctl._cap.caches.resident_bytes(GPU0) > 0
    assert ctl.observe([sample])[0].cache_hit_rate is None  # nothing ran since


def test_prefix_affinity_goes_to_the_holder_and_plain_jobs_to_the_least_loaded() -> None:
    snap = view([prompt("p1", (*BASE, 60)), attention_job(id="plain")], cached={GPU1: [SEEN]})
    assert placed("prefix-affinity", snap) == [(("p1",), GPU1), (("plain",), GPU0)]


def test_prefix_affinity_waits_for_a_busy_holder_up_to_its_bound() -> None:
    queue = [prompt(f"p{i}", (*BASE, 60 + i)) for i in range(1, 7)]
    snap = view(queue, running={GPU1: [prompt("busy", (99,))]}, cached={GPU1: [SEEN]})
    assert placed("prefix-affinity", snap, max_wait="4") == [(("p5",), GPU0)]
    assert placed("prefix-affinity", snap, max_wait="0") == [(("p1",), GPU0)]
    short = prompt("p1", (*BASE[:3], 60))  # 3 blocks of its 8: under half its prompt
    assert placed("prefix-affinity", view([short], cached={GPU1: [SEEN]})) == [
        (("p1",), GPU0)]


def test_adaptive_prefers_a_free_holder() -> None:
    snap = view([prompt("p1", (*BASE, 60))], cached={GPU1: [SEEN]})
    assert placed("adaptive", snap) == [(("p1",), GPU1)]


def test_adaptive_waits_for_a_busy_holder_only_while_that_finishes_sooner() -> None:
    later = prompt("p1", (*BASE, 60))
    quick = attention_job(id="quick", kind="decode", q_len=1, kv_len=512, steps=1)
    waits = view([later], running={GPU1: [quick]}, cached={GPU1: [SEEN]})
    assert placed("adaptive", waits) == []  # the holder frees almost at once
    slow = prompt("slow", (99,), q_len=32_768)
    moves = view([later], running={GPU1: [slow]}, cached={GPU1: [SEEN]})
    assert placed("adaptive", moves) == [(("p1",), GPU0)]


def test_adaptive_ranks_a_prefill_by_what_it_costs_where_its_prefix_is() -> None:
    # Same size, p1 first in line; only p2 would read 7 of its 8 blocks from gpu1's cache,
    # so it is the shorter job and goes first to the one free device.
    plain, hit = prompt("p1", (70, 71, 72, 73, 74, 75, 76, 77)), prompt("p2", (*BASE, 60))
    busy = prompt("busy", (99,), q_len=32_768)
    snap = view([plain, hit], running={GPU0: [busy]}, cached={GPU1: [SEEN]})
    assert [jobs[0] for jobs, _ in placed("adaptive", snap)] == ["p2"]


def test_adaptive_leaves_a_prefill_out_of_a_batch_where_its_prefix_is_not() -> None:
    # p2's prefix is on gpu1, which frees almost at once: p2 waits for it; h, cached
    # nowhere, takes gpu0, and p2 would have fitted in its batch there, uncached.
    head = prompt("h", (80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 94, 95),
                  q_len=8192)
    quick = attention_job(id="quick", kind="decode", q_len=1, kv_len=512, steps=1)
    snap = view([prompt("p2", (*BASE, 60)), head], running={GPU1: [quick]},
                cached={GPU1: [SEEN]})
    assert placed("adaptive", snap) == [(("h",), GPU0)]


def shared_prefix_trace(groups: int = 4, each: int = 10) -> list[Job]:
    """Prompts in ``groups`` families, each family's 7 leading blocks shared, arriving
    far enough apart that the queue never backs up: only routing decides the hits."""
    jobs: list[Job] = []
    for i in range(groups * each):
        family = i % groups
        head = tuple(1000 * family + b for b in range(7))
        jobs.append(prompt(f"r{i}", (*head, 100_000 + i), submit=float(i)))
    return jobs


@pytest.mark.parametrize("policy", ["prefix-affinity", "adaptive"])
def test_routing_by_the_cache_hits_more_than_fixed_assignment(policy: str) -> None:
    def hit_tokens(name: str) -> int:
        recorder = Recorder()
        result = run(shared_prefix_trace(), load_policy(name), observer=recorder)
        assert result.exit_code == 0 and len(recorder.finished) == 40
        return sum(r.cached_tokens for r in recorder.finished)

    # Each family's first prompt misses; a router hits on every later one (9 of 10).
    assert hit_tokens(policy) == 4 * 9 * 7 * 512 > hit_tokens("static")
