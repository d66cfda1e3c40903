"""A worker's KV cache kept by block id, so a later prefill can reuse a prompt's prefix.

A prompt is cut into blocks of ``block_tokens`` tokens; the caller names each
block by a key that stands for the block's tokens *and everything before
them* (a chained hash, as vLLM's prefix cache does), so equal keys mean equal
keys and values. A block holds keys and values shaped ``(..., block_tokens,
head_dim)``: any leading dims (the worker's are layers, batch and kv heads)
are carried along unchanged, since only the token axis, ``-2``, is ever cut
or joined.

Eviction is :class:`scheduler.kvcache.BlockLRU`'s, the rule the controller
plans with: LRU within a byte budget, a prompt's earlier blocks counting as
more recently used than its later ones, so eviction trims a cached prefix
from its tail (a later block without the blocks before it can never be hit).

A prefill that reuses ``P`` cached tokens computes only the queries after
them (:func:`prefill_with_prefix`); with a causal mask aligned bottom-right
(:func:`workers.kernels.causal_mask`), query ``i`` of those sees the whole
prefix and the new keys up to ``i``, the same rows computing the whole prompt
gives.

The worker's prompts are synthetic, so a block's tensors must be a function
of its id for a reused block to equal what computing it afresh gives:
:func:`prompt_rows` draws each whole block's Q, K and V from a generator
seeded by the block's id, and :func:`cached_prefill` computes a prompt over
the prefix a store holds.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch

from scheduler.jobs import AttentionJob, JobKind
from scheduler.kvcache import BlockLRU, reusable_blocks, whole_blocks
from workers import kernels

__all__ = ["KVBlockStore", "Prefix", "cache_served", "cached_prefill", "hits",
           "prefill_with_prefix", "prefix_attention", "prompt_rows", "reusable_blocks"]

TOKENS = -2  # the token axis of every K, V and Q tensor here


class KVBlockStore:
    """K and V tensors per block id, kept by :class:`scheduler.kvcache.BlockLRU`'s rule
    (the one the controller plans with) within a byte budget."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self._lru: BlockLRU[Hashable] = BlockLRU(budget_bytes)
        self._blocks: dict[Hashable, tuple[torch.Tensor, torch.Tensor]] = {}
        self.lookups_blocks = 0  # blocks asked for by take_prefix
        self.hits_blocks = 0  # of those, blocks served from the cache

    @property
    def budget_bytes(self) -> int:
        return self._lru.budget

    @property
    def bytes_used(self) -> int:
        return self._lru.used

    @property
    def evicted_blocks(self) -> int:
        return self._lru.evicted

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._blocks

    def block_bytes(self, block_id: Hashable) -> int:
        """Bytes one resident block holds (K and V)."""
        k, v = self._blocks[block_id]
        return k.nbytes + v.nbytes

    def resident_prefix(self, block_ids: Sequence[Hashable]) -> int:
        """How many leading blocks are resident; a pure query (LRU order unchanged).

        This is what a placement may ask of a worker before it commits to one.
        """
        return self._lru.resident(block_ids)

    def take_prefix(self, block_ids: Sequence[Hashable]
                    ) -> tuple[int, torch.Tensor | None, torch.Tensor | None]:
        """The leading resident blocks: their count and their K and V joined along tokens.

        Returns ``(0, None, None)`` on a miss of the first block. The blocks
        taken become the most recently used. Pass at most
        :func:`reusable_blocks` ids so a query row is left to compute.
        """
        n = self._lru.resident(block_ids)
        self.lookups_blocks += len(block_ids)
        self.hits_blocks += n
        if n == 0:
            return 0, None, None
        hit = list(block_ids[:n])
        self._lru.touch(hit)
        blocks = [self._blocks[b] for b in hit]
        return (n, torch.cat([k for k, _ in blocks], dim=TOKENS),
                torch.cat([v for _, v in blocks], dim=TOKENS))

    def put(self, block_ids: Sequence[Hashable], k: torch.Tensor, v: torch.Tensor,
            block_tokens: int, nbytes: int | None = None) -> int:
        """Keep the whole blocks of a computed prompt's K and V; returns how many are resident.

        ``k`` and ``v`` are ``(..., tokens, head_dim)`` from the prompt's
        first token; block ``i`` is tokens ``[i·block_tokens, (i+1)·block_tokens)``
        and is named ``block_ids[i]``. A trailing partial block is not kept
        (its id would name tokens still to come). Blocks already resident are
        only touched; storing stops at the first block that does not fit
        without evicting this prompt's own earlier blocks. ``nbytes``: what
        each block is charged against the budget, when another figure than its
        tensors' size must decide eviction (default: their size).
        """
        if block_tokens <= 0:
            raise ValueError(f"block_tokens must be > 0, got {block_tokens}")
        if k.shape != v.shape:
            raise ValueError(f"k and v differ in shape: {tuple(k.shape)} vs {tuple(v.shape)}")
        whole = min(len(block_ids), k.shape[TOKENS] // block_tokens)
        if whole == 0:
            return 0
        if nbytes is None:
            nbytes = (k.nbytes + v.nbytes) // k.shape[TOKENS] * block_tokens
        kept, added, evicted = self._lru.insert(block_ids[:whole], nbytes)
        self._drop(evicted)
        index = {b: i for i, b in enumerate(block_ids[:whole])}
        for block_id in added:
            # Copies, not views: a view would pin the whole prompt's storage while
            # the budget counted one block of it.
            start = index[block_id] * block_tokens
            self._blocks[block_id] = (_copy(k, start, block_tokens),
                                      _copy(v, start, block_tokens))
        return kept

    def resize(self, budget_bytes: int) -> int:
        """Set the budget, evicting the least recently used blocks beyond it (as the
        controller fits a device's cache into the memory its batches leave); how many went."""
        evicted = self._lru.shrink(budget_bytes)
        self._drop(evicted)
        return len(evicted)

    def clear(self) -> None:
        self._lru.clear()
        self._blocks.clear()

    def _drop(self, evicted: Sequence[Hashable]) -> None:
        for block_id in evicted:
            del self._blocks[block_id]


def _copy(x: torch.Tensor, start: int, length: int) -> torch.Tensor:
    return x.narrow(TOKENS, start, length).detach().clone(memory_format=torch.contiguous_format)


def prefill_with_prefix(q: torch.Tensor, k_prefix: torch.Tensor | None,
                        v_prefix: torch.Tensor | None, k_new: torch.Tensor, v_new: torch.Tensor,
                        causal: bool, backend: str | None = None) -> torch.Tensor:
    """Attention of a prompt's new query rows over its cached prefix followed by its new keys.

    ``q`` is ``(heads, new_tokens, head_dim)`` or ``(batch, heads, new_tokens,
    head_dim)``, K and V alike with ``kv_heads`` dividing ``heads``. With
    ``causal``, row ``i`` sees every prefix key and the new keys up to ``i``:
    :func:`workers.kernels.attention` aligns the triangle bottom-right when
    there are fewer queries than keys, which is exactly this. No prefix
    (``None``) is a plain prefill.
    """
    return prefix_attention(q, k_prefix, v_prefix, k_new, v_new, causal, backend)[0]


def prefix_attention(q: torch.Tensor, k_prefix: torch.Tensor | None,
                     v_prefix: torch.Tensor | None, k_new: torch.Tensor, v_new: torch.Tensor,
                     causal: bool, backend: str | None = None) -> tuple[torch.Tensor, str]:
    """:func:`prefill_with_prefix`, and the SDPA backend that ran it."""
    if (k_prefix is None) != (v_prefix is None):
        raise ValueError("k_prefix and v_prefix must both be given or both be None")
    k, v = k_new, v_new
    if k_prefix is not None and v_prefix is not None:
        k = torch.cat([k_prefix.to(k_new.dtype), k_new], dim=TOKENS)
        v = torch.cat([v_prefix.to(v_new.dtype), v_new], dim=TOKENS)
    unbatched = q.dim() == 3  # kernels.attention takes (batch, heads, tokens, head_dim)
    if unbatched:
        q, k, v = q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)
    out, name = kernels.attention(q, k, v, causal, backend=backend)
    return (out.squeeze(0) if unbatched else out), name


# -- a synthetic prompt, and its prefill over a cached prefix ---------------------------------

TAIL_SALT = 0x9E3779B97F4A7C15  # keeps a tail's seed apart from any block id's
SEED_BITS = (1 << 63) - 1


@dataclass(frozen=True)
class Prefix:
    """The leading blocks of a prompt a store held when its prefill started: their count,
    and their K and V ``(layers, batch, kv_heads, tokens, head_dim)`` (None: no hit)."""

    blocks: int = 0
    k: torch.Tensor | None = None
    v: torch.Tensor | None = None


def prompt_rows(job: AttentionJob, first_block: int = 0, device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q, K and V of ``job``'s prompt from block ``first_block`` on, for every layer:
    ``(layers, batch, heads or kv_heads, tokens, head_dim)``.

    Whole block ``i`` comes from a generator seeded by its id, so an id gives the
    same rows on every call and every worker: a block reused from a cache is what
    computing it afresh gives. The tokens after the whole blocks come from one
    seeded by the prompt's last block id and length.
    """
    if not job.block_tokens:
        raise ValueError(f"job {job.id!r} has no prefix blocks")
    whole = whole_blocks(job)
    if not 0 <= first_block <= whole:
        raise ValueError(f"first_block must be in [0, {whole}], got {first_block}")
    parts = [_draw(job, job.block_tokens, b, device) for b in job.prefix_blocks[first_block:whole]]
    tail = job.q_len - whole * job.block_tokens
    if tail:
        parts.append(_draw(job, tail, (job.prefix_blocks[-1] ^ TAIL_SALT) + job.q_len, device))
    if not parts:
        raise ValueError("no token of the prompt is left to compute")
    qs, ks, vs = zip(*parts, strict=True)
    return torch.cat(qs, dim=TOKENS), torch.cat(ks, dim=TOKENS), torch.cat(vs, dim=TOKENS)


def _draw(job: AttentionJob, tokens: int, seed: int, device: torch.device | str
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(seed & SEED_BITS)
    dtype = kernels.DTYPES[job.dtype.value]

    def rows(heads: int) -> torch.Tensor:
        return torch.randn(job.layers, job.batch, heads, tokens, job.head_dim,
                           generator=generator, device=device, dtype=dtype)

    return rows(job.heads), rows(job.kv_heads), rows(job.kv_heads)


def _nothing() -> None:
    return None


def cached_prefill(job: AttentionJob, prefix: Prefix, device: torch.device | str = "cpu",
                   between: Callable[[], None] = _nothing
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """``job``'s prompt (:func:`prompt_rows`) computed over ``prefix``: only the queries
    after it, one layer at a time (``between`` runs before each: a cancellation check).

    Returns the output rows ``(layers, batch, heads, new tokens, head_dim)``, the whole
    prompt's K and V (what a store keeps) and the SDPA backend that ran.
    """
    q, k, v = prompt_rows(job, prefix.blocks, device)
    outs, backend = [], ""
    for layer in range(job.layers):
        between()
        kp = None if prefix.k is None else prefix.k[layer]
        vp = None if prefix.v is None else prefix.v[layer]
        out, backend = prefix_attention(q[layer], kp, vp, k[layer], v[layer], job.causal)
        outs.append(out)
    if prefix.k is not None and prefix.v is not None:
        k = torch.cat([prefix.k.to(k.dtype), k], dim=TOKENS)
        v = torch.cat([prefix.v.to(v.dtype), v], dim=TOKENS)
    return torch.stack(outs), k, v, backend


def cache_served(job: AttentionJob, inputs: Mapping[str, bytes]) -> bool:
    """Whether the KV cache serves ``job``: a prefill with prefix blocks over its own
    prompt (``kv_len == q_len``: the blocks name the keys' first tokens), not one that
    brought its own tensors. Others run as before and report no hit."""
    return (job.kind is JobKind.PREFILL and job.block_tokens > 0 and job.kv_len == job.q_len
            and job.id not in inputs)


def hits(jobs: list[AttentionJob], prefixes: Mapping[str, Prefix]) -> dict[str, int] | None:
    """Prompt tokens each job with prefix blocks took from the cache (None: no such job)."""
    hits = {j.id: prefixes[j.id].blocks * j.block_tokens if j.id in prefixes else 0
            for j in jobs if j.block_tokens}
    return hits or None
