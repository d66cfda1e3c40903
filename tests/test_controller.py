"""The controller validates every action; a bad policy can lose no job."""

from __future__ import annotations

import pytest

from scheduler.controller import PolicyFailure
from scheduler.decisions import Decisions, Migrate, Offload, Place, Preempt, Split
from scheduler.events import Failure, FailureCode
from scheduler.records import RejectCode
from scheduler.state import JobState
from tests.builders import attention_job, cluster_job
from tests.simkit import Scripted, controller

GPU0, GPU1, CPU = "gpu-0/gpu0", "gpu-0/gpu1", "cpu-0/cpu"


def one_each(view):
    """Each pending job on its own free device, in order."""
    return [Place((j,), d) for j, d in zip(view.pending, view.free, strict=False)]


def job(i: int, **kw):
    return attention_job(**{"id": f"j{i}", "submit_time": 0.0, **kw})


def outcomes(sink):
    return [(r["action"], r["outcome"], r.get("why", "")) for r in sink.rows]


@pytest.mark.parametrize(
    ("actions", "expected", "why"),
    [
        ([Place(("j0",), GPU0)], ["applied"], ""),
        ([Place(("nope",), GPU0)], ["rejected"], "unknown, not queued"),
        ([Place(("j0",), "gpu-9/gpu0")], ["rejected"], "no device"),
        # the same job twice in one decision: the second finds it running
        ([Place(("j0",), GPU0), Place(("j0",), GPU1)], ["applied", "rejected"], "running"),
        # a device runs one batch at a time with one slot
        ([Place(("j0",), GPU0), Place(("j1",), GPU0)], ["applied", "rejected"], "no free slot"),
        ([Place(("j0", "j0"), GPU0)], ["rejected"], "distinct"),
        ([Place((), GPU0)], ["rejected"], "distinct"),
        # a causal and a non-causal job cannot share a call
        ([Place(("j0", "j2"), GPU0)], ["rejected"], "sharing head_dim"),
        ([Place(("j0", "j1"), GPU0)], ["applied"], ""),  # compatible jobs pack
        ([Offload(("j0",), GPU0)], ["rejected"], "not a CPU device"),
        ([Split("j0", 3)], ["rejected"], "does not split"),
        ([Preempt("j0")], ["rejected"], "not running"),
        ([Migrate("j0", GPU1)], ["rejected"], "not running"),
    ],
)
def test_actions_are_validated(actions, expected, why) -> None:
    ctl, sink = controller(Scripted(lambda v: actions))
    ctl.submit(job(0, batch=4), 0.0)
    ctl.submit(job(1), 0.0)
    ctl.submit(job(2, causal=True), 0.0)
    step = ctl.decide(0.0, "arrival")
    assert [o for _, o, _ in outcomes(sink)] == expected
    if why:
        assert why in outcomes(sink)[-1][2]
    assert len(step.started) == expected.count("applied")
    # whatever the policy did, every job is accounted for exactly once
    running = {j for b in ctl.batches.values() for j in b.jobs}
    assert running | set(ctl.pending) == {"j0", "j1", "j2"}
    assert not running & set(ctl.pending)


def test_memory_is_never_over_committed() -> None:
    # 45 GiB of KV cache each: one fits an 80 GiB H100, two do not.
    big = {"kind": "decode", "q_len": 1, "kv_len": 131_072, "steps": 1, "heads": 8,
           "kv_heads": 8, "head_dim": 128, "layers": 90, "batch": 1}
    ctl, sink = controller(Scripted(lambda v: [Place(("j0", "j1"), GPU0)]))
    ctl.submit(job(0, **big), 0.0)
    ctl.submit(job(1, **big), 0.0)
    ctl.decide(0.0, "arrival")
    assert outcomes(sink)[0][1] == "rejected"
    assert "GiB free" in outcomes(sink)[0][2]
    assert ctl.devices[GPU0].memory_free == ctl.devices[GPU0].spec.memory_bytes


def test_a_job_too_big_for_every_device_fails_at_admission() -> None:
    ctl, sink = controller(Scripted(lambda v: []))
    ctl.submit(job(0, q_len=1 << 20, kv_len=1 << 20, heads=64, kv_heads=64, batch=64), 0.0)
    assert sink.finished[0].state is JobState.FAILED
    assert "fits no device" in (sink.finished[0].reason or "")
    assert not ctl.pending


def test_a_raising_policy_loses_nothing_then_stops_the_run() -> None:
    def boom(view):
        raise RuntimeError("bug in plugin")

    ctl, sink = controller(Scripted(boom), max_policy_failures=3)
    ctl.submit(job(0), 0.0)
    ctl.decide(0.0, "arrival")
    ctl.decide(1.0, "telemetry")
    assert [r["outcome"] for r in sink.rows] == ["error", "error"]
    assert "bug in plugin" in sink.rows[0]["why"]
    assert list(ctl.pending) == ["j0"]  # still queued
    with pytest.raises(PolicyFailure, match="failed 3 times in a row"):
        ctl.decide(2.0, "telemetry")


@pytest.mark.parametrize("answer", [None, "place everything", [("j0", GPU0)], {"j0": GPU0}])
def test_garbage_answers_are_errors_not_crashes(answer) -> None:
    ctl, sink = controller(Scripted(lambda v: answer))
    ctl.submit(job(0), 0.0)
    ctl.decide(0.0, "arrival")
    assert sink.rows[0]["outcome"] == "error"
    assert list(ctl.pending) == ["j0"]


def test_dependents_wait_for_their_parent_and_fail_with_it() -> None:
    ctl, sink = controller(Scripted(lambda v: [Place((j,), GPU0) for j in list(v.pending)[:1]]))
    ctl.submit(job(0), 0.0)
    ctl.submit(job(1, depends_on="j0"), 0.0)
    assert list(ctl.pending) == ["j0"]
    step = ctl.decide(0.0, "arrival")
    ctl.batch_done(step.started[0].id, 1.0)
    assert list(ctl.pending) == ["j1"]
    assert ctl.records["j1"].ready_time == 1.0
    ctl.submit(job(2), 1.0)
    ctl.submit(job(3, depends_on="j2"), 1.0)
    ctl.fail("j2", "test")
    assert [r.id for r in sink.finished][-2:] == ["j2", "j3"]
    assert "dependency 'j2' failed" in (sink.finished[-1].reason or "")


def test_split_parts_complete_the_parent() -> None:
    ctl, sink = controller(Scripted(lambda v: [Split("j0", 2, "heads")] if "j0" in v.pending
                                    else one_each(v)))
    ctl.submit(job(0, heads=8, kv_heads=2), 0.0)
    ctl.decide(0.0, "arrival")
    assert sorted(ctl.pending) == ["j0/0", "j0/1"]
    assert ctl.pending["j0/0"].heads == 4
    step = ctl.decide(0.0, "arrival")
    for batch in step.started:
        ctl.batch_done(batch.id, 2.0)
    assert [(r.id, r.state) for r in sink.finished] == [("j0", JobState.DONE)]


def test_device_loss_requeues_running_work_with_an_extra_attempt_later() -> None:
    ctl, _ = controller(Scripted(one_each))
    ctl.submit(job(0), 0.0)
    step = ctl.decide(0.0, "arrival")
    device = step.started[0].device
    ctl.device_down(device, 1.0, "lost")
    assert list(ctl.pending) == ["j0"]
    assert device not in ctl.free
    step = ctl.decide(1.0, "failure")
    assert step.started[0].device != device
    assert ctl.records["j0"].attempts == 2


def test_preempt_and_migrate() -> None:
    script = iter([[Place(("j0",), GPU0)], [Migrate("j0", GPU1)], [Preempt("j0")]])
    ctl, _sink = controller(Scripted(lambda v: next(script)))
    ctl.submit(job(0), 0.0)
    ctl.decide(0.0, "arrival")
    step = ctl.decide(1.0, "telemetry")
    assert (step.cancelled[0].device, step.started[0].device) == (GPU0, GPU1)
    step = ctl.decide(2.0, "telemetry")
    assert step.cancelled and list(ctl.pending) == ["j0"]
    assert ctl.devices[GPU1].share_free == 1.0


def test_cluster_jobs_take_a_gang_of_gpus_and_host_resources() -> None:
    ctl, sink = controller(Scripted(lambda v: [Place(("c0",), GPU0, "", (GPU1,))]))
    ctl.submit(cluster_job(id="c0", gpus=2, cpus=4, memory_bytes=1 << 30), 0.0)
    ctl.decide(0.0, "arrival")
    assert outcomes(sink)[0][1] == "applied"
    assert ctl.devices[GPU1].share_free == 0.0
    assert ctl.nodes["gpu-0"].cpus_free == 28.0


def test_time_never_goes_backwards() -> None:
    ctl, _ = controller(Scripted(lambda v: []))
    ctl.decide(5.0, "telemetry")
    with pytest.raises(ValueError, match="backwards"):
        ctl.decide(4.0, "telemetry")


def test_decisions_carry_the_policy_and_reason() -> None:
    ctl, sink = controller(Scripted(lambda v: Decisions((Place(("j0",), GPU0, "why not"),),
                                                        state=7)))
    ctl.submit(job(0), 0.0)
    ctl.decide(0.0, "arrival")
    assert sink.rows[0] == {"t": 0.0, "policy": "scripted", "action": "place",
                            "outcome": "applied", "jobs": ["j0"], "device": GPU0,
                            "reason": "why not"}
    assert ctl.policy_state == 7


def test_a_failed_part_fails_its_parent_and_loses_no_batch_mate() -> None:
    script = iter([[Split("p", 2)], [Place(("p/0",), GPU0), Place(("p/1", "x"), GPU1)]])
    ctl, sink = controller(Scripted(lambda v: next(script, [])), max_attempts=1)
    ctl.submit(job(0, id="p", batch=2), 0.0)
    ctl.submit(job(1, id="x"), 0.0)
    ctl.decide(0.0, "arrival")
    ctl.decide(0.0, "arrival")
    ctl.device_down(GPU0, 1.0, "lost")  # p/0 fails for good: one attempt allowed
    assert [(r.id, r.state) for r in sink.finished] == [("p", JobState.FAILED)]
    assert "part 'p/0' failed" in (sink.finished[0].reason or "")
    batch = next(iter(ctl.batches.values()))
    assert batch.jobs == ("p/1", "x")  # still running: x is not stranded
    ctl.batch_done(batch.id, 2.0)
    assert [r.id for r in sink.finished] == ["p", "x"]
    assert not ctl.records and not ctl.batches


def test_splits_of_parts_and_colliding_ids_are_rejected() -> None:
    script = iter([[Split("p", 2)], [Split("p/0", 2)], [Split("q", 2)]])
    ctl, sink = controller(Scripted(lambda v: next(script, [])))
    ctl.submit(job(0, id="p", batch=4), 0.0)
    ctl.submit(job(1, id="q", batch=2), 0.0)
    ctl.submit(job(2, id="q/0"), 0.0)
    for _ in range(3):
        ctl.decide(0.0, "arrival")
    assert outcomes(sink)[1][2] == "a part of a split job cannot be split again"
    assert "'q/0' is already a job" in outcomes(sink)[2][2]
    assert ctl.pending["q/0"].batch == 1  # the user's job, untouched


def test_a_rejected_migration_changes_nothing() -> None:
    script = iter([[Place(("a", "b"), GPU0), Place(("c",), GPU1)], [Migrate("a", GPU1)]])
    ctl, sink = controller(Scripted(lambda v: next(script, [])), max_attempts=1)
    for i in "abc":
        ctl.submit(job(0, id=i), 0.0)
    ctl.decide(0.0, "arrival")
    step = ctl.decide(1.0, "telemetry")
    assert outcomes(sink)[-1][1:] == ("rejected", "device 'gpu-0/gpu1' has no free slot")
    assert not step.cancelled and not step.started
    assert {r.state for r in ctl.records.values()} == {JobState.RUNNING}
    assert not sink.finished


def test_compute_share_is_never_over_committed() -> None:
    ctl, sink = controller(Scripted(lambda v: [Place(("c",), GPU0), Place(("j",), GPU0)]))
    ctl.submit(cluster_job(id="c", gpus=1), 0.0)
    ctl.submit(job(0, id="j"), 0.0)
    ctl.decide(0.0, "arrival")
    assert [o for _, o, _ in outcomes(sink)] == ["applied", "rejected"]
    assert "compute free" in outcomes(sink)[1][2]
    assert ctl.devices[GPU0].share_free == 0.0


def test_gangs_stay_on_one_node() -> None:
    from scheduler.cluster import make_cluster

    cluster = make_cluster(gpu_nodes=2, gpus_per_node=1)
    ctl, sink = controller(Scripted(lambda v: [Place(("c",), "gpu-0/gpu0", "", ("gpu-1/gpu0",))]),
                           cluster)
    ctl.submit(cluster_job(id="c", gpus=2), 0.0)
    assert sink.finished[0].state is JobState.FAILED  # no node has two GPUs
    assert "on one node" in (sink.finished[0].reason or "")


def test_out_of_memory_shrinks_what_the_controller_plans_with_on_that_device() -> None:
    ctl, sink = controller(Scripted(one_each))
    ctl.submit(job(0), 0.0)
    ctl.submit(job(1), 0.0)
    step = ctl.decide(0.0, "arrival")
    first = next(b for b in step.started if b.device == GPU0)
    total = ctl.devices[GPU0].memory_total
    ctl.batch_done(first.id, 0.1, Failure(FailureCode.OUT_OF_MEMORY, "out of memory: refused"))
    dev = ctl.devices[GPU0]
    assert dev.memory_total == first.memory - 1 < total  # nothing else ran there
    assert dev.memory_free == dev.memory_total
    assert ctl.records[first.jobs[0]].state is JobState.QUEUED  # requeued, not lost
    assert outcomes(sink)[-1][:2] == ("oom", "learned")
    # The same job no longer fits there: a placement on GPU0 is rejected, with the size.
    ctl.switch_policy(Scripted(lambda view: [Place(tuple(view.pending), GPU0)]), "p", None)
    ctl.decide(0.2, "completion")
    assert outcomes(sink)[-1][1] == "rejected" and "free" in outcomes(sink)[-1][2]
    assert sink.records[-1].code is RejectCode.MEMORY
    # Other errors (a crashed worker) teach nothing about memory.
    ctl.switch_policy(Scripted(one_each), "p", None)
    other = next(b for b in ctl.decide(0.3, "tick").started)
    before = ctl.devices[other.device].memory_total
    # Even one whose text says "out of memory": the code decides, never the words.
    ctl.batch_done(other.id, 0.4, Failure(FailureCode.WORKER, "out of memory? worker failed"))
    assert ctl.devices[other.device].memory_total == before


def test_an_executor_that_cannot_stop_batches_rejects_preempt_and_migrate() -> None:
    """Live workers run a batch to its end: freeing the device would double-book it."""
    ctl, sink = controller(Scripted(one_each), can_preempt=False)
    ctl.submit(job(0), 0.0)
    step = ctl.decide(0.0, "arrival")
    batch = step.started[0]
    ctl.switch_policy(Scripted(lambda view: [Preempt("j0"), Migrate("j0", GPU1)]), "p", None)
    step = ctl.decide(0.1, "telemetry")
    assert not step.cancelled and not step.started
    assert [r["outcome"] for r in sink.rows[-2:]] == ["rejected", "rejected"]
    assert {r.code for r in sink.records[-2:]} == {RejectCode.CANNOT_PREEMPT}
    assert "simulator only" in sink.rows[-1]["why"]
    assert ctl.batches[batch.id].device == batch.device  # still running where it was


@pytest.mark.parametrize("deadline", [None, 5.0])
def test_a_view_decided_under_a_deadline_does_not_move_under_the_policy(deadline) -> None:
    """A decision abandoned at its deadline may still be running in its thread: what it
    reads must be the state it was called with. Without a deadline the view is shared
    (nothing changes while decide runs synchronously), which is what makes it O(1)."""
    seen = []

    def keep(view):
        seen.append(view)
        return [Place(("j0",), GPU0)] if len(seen) == 2 else []

    ctl, _ = controller(Scripted(keep), decide_timeout=deadline)
    ctl.submit(job(0), 0.0)
    ctl.decide(0.0, "arrival")
    ctl.submit(job(1), 0.1)
    ctl.decide(0.1, "arrival")  # places j0: the first view's device and queue change
    first = seen[0]
    if deadline is None:
        assert list(first.pending) == ["j1"] and GPU0 not in first.free
    else:
        assert list(first.pending) == ["j0"] and GPU0 in first.free
        assert first.devices[GPU0].running == () and first.info("j0").attempts == 0


@pytest.mark.parametrize(("action", "code"), [
    (Place(("nope",), GPU0), RejectCode.JOB_NOT_QUEUED),
    (Place(("j0",), "gpu-9/gpu9"), RejectCode.UNKNOWN_DEVICE),
    (Place(("j0", "j0"), GPU0), RejectCode.BAD_BATCH),
    (Offload(("j0",), GPU0), RejectCode.BAD_TARGET),
    (Split("j0", 3, "heads"), RejectCode.BAD_SPLIT),
    (Preempt("j0"), RejectCode.JOB_NOT_RUNNING),
])
def test_every_rejection_carries_a_code(action, code) -> None:
    ctl, sink = controller(Scripted(lambda view: [action]))
    ctl.submit(job(0), 0.0)
    ctl.decide(0.0, "arrival")
    assert sink.records[-1].outcome == "rejected" and sink.records[-1].code is code
    assert sink.rows[-1]["code"] == code.value  # decisions.jsonl carries it too


def test_the_view_epoch_moves_with_telemetry_and_device_health_only() -> None:
    from scheduler.view import Telemetry

    epochs: list[int] = []

    def note(view):
        epochs.append(view.epoch)
        return Decisions()

    ctl, _ = controller(Scripted(note))
    ctl.submit(job(1), 0.0)
    ctl.decide(0.0, "arrival")
    ctl.submit(job(2), 0.1)
    ctl.decide(0.1, "arrival")  # a new job: same telemetry, same health
    ctl.observe([Telemetry(0.2, "gpu-0/gpu0", 0.0, 0, 1, 0, 0, 0.0)])
    ctl.decide(0.2, "telemetry")
    ctl.device_down("gpu-0/gpu1", 0.3, "lost")
    ctl.decide(0.3, "failure")
    ctl.device_up("gpu-0/gpu1", 0.4)
    ctl.decide(0.4, "device_up")
    assert epochs[0] == epochs[1] > 0
    assert len(set(epochs[1:])) == 4


def test_a_client_cancellation_ends_each_job_once_and_keeps_batch_mates_work() -> None:
    """Queued: ends now. Running beside others: ends, failed, when its batch does while its
    batch-mates are done. Running alone: its batch is handed back to be stopped, and a
    batch that fails or is lost ends it instead of requeueing it."""
    script = iter([[Place(("a", "b"), GPU0), Place(("c",), GPU1)], [], [Place(("d",), GPU0)]])
    ctl, sink = controller(Scripted(lambda v: next(script, [])))
    for name in "abcd":
        ctl.submit(attention_job(id=name, submit_time=0.0), 0.0)
    first = ctl.decide(0.0, "arrival")
    assert ctl.cancel("x", "bye") == ("unknown", None)
    assert ctl.cancel("a", "cancelled by the client") == ("running", None)  # b wants the batch
    (alone,) = [b for b in first.started if b.device == GPU1]
    assert ctl.cancel("c", "cancelled by the client") == ("running", alone)
    ctl.batch_done(alone.id, 0.5, Failure(FailureCode.CANCELLED, "cancelled while running"))
    ended = {r.id: (r.state, r.reason) for r in sink.finished}
    assert ended == {"c": (JobState.FAILED, "cancelled by the client")}  # never requeued
    (shared,) = [b for b in first.started if b.device == GPU0]
    ctl.batch_done(shared.id, 1.0)
    ended = {r.id: (r.state, r.reason) for r in sink.finished}
    assert ended["a"] == (JobState.FAILED, "cancelled by the client")
    assert ended["b"] == (JobState.DONE, None)
    assert ctl.cancel("d", "cancelled by the client") == ("queued", None)
    assert {r.id for r in sink.finished} == set("abcd") and not ctl.pending and not ctl.unfinished
    assert ctl.decide(2.0, "tick").started == []  # d is gone: nothing to place
