"""The worker's KV block store: prefix reuse gives the rows computing the whole prompt gives."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from workers import kernels
from workers.kvstore import KVBlockStore, prefill_with_prefix, reusable_blocks

TOL = {"fp32": {"atol": 1e-5, "rtol": 1e-5}, "bf16": {"atol": 2e-2, "rtol": 2e-2}}
HEADS, KV_HEADS, D = 4, 2, 8


def formula(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(QKᵀ/√d)V in fp64, grouped heads repeated, causal mask bottom-right."""
    group = q.shape[-3] // k.shape[-3]
    kf = k.double().repeat_interleave(group, dim=-3)
    vf = v.double().repeat_interleave(group, dim=-3)
    scores = q.double() @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        lq, lk = q.shape[-2], k.shape[-2]
        seen = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        scores = scores.masked_fill(~seen, float("-inf"))
    return torch.softmax(scores, dim=-1) @ vf


def prompt(tokens: int, dtype: str = "fp32", seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = kernels.DTYPES[dtype]
    return (torch.randn(HEADS, tokens, D, generator=g).to(t),
            torch.randn(KV_HEADS, tokens, D, generator=g).to(t),
            torch.randn(KV_HEADS, tokens, D, generator=g).to(t))


def kv(tokens: int, value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((1, tokens, 2), value), torch.full((1, tokens, 2), value)


# -- prefill over a cached prefix ------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("prefix", [0, 4, 12, 19])  # 19 of 20 tokens: one row left
def test_prefix_prefill_matches_the_whole_prompt(dtype, causal, prefix) -> None:
    q, k, v = prompt(20, dtype)
    whole = formula(q, k, v, causal)
    assert torch.allclose(kernels.reference_attention(q[None], k[None], v[None], causal)[0]
                          .double(), whole, atol=1e-5 if dtype == "fp32" else 2e-2)
    kp, vp = (k[:, :prefix], v[:, :prefix]) if prefix else (None, None)
    out = prefill_with_prefix(q[:, prefix:], kp, vp, k[:, prefix:], v[:, prefix:], causal)
    assert out.shape == (HEADS, 20 - prefix, D)
    assert out.dtype == q.dtype
    assert torch.allclose(out.double(), whole[:, prefix:], **TOL[dtype])


def test_prefix_prefill_takes_a_batch_dim() -> None:
    q, k, v = prompt(10)
    out = prefill_with_prefix(q[None, :, 6:], k[None, :, :6], v[None, :, :6], k[None, :, 6:],
                              v[None, :, 6:], True)
    assert out.shape == (1, HEADS, 4, D)
    assert torch.allclose(out[0].double(), formula(q, k, v, True)[:, 6:], **TOL["fp32"])


def test_causal_rows_see_the_whole_prefix_but_no_later_new_key() -> None:
    """Bottom-right: new row 0 sees prefix key 7 (top-left it would not), row 2 not key 11."""
    q, k, v = prompt(12)

    def run(v: torch.Tensor) -> torch.Tensor:
        return prefill_with_prefix(q[:, 8:], k[:, :8], v[:, :8], k[:, 8:], v[:, 8:], True)

    out = run(v)
    last_prefix, last_new = v.clone(), v.clone()
    last_prefix[:, 7] += 10.0
    last_new[:, 11] += 10.0
    assert not torch.allclose(run(last_prefix)[:, 0], out[:, 0])
    assert torch.equal(run(last_new)[:, :3], out[:, :3])
    assert not torch.allclose(run(last_new)[:, 3], out[:, 3])


def test_a_prefix_needs_both_k_and_v() -> None:
    q, k, v = prompt(4)
    with pytest.raises(ValueError, match="both"):
        prefill_with_prefix(q, k, None, k, v, True)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("causal", [False, True])
def test_a_second_prompt_reuses_the_first_prompts_blocks(dtype, causal) -> None:
    bt = 4
    q1, k1, v1 = prompt(18, dtype, seed=1)  # 4 whole blocks and 2 tokens
    out1 = prefill_with_prefix(q1, None, None, k1, v1, causal)  # nothing cached yet
    assert torch.allclose(out1.double(), formula(q1, k1, v1, causal), **TOL[dtype])
    store = KVBlockStore(budget_bytes=1 << 20)
    assert store.put([10, 11, 12, 13, 14], k1, v1, bt) == 4
    assert len(store) == 4 and 14 not in store

    # The second prompt shares the first 3 blocks (12 tokens) and then differs.
    q2, k2, v2 = prompt(23, dtype, seed=2)
    k2[:, :12], v2[:, :12] = k1[:, :12], v1[:, :12]
    ids2 = [10, 11, 12, 20, 21, 22]
    usable = reusable_blocks(23, bt)
    assert usable == 5
    n, kp, vp = store.take_prefix(ids2[:usable])
    assert n == 3
    assert kp is not None and vp is not None
    assert torch.equal(kp, k1[:, :12]) and torch.equal(vp, v1[:, :12])
    assert (store.hits_blocks, store.lookups_blocks) == (3, 5)

    p = n * bt
    out = prefill_with_prefix(q2[:, p:], kp, vp, k2[:, p:], v2[:, p:], causal)
    assert torch.allclose(out.double(), formula(q2, k2, v2, causal)[:, p:], **TOL[dtype])
    assert store.put(ids2, torch.cat([kp, k2[:, p:]], dim=1), torch.cat([vp, v2[:, p:]], dim=1),
                     bt) == 5
    assert store.resident_prefix(ids2) == 5


def test_a_miss_on_the_first_block_returns_nothing() -> None:
    store = KVBlockStore(1 << 10)
    store.put([2], *kv(1), 1)
    assert store.take_prefix([1, 2]) == (0, None, None)
    assert (store.hits_blocks, store.lookups_blocks) == (0, 2)


def test_reusable_blocks_leaves_a_token_to_compute() -> None:
    assert [reusable_blocks(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 0, 0, 1, 1, 2]


# -- the store ---------------------------------------------------------------------------------

BLOCK = 2 * 1 * 1 * 2 * 4  # K and V of one 1-token block, (1, 1, 2) fp32


def test_lru_evicts_the_least_recently_used_within_budget() -> None:
    store = KVBlockStore(2 * BLOCK)
    store.put([1], *kv(1), 1)
    store.put([2], *kv(1), 1)
    store.put([3], *kv(1), 1)
    assert 1 not in store and 2 in store and 3 in store
    assert store.bytes_used == 2 * BLOCK and store.evicted_blocks == 1


def test_touching_a_block_changes_which_goes() -> None:
    store = KVBlockStore(2 * BLOCK)
    store.put([1], *kv(1), 1)
    store.put([2], *kv(1), 1)
    assert store.take_prefix([1])[0] == 1  # 1 is now the most recent
    store.put([3], *kv(1), 1)
    assert 1 in store and 2 not in store and 3 in store

    store.put([3], *kv(1), 1)  # a resident block put again is touched, not copied
    store.put([4], *kv(1), 1)
    assert 3 in store and 1 not in store


def test_resident_prefix_does_not_touch() -> None:
    store = KVBlockStore(2 * BLOCK)
    store.put([1], *kv(1), 1)
    store.put([2], *kv(1), 1)
    assert store.resident_prefix([1, 2, 3]) == 2
    assert store.resident_prefix([2, 1]) == 2
    assert store.resident_prefix([3, 1]) == 0
    store.put([3], *kv(1), 1)
    assert 1 not in store


def test_eviction_trims_a_prefix_from_its_tail() -> None:
    store = KVBlockStore(3 * BLOCK)
    store.put([1, 2, 3], *kv(3), 1)
    store.put([9], *kv(1), 1)
    assert store.resident_prefix([1, 2, 3]) == 2 and 3 not in store


def test_a_partial_trailing_block_is_not_stored() -> None:
    store = KVBlockStore(1 << 10)
    assert store.put([1, 2, 3], *kv(7), 3) == 2
    assert 3 not in store and len(store) == 2
    assert store.block_bytes(1) == 3 * BLOCK
    assert store.put([4], *kv(2), 3) == 0 and len(store) == 2


def test_a_prompt_never_evicts_its_own_earlier_blocks() -> None:
    store = KVBlockStore(2 * BLOCK)
    store.put([8], *kv(1), 1)
    assert store.put([1, 2, 3], *kv(3), 1) == 2
    assert store.resident_prefix([1, 2, 3]) == 2 and 8 not in store


def test_a_block_larger_than_the_budget_is_not_stored() -> None:
    store = KVBlockStore(BLOCK - 1)
    assert store.put([1], *kv(1), 1) == 0
    assert len(store) == 0 and store.bytes_used == 0


def test_stored_blocks_are_copies_of_one_block() -> None:
    k, v = torch.randn(1, 64, 2), torch.randn(1, 64, 2)
    store = KVBlockStore(1 << 20)
    store.put([1], k, v, 4)
    k[:, :4] = 0.0  # the caller reusing its buffer does not change the cache
    _, kp, _ = store.take_prefix([1])
    assert kp is not None and kp.abs().sum() > 0
    assert store.bytes_used == 2 * 4 * 2 * 4  # one block, not the prompt's storage


OPS = st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 12), min_size=0, max_size=6,
                                                   unique=True),
                         st.integers(0, 14), st.integers(1, 3)), max_size=30)


@settings(deadline=None, max_examples=60)
@given(budget=st.integers(0, 12 * BLOCK), ops=OPS)
def test_bytes_used_never_exceeds_the_budget(budget, ops) -> None:
    store = KVBlockStore(budget)
    for is_put, ids, tokens, bt in ops:
        if is_put:
            stored = store.put(ids, *kv(tokens, 1.0), bt)
            whole = min(len(ids), tokens // bt)
            fits = budget // (bt * BLOCK)
            assert stored >= min(whole, fits) or any(
                b in store and store.block_bytes(b) != bt * BLOCK for b in ids[:whole])
            assert store.resident_prefix(ids) >= stored
        else:
            n, kp, vp = store.take_prefix(ids)
            assert n == store.resident_prefix(ids)
            rows = sum(store.block_bytes(b) for b in ids[:n]) // BLOCK
            assert (kp is None) == (n == 0)
            assert kp is None or kp.shape == vp.shape == (1, rows, 2)
        assert store.bytes_used <= budget
        assert store.bytes_used == sum(store.block_bytes(b) for b in range(13) if b in store)
