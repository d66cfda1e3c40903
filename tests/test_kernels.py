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


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("causal", [False, True])
def test_packed_equals_one_by_one(dtype, causal) -> None:
    shapes = [(7, 7), (3, 10), (12, 12), (1, 5)]
    jobs = [qkv(lq, lk, dtype=dtype, seed=i) for i, (lq, lk) in enumerate(shapes)]
    outs, used = kernels.packed_attention([j[0] for j in jobs], [j[1] for j in jobs],
                                          [j[2] for j in jobs], causal)
    for (q, k, v), out in zip(jobs, outs, strict=True):
        alone, _ = kernels.attention(q, k, v, causal)
        assert out.shape == alone.shape
        assert torch.allclose(out.float(), alone.float(), **TOL[dtype])
        assert torch.allclose(out.float(), kernels.reference_attention(q, k, v, causal).float(),
                              **TOL[dtype])
    assert used in kernels.BACKENDS


def test_packing_same_shapes_needs_no_padding() -> None:
    jobs = [qkv(8, 8, seed=i) for i in range(3)]
    outs, _ = kernels.packed_attention(*[[j[n] for j in jobs] for n in range(3)], causal=True)
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
