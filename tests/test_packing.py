"""One packing rule (scheduler/packing.py): what the worker runs is what the cost model prices.

The worker's calls are counted where they reach torch: every
``scaled_dot_product_attention`` call a real ``AttentionWorker.run`` makes,
and whether it carries a gradient (one backward call each).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import costmodel, packing
from scheduler.jobs import AttentionJob
from scheduler.profiles import DeviceProfile, load_profile, profile_from_dict
from tests.builders import attention_job, cluster_job

torch = pytest.importorskip("torch")
F = torch.nn.functional


@dataclass(frozen=True)
class Seen:
    """One SDPA call as the spy saw it."""

    decode: bool
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    rows: int
    grad: bool


@contextmanager
def counted_calls() -> Iterator[list[Seen]]:
    """Record every successful SDPA call made inside (a refused backend is not a call)."""
    from workers import kernels

    seen: list[Seen] = []
    real_sdpa, real_decode = F.scaled_dot_product_attention, kernels.decode_many
    decoding = [False]

    def sdpa(q: Any, k: Any, v: Any, *args: Any, **kw: Any) -> Any:
        out = real_sdpa(q, k, v, *args, **kw)
        nested = q.is_nested
        seen.append(Seen(decoding[0], q.shape[1], 0 if nested else k.shape[1],
                         0 if nested else q.shape[-2], 0 if nested else k.shape[-2],
                         0 if nested else q.shape[0], q.requires_grad))
        return out

    def decode_many(*args: Any, **kw: Any) -> Any:
        decoding[0] = True
        try:
            return real_decode(*args, **kw)
        finally:
            decoding[0] = False

    with mock.patch.object(F, "scaled_dot_product_attention", sdpa), \
            mock.patch.object(kernels, "decode_many", decode_many):
        yield seen


_WORKERS: dict[str, Any] = {}


def run_on_worker(jobs: list[AttentionJob], kind: str = "cpu") -> list[Seen]:
    """The calls a real worker makes for one batch (one worker per kind, reused)."""
    from workers.worker import AttentionWorker

    worker = _WORKERS.get(kind)
    if worker is None:
        worker = _WORKERS[kind] = AttentionWorker(f"{kind}0", kind, cpus=1)
    with counted_calls() as seen:
        result = worker.run("b0", jobs, 0.0, 0.0)
    assert result.error is None, result.error
    return seen


def untimed_cpu() -> DeviceProfile:
    """The shipped CPU profile, without a timed decode step, so every call pays the floor."""
    path = Path(costmodel.__file__).parent / "profile_data" / "cpu.json"
    data = json.loads(path.read_text())
    for key in ("decode_step_us", "decode_element_ns", "decode_dtype"):
        data.pop(key, None)
    return profile_from_dict(data)


# -- which jobs may share a batch -------------------------------------------------------------


@pytest.mark.parametrize(("changes", "ok"), [
    ({}, True),
    ({"kind": "decode", "q_len": 1, "steps": 4, "heads": 4, "kv_heads": 2}, True),  # any kind
    ({"kind": "train", "q_len": 7, "kv_len": 9, "layers": 3}, True),               # any shape
    ({"head_dim": 32}, False),
    ({"dtype": "fp32"}, False),
    ({"causal": True}, False),
    ({"kind": "model"}, False),  # a model job runs alone
])
def test_can_pack_table(changes: dict[str, Any], ok: bool) -> None:
    head, other = attention_job(id="a"), attention_job(id="b", **changes)
    assert packing.can_pack([head, other]) is ok
    assert (packing.refusal([head, other]) is None) is ok


def test_lone_jobs_and_cluster_jobs() -> None:
    assert packing.can_pack([attention_job(kind="model")])
    assert not packing.can_pack([cluster_job()])
    assert not packing.can_pack([attention_job(), cluster_job()])
    assert not packing.can_pack([])


def test_refusal_names_the_rule_and_the_jobs_at_fault() -> None:
    why = packing.refusal([attention_job(id="a"), attention_job(id="b", head_dim=32)])
    assert why is not None and why.startswith(packing.RULE)
    assert "sharing head_dim" in why  # what the controller's message has always said
    assert "b has head_dim 32" in why and "a has head_dim 64" in why
    assert "m is a model job" in str(packing.refusal([attention_job(), attention_job(
        id="m", kind="model")]))
    with pytest.raises(ValueError, match="sharing head_dim"):
        costmodel.batch_estimate([attention_job(id="a"), attention_job(id="b", causal=True)],
                                 load_profile("cpu"))


# -- a prefill's steps ------------------------------------------------------------------------


def test_a_prefill_with_steps_costs_what_the_worker_runs() -> None:
    """A prefill is one pass over its prompt: the worker runs each layer once whatever
    ``steps`` says, so the cost model charges that, not steps× it. Training repeats."""
    cpu = untimed_cpu()
    once = attention_job(id="p1", q_len=16, kv_len=16, heads=2, kv_heads=1, head_dim=8,
                         layers=2, dtype="fp32")
    thrice = attention_job(id="p3", q_len=16, kv_len=16, heads=2, kv_heads=1, head_dim=8,
                           layers=2, dtype="fp32", steps=3)
    ran = run_on_worker([thrice])
    assert len(ran) == 2  # one call per layer
    assert costmodel.estimate(thrice, cpu).calls == len(ran)
    assert costmodel.batch_estimate([thrice], cpu).calls == len(ran)
    assert costmodel.batch_estimate([thrice], cpu, packed=False).calls == len(ran)
    assert sum(g.calls for g in packing.call_groups([thrice], "cpu")) == len(ran)
    assert costmodel.estimate(thrice, cpu) == costmodel.estimate(once, cpu)
    assert costmodel.total_flops(thrice) == costmodel.total_flops(once)
    train = attention_job(id="t3", kind="train", q_len=16, kv_len=16, heads=2, kv_heads=1,
                          head_dim=8, layers=2, dtype="fp32", steps=3)
    trained = run_on_worker([train])
    assert len(trained) == 6 and all(s.grad for s in trained)  # 6 forward, 6 backward
    assert costmodel.estimate(train, cpu).calls == 12


def test_a_training_step_packed_with_a_deeper_prompt_pays_both() -> None:
    """Forward calls are the longest member's, backward calls the longest training
    member's: a 1-layer training step beside a 4-layer prompt of its shape runs 4
    forward calls and 1 backward call, not max(4, 2)."""
    shape = {"q_len": 8, "kv_len": 8, "heads": 2, "kv_heads": 1, "head_dim": 8, "dtype": "fp32"}
    jobs = [attention_job(id="p", layers=4, **shape),
            attention_job(id="t", kind="train", layers=1, **shape)]
    ran = run_on_worker(jobs)
    assert (len(ran), sum(s.grad for s in ran)) == (4, 1)
    assert costmodel.batch_estimate(jobs, untimed_cpu()).calls == 5


# -- the worker's real calls against the rule and the cost model -------------------------------


@st.composite
def batches(draw: st.DrawFn) -> list[AttentionJob]:
    """Packable batches: one head_dim, dtype and causality; any mix of the rest."""
    common = {"head_dim": draw(st.sampled_from([4, 8])),
              "dtype": draw(st.sampled_from(["fp32", "bf16"])), "causal": draw(st.booleans())}
    jobs = []
    for i in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["prefill", "train", "decode"]))
        heads, kv_heads = draw(st.sampled_from([(2, 1), (2, 2), (4, 2)]))
        kv = draw(st.integers(1, 4))
        q = 1 if kind == "decode" else draw(st.sampled_from([kv, draw(st.integers(1, 4))]))
        jobs.append(attention_job(id=f"j{i}", kind=kind, heads=heads, kv_heads=kv_heads,
                                  q_len=q, kv_len=kv, steps=draw(st.integers(1, 3)),
                                  layers=draw(st.integers(1, 3)),
                                  batch=draw(st.integers(1, 2)), **common))
    return jobs


def _observed(seen: list[Seen]) -> tuple[Counter[tuple[object, ...]], ...]:
    """(forward calls, backward calls, rows) per (path, heads, kv_heads[, q, kv])."""
    calls: Counter[tuple[object, ...]] = Counter()
    backward: Counter[tuple[object, ...]] = Counter()
    rows: Counter[tuple[object, ...]] = Counter()
    for s in seen:
        key = ("decode", s.heads, s.kv_heads) if s.decode else \
            ("shape", s.heads, s.kv_heads, s.q_len, s.kv_len)
        calls[key] += 1
        backward[key] += s.grad
        rows[key] += s.rows
    return calls, backward, rows


def _expected(groups: tuple[packing.CallGroup, ...]) -> tuple[Counter[tuple[object, ...]], ...]:
    """The same tallies from the rule: a decode's layer count is not on its tensors."""
    calls: Counter[tuple[object, ...]] = Counter()
    backward: Counter[tuple[object, ...]] = Counter()
    rows: Counter[tuple[object, ...]] = Counter()
    for g in groups:
        key = g.key[:3] if g.kind == "decode" else g.key
        calls[key] += g.forward
        backward[key] += g.backward
        rows[key] += sum(j.batch * packing.forward_calls(j) for j in g.jobs)
    return calls, backward, rows


@settings(deadline=None, max_examples=40)
@given(batches())
def test_the_worker_makes_the_calls_the_rule_and_the_cost_model_count(
        jobs: list[AttentionJob]) -> None:
    seen = run_on_worker(jobs)
    groups = packing.call_groups(jobs, "cpu")
    calls, backward, rows = _observed(seen)
    want_calls, want_backward, want_rows = _expected(groups)
    assert calls == want_calls  # (Counters: a missing key counts as zero)
    assert backward == want_backward
    assert rows == want_rows  # the same jobs share each call
    pack = costmodel.Pack(untimed_cpu())
    for job in jobs:
        before = pack.seconds_with(job)
        pack.add(job)
        assert pack.seconds == before  # asking first prices what adding then gives
    assert pack.calls == len(seen) + sum(backward.values())
    assert pack.groups == {g.key: (g.forward, g.backward) for g in groups}
    assert costmodel.batch_estimate(jobs, untimed_cpu()).calls == pack.calls


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@settings(deadline=None, max_examples=25)
@given(batches())
def test_on_a_gpu_a_launch_is_one_call_unless_the_kernels_split_it(
        jobs: list[AttentionJob]) -> None:
    """A GPU worker packs each head layout into one call per launch (nested or padded);
    the cost model counts that. Where the kernels split a launch by shape instead
    (``kernels.choose_packing``), the worker makes more calls than priced: known, and
    counted here only as at least the priced number."""
    seen = run_on_worker(jobs, "gpu")
    groups = packing.call_groups(jobs, "gpu")
    priced = sum(g.calls for g in groups)
    made = len(seen) + sum(s.grad for s in seen)
    assert made >= priced
    if not any(g.kind == "layout" and _splits(g) for g in groups):
        assert made == priced


def _splits(group: packing.CallGroup) -> bool:
    """Whether some launch of a prompt group may be split by shape on CUDA."""
    from workers import kernels

    head = group.jobs[0]
    shapes = {(j.q_len, j.kv_len) for j in group.jobs}
    return len(shapes) > 1 and kernels.nested_unsupported(
        "cuda", head.causal, [q for q, _ in shapes], [k for _, k in shapes]) is not None
