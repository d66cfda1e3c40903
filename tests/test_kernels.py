"""Every kernel path against the plain formula softmax(QKᵀ/√d)V."""

from __future__ import annotations

import pytest
import torch

from workers import kernels

TOL = {"fp32": {"atol": 2e-5, "rtol": 2e-5}, "bf16": {"atol": 2e-2, "rtol": 2e-2}}


def qkv(q_len, kv_len, heads=4, kv_heads=2, d=16, batch=1, dtype="fp32", seed=0):
    g = torch.Generator().manual_seed(seed)
    t = kernels.DTYPES[dtype]
    return (torch.randn(batch, heads, q_len, d, generator=g).to(t),
            torch.randn(batch, kv_heads, kv_len, d, generator=g).to(t),
            torch.randn(batch, kv_heads, kv_len, d, generator=g).to(t))


def test_reference_is_the_formula() -> None:
    q, k, v = qkv(2, 3, heads=1, kv_heads=1, d=4)
    scores = (q[0, 0] @ k[0, 0].T) / 2.0  # √4
    expected = torch.softmax(scores, dim=-1) @ v[0, 0]
    assert torch.allclose(kernels.reference_attention(q, k, v, False)[0, 0], expected)


def test_causal_mask_is_bottom_right() -> None:
    assert kernels.causal_mask(2, 4).tolist() == [[True, True, True, False],
                                                  [True, True, True, True]]
    assert kernels.causal_mask(3, 3).tolist() == [[True, False, False], [True, True, False],
                                                  [True, True, True]]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("backend", ["flash", "math", None])
@pytest.mark.parametrize(("q_len", "kv_len"), [(16, 16), (5, 12), (1, 9)])
def test_attention_matches_reference(dtype, causal, backend, q_len, kv_len) -> None:
    q, k, v = qkv(q_len, kv_len, dtype=dtype)
    try:
        out, used = kernels.attention(q, k, v, causal, backend=backend)
    except RuntimeError:
        pytest.skip(f"{backend} has no kernel for this case on this device")
    assert used in kernels.BACKENDS
    assert backend is None or used == backend
    assert torch.allclose(out.float(), kernels.reference_attention(q, k, v, causal).float(),
                          **TOL[dtype])


def split_used(used: str) -> tuple[str, str]:
    """("flash", "padded") from "flash+padded (nested: ...)"."""
    backend, _, method = used.partition("+")
    return backend, method.split(" ")[0]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("method", [None, "split", "padded", "nested"])
def test_packed_equals_one_by_one(dtype, causal, method) -> None:
    shapes = [(7, 7), (3, 10), (12, 12), (1, 5)]
    jobs = [qkv(lq, lk, dtype=dtype, seed=i) for i, (lq, lk) in enumerate(shapes)]
    outs, used = kernels.packed_attention([j[0] for j in jobs], [j[1] for j in jobs],
                                          [j[2] for j in jobs], causal, method=method)
    for (q, k, v), out in zip(jobs, outs, strict=True):
        alone, _ = kernels.attention(q, k, v, causal)
        assert out.shape == alone.shape
        assert torch.allclose(out.float(), alone.float(), **TOL[dtype])
        assert torch.allclose(out.float(), kernels.reference_attention(q, k, v, causal).float(),
                              **TOL[dtype])
    backend, ran = split_used(used)
    assert backend in kernels.BACKENDS
    if method is None:
        assert ran == "split"  # the CPU rule: one call per shape
    elif method == "nested" and causal:
        assert ran == "padded" and "(nested: no causal nested SDPA on cpu" in used
    else:
        assert ran == method


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("causal", [False, True])
def test_nested_matches_reference_and_padding(dtype, causal) -> None:
    """Entries of any batch size, GQA and cross-attention, through one jagged call.

    Causal attention runs nested for real when every job has one query (the
    mask is then a no-op); longer causal queries are covered by the fallback.
    """
    shapes = [(1, 9), (1, 3), (1, 17)] if causal else [(9, 9), (4, 13), (17, 2), (1, 6)]
    jobs = [qkv(lq, lk, batch=1 + i % 2, dtype=dtype, seed=10 + i)
            for i, (lq, lk) in enumerate(shapes)]
    qs, ks, vs = ([j[n] for j in jobs] for n in range(3))
    nested, used = kernels.nested_attention(qs, ks, vs, causal)
    padded, _ = kernels.packed_attention(qs, ks, vs, causal, method="padded")
    assert used == "math"  # the only nested kernel torch 2.13 has on CPU
    for (q, k, v), a, b in zip(jobs, nested, padded, strict=True):
        assert a.shape == q.shape
        ref = kernels.reference_attention(q, k, v, causal).float()
        assert torch.allclose(a.float(), ref, **TOL[dtype])
        assert torch.allclose(a.float(), b.float(), **TOL[dtype])


def test_nested_refuses_causal_queries_on_cpu() -> None:
    q, k, v = qkv(5, 5)
    q2, k2, v2 = qkv(3, 3, seed=1)
    with pytest.raises(RuntimeError, match="no causal nested SDPA on cpu"):
        kernels.nested_attention([q, q2], [k, k2], [v, v2], causal=True)


def test_nested_gradients_match_the_reference() -> None:
    """Training jobs may be packed nested on a GPU: the backward pass must agree."""
    jobs = [[t.requires_grad_() for t in qkv(lq, lq, seed=20 + lq)] for lq in (4, 7)]
    outs, _ = kernels.packed_attention(*[[j[n] for j in jobs] for n in range(3)], causal=False,
                                       method="nested")
    sum(o.square().sum() for o in outs).backward()
    for q, k, v in jobs:
        got = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
        kernels.reference_attention(q, k, v, False).square().sum().backward()
        for g, t in zip(got, (q, k, v), strict=True):
            assert torch.allclose(g, t.grad, atol=1e-4, rtol=1e-4)


def test_padding_waste() -> None:
    assert kernels.padding_waste([4, 4], [4, 4]) == 0.0
    assert kernels.padding_waste([2, 4], [2, 4]) == pytest.approx(1 - (4 + 16) / 32)
    assert kernels.padding_waste([2, 4], [2, 4], batches=[3, 1]) == pytest.approx(
        1 - (3 * 4 + 16) / (4 * 16))


SMALL, BIG = (8, 64), (64, 128)  # (heads, head_dim): ~1e7 and ~1.4e10 FLOPs per call below


@pytest.mark.parametrize(("device", "q_lens", "kv_lens", "causal", "size", "method"), [
    ("cpu", [64, 64], [64, 64], True, SMALL, "dense"),
    ("cuda", [64, 64], [64, 64], False, SMALL, "dense"),
    ("cpu", [60, 64], [60, 64], False, SMALL, "split"),       # CPU never pads...
    ("cpu", [64, 8], [64, 8], False, SMALL, "split"),
    ("cpu", [60, 64, 50], [60, 64, 50], False, SMALL, "split"),  # ...nor nests
    ("cuda", [60, 640], [60, 640], False, BIG, "nested"),     # varlen: no waste
    ("cuda", [60, 64], [60, 64], True, SMALL, "nested"),      # square causal agrees
    ("cuda", [1, 1], [60, 90], True, SMALL, "nested"),        # one query: mask is a no-op
    ("cuda", [30, 32], [60, 64], True, SMALL, "padded"),      # cross causal, little waste
    ("cuda", [2, 2, 32], [6, 6, 64], True, SMALL, "split"),   # cross causal, mostly padding
    ("cuda", [900, 1024], [1800, 2048], True, BIG, "split"),  # big calls: not launch-bound
    ("mps", [60, 64], [60, 64], False, SMALL, "split"),       # unknown devices: CPU rule
])
def test_choose_packing(device, q_lens, kv_lens, causal, size, method) -> None:
    choice = kernels.choose_packing(q_lens, kv_lens, causal, device, heads=size[0],
                                    head_dim=size[1])
    assert choice.method == method, choice.reason
    assert choice.reason


def test_unknown_packing_method_is_refused() -> None:
    q, k, v = qkv(4, 4)
    with pytest.raises(ValueError, match="unknown packing method"):
        kernels.packed_attention([q], [k], [v], False, method="zip")


def test_packing_same_shapes_needs_no_padding() -> None:
    jobs = [qkv(8, 8, seed=i) for i in range(3)]
    outs, used = kernels.packed_attention(*[[j[n] for j in jobs] for n in range(3)],
                                          causal=True)
    assert split_used(used)[1] == "dense"
    for (q, k, v), out in zip(jobs, outs, strict=True):
        assert torch.allclose(out, kernels.reference_attention(q, k, v, True), **TOL["fp32"])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_decode_attends_to_a_growing_cache(dtype) -> None:
    steps, kv_len = 4, 6
    q_steps, k_cache, v_cache = qkv(steps, kv_len + steps - 1, dtype=dtype)
    out, _ = kernels.decode(q_steps, k_cache, v_cache, kv_len)
    for s in range(steps):
        expected = kernels.reference_attention(q_steps[:, :, s:s + 1],
                                               k_cache[:, :, :kv_len + s],
                                               v_cache[:, :, :kv_len + s], causal=False)
        assert torch.allclose(out[:, :, s:s + 1].float(), expected.float(), **TOL[dtype])


def test_training_gradients_match_the_reference() -> None:
    q, k, v = (t.requires_grad_() for t in qkv(6, 6))
    out, _ = kernels.attention(q, k, v, causal=True)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    kernels.reference_attention(q, k, v, True).square().sum().backward()
    for got, want in zip(grads, (q.grad, k.grad, v.grad), strict=True):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_worker_records_the_packing_method_and_it_does_not_change_results(monkeypatch) -> None:
    """Mixed lengths in one worker batch: CPU splits by shape; forcing the GPU-style
    nested rule on the same seed gives the same checksum through one jagged call."""
    from tests.builders import attention_job
    from workers.worker import AttentionWorker

    jobs = [attention_job(id=f"j{i}", q_len=lq, kv_len=lk, heads=4, kv_heads=2, head_dim=16,
                          dtype="fp32", kind=kind)
            for i, (lq, lk, kind) in enumerate([(12, 12, "prefill"), (5, 9, "prefill"),
                                                (12, 12, "train"), (7, 7, "prefill")])]
    split = AttentionWorker("cpu0", "cpu", seed=3).run("b0", jobs, 0.1, 1.0)
    assert split.error is None and split.backend == "flash+split"
    monkeypatch.setitem(kernels.RULES, "cpu", kernels.PackRule(True, -1.0, 0.0))
    nested = AttentionWorker("cpu0", "cpu", seed=3).run("b0", jobs, 0.1, 1.0)
    assert nested.error is None and nested.backend == "math+nested"
    assert nested.checksum == pytest.approx(split.checksum, rel=1e-4, abs=1e-3)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_decode_many_matches_each_request_decoded_alone(dtype) -> None:
    """Requests of different cache lengths and step counts, one call per step."""
    kv_lens, steps = [9, 3, 6, 6], [5, 4, 4, 1]  # ordered by steps, longest first
    length = max(k + s - 1 for k, s in zip(kv_lens, steps, strict=True))
    q, k, v = qkv(max(steps), length, batch=len(steps), dtype=dtype, seed=7)
    out, _ = kernels.decode_many(q, k, v, kv_lens, steps)
    for r, (kv, n) in enumerate(zip(kv_lens, steps, strict=True)):
        alone, _ = kernels.decode(q[r:r + 1, :, :n], k[r:r + 1, :, :kv + n - 1],
                                  v[r:r + 1, :, :kv + n - 1], kv)
        assert torch.allclose(out[r:r + 1, :, :n].float(), alone.float(), **TOL[dtype])
        for s in range(n):
            expected = kernels.reference_attention(q[r:r + 1, :, s:s + 1], k[r:r + 1, :, :kv + s],
                                                   v[r:r + 1, :, :kv + s], causal=False)
            assert torch.allclose(out[r:r + 1, :, s:s + 1].float(), expected.float(),
                                  **TOL[dtype])
        assert not out[r, :, n:].any()  # past its steps a row stays zero


def test_decode_many_wants_rows_longest_first() -> None:
    q, k, v = qkv(3, 8, batch=2)
    with pytest.raises(ValueError, match="longest first"):
        kernels.decode_many(q, k, v, [4, 4], [1, 3])
