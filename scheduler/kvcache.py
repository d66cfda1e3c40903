"""Prefix caching: which KV blocks a device keeps, and what a prefill saves by them.

A prompt is cut into blocks of ``block_tokens`` tokens, each named by an id
that stands for the block *and everything before it* (Mooncake's
``hash_ids``, vLLM's chained block hashes): equal ids mean equal keys and
values. A prefill whose first ``k`` blocks are resident on its device
computes only the queries after them, over the whole prompt's keys.

:class:`BlockLRU` is the one eviction rule, used by the controller to plan
(ids and bytes) and by a worker to keep the tensors (``workers/kvstore.py``):
least recently used first, within a byte budget, a prompt's earlier blocks
counting as more recent than its later ones (so eviction trims a cached
prefix from its tail, since a block whose predecessors are gone is never
hit), and a prompt never evicting its own earlier blocks to store later ones.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import replace
from typing import Generic, TypeVar

from scheduler.jobs import AttentionJob, Job

BlockKey = Hashable
K = TypeVar("K", bound=Hashable)
KEYS_MEMO = 65_536  # jobs whose block keys are kept; full, it starts over


class BlockLRU(Generic[K]):
    """Resident block ids and their bytes, least recently used first, within ``budget``."""

    __slots__ = ("_blocks", "budget", "evicted", "used")

    def __init__(self, budget: int) -> None:
        self.budget, self.used, self.evicted = budget, 0, 0
        self._blocks: OrderedDict[K, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: object) -> bool:
        return key in self._blocks

    def resident(self, keys: Sequence[K]) -> int:
        """How many leading blocks of ``keys`` are resident (the LRU order is unchanged)."""
        n = 0
        for key in keys:
            if key not in self._blocks:
                break
            n += 1
        return n

    def touch(self, keys: Sequence[K]) -> None:
        """Mark a prefix used, its first block most recent (blocks gone are skipped)."""
        for key in reversed(keys):
            if key in self._blocks:
                self._blocks.move_to_end(key)

    def insert(self, keys: Sequence[K], nbytes: int
               ) -> tuple[int, list[K], list[K]]:
        """Keep a prompt's blocks of ``nbytes`` each, in order, as far as the budget allows.

        Returns (how many leading blocks are resident now, the keys newly
        stored, the keys evicted for them). Storing stops at the first block
        that does not fit without evicting this prompt's own earlier blocks (a later
        one may go, and come back in its place: a key can be both evicted and stored).
        """
        kept: list[K] = []
        added: list[K] = []
        evicted: list[K] = []
        mine: set[K] = set()  # its blocks stored so far: the prefix the next extends
        for key in keys:
            if key not in self._blocks:
                if not self._room(nbytes, mine, evicted):
                    break
                self._blocks[key] = nbytes
                self.used += nbytes
                added.append(key)
            self._blocks.move_to_end(key)  # making room for the next never evicts it
            kept.append(key)
            mine.add(key)
        self.touch(kept)
        return len(kept), added, evicted

    def shrink(self, budget: int) -> list[K]:
        """Set the budget, evicting least recently used blocks beyond it; the keys evicted."""
        self.budget = max(0, budget)
        evicted: list[K] = []
        while self.used > self.budget:
            self._evict_oldest(evicted)
        return evicted

    def clear(self) -> list[K]:
        keys = list(self._blocks)
        self._blocks.clear()
        self.used = 0
        return keys

    def _room(self, nbytes: int, keep: set[K], evicted: list[K]) -> bool:
        if nbytes > self.budget:
            return False  # would evict everything and still not fit
        while self.used + nbytes > self.budget:
            if next(iter(self._blocks)) in keep:
                return False
            self._evict_oldest(evicted)
        return True

    def _evict_oldest(self, evicted: list[K]) -> None:
        key, nbytes = self._blocks.popitem(last=False)
        self.used -= nbytes
        self.evicted += 1
        evicted.append(key)


# -- what a job's prompt holds in blocks ---------------------------------------------------

def reusable_blocks(prompt_tokens: int, block_tokens: int) -> int:
    """The most leading blocks a prefill may take from a cache: one token is always left
    to compute, since the next token comes from the last query row's output."""
    return max(prompt_tokens - 1, 0) // block_tokens


def prompt_blocks(tokens: int, block_tokens: int) -> int:
    """Blocks that start within a prompt of ``tokens`` (the last may be partial): the
    most a prefill's ``prefix_blocks`` may name."""
    return -(-tokens // block_tokens)


def whole_blocks(job: AttentionJob) -> int:
    """Blocks of ``job``'s prompt that are whole, and so may be kept once it ran."""
    return min(len(job.prefix_blocks), job.q_len // job.block_tokens) if job.block_tokens else 0


def block_keys(job: AttentionJob) -> tuple[BlockKey, ...]:
    """The cache keys of ``job``'s prefix blocks: the ids with the KV layout they hold, so
    two models' blocks never stand for each other."""
    layout = (job.layers, job.kv_heads, job.head_dim, job.dtype, job.batch, job.block_tokens)
    return tuple((layout, b) for b in job.prefix_blocks)


def block_bytes(job: AttentionJob) -> int:
    """Bytes of K and V one block of ``job``'s prompt holds, over all its layers."""
    return 2 * job.batch * job.layers * job.kv_heads * job.head_dim * job.dtype.itemsize \
        * job.block_tokens


def hit_tokens(job: AttentionJob, blocks: int) -> int:
    """Tokens a prefill may skip when its first ``blocks`` blocks are resident."""
    return min(blocks, reusable_blocks(job.q_len, job.block_tokens)) * job.block_tokens


def uncached_part(job: AttentionJob, tokens: int) -> AttentionJob:
    """What a prefill computes when its first ``tokens`` are resident: the queries after
    them, over the whole prompt's keys (a causal mask aligned bottom-right)."""
    if not tokens:
        return job
    return replace(job, q_len=job.q_len - tokens, prefix_blocks=(), block_tokens=0)


class CacheIndex:
    """Every device's prefix cache, and which devices hold each block: what the controller
    asks at a placement and a policy through ``view.cache``.

    It also counts, per device, the prompt tokens of the prefills with blocks that ran
    there and how many of them came from the cache, for the telemetry's hit rate.
    """

    def __init__(self, caches: Mapping[str, BlockLRU[BlockKey]]) -> None:
        self._caches = caches
        self._holders: dict[BlockKey, set[str]] = {}
        self._keys: dict[str, tuple[AttentionJob, tuple[BlockKey, ...]]] = {}
        self._tokens: dict[str, list[int]] = {}  # device -> [prompt tokens, of them cached]

    def keys(self, job: AttentionJob) -> tuple[BlockKey, ...]:
        known = self._keys.get(job.id)
        if known is None or known[0] is not job:
            if len(self._keys) >= KEYS_MEMO:
                self._keys.clear()
            known = self._keys[job.id] = (job, block_keys(job))
        return known[1]

    def hit(self, job: Job, device: str) -> int:
        """Tokens of ``job``'s prompt resident on ``device`` that it may skip (0: none)."""
        if not isinstance(job, AttentionJob) or not job.block_tokens:
            return 0
        return hit_tokens(job, self._caches[device].resident(self.keys(job)))

    def holders(self, job: Job) -> frozenset[str]:
        """Devices holding ``job``'s first block: the only ones where it can hit."""
        if not isinstance(job, AttentionJob) or not job.block_tokens:
            return frozenset()
        return frozenset(self._holders.get(self.keys(job)[0], ()))

    def use(self, job: Job, device: str, tokens: int) -> None:
        """``job`` starts on ``device`` reading ``tokens`` from its cache: they are recent."""
        if tokens and isinstance(job, AttentionJob):
            self._caches[device].touch(self.keys(job)[:tokens // job.block_tokens])

    def keep(self, job: Job, device: str, cached: int = 0) -> None:
        """``job`` ran on ``device``, ``cached`` tokens of its prompt read from the cache:
        its prompt's whole blocks stay there, room allowing."""
        if not isinstance(job, AttentionJob) or not job.block_tokens:
            return
        counts = self._tokens.setdefault(device, [0, 0])
        counts[0] += job.q_len
        counts[1] += cached
        _, added, evicted = self._caches[device].insert(self.keys(job)[:whole_blocks(job)],
                                                        block_bytes(job))
        self.forget(device, evicted)
        for key in added:
            self._holders.setdefault(key, set()).add(device)

    def forget(self, device: str, keys: Sequence[BlockKey]) -> None:
        """``keys`` left ``device``'s cache."""
        for key in keys:
            held = self._holders.get(key)
            if held is not None:
                held.discard(device)
                if not held:
                    del self._holders[key]

    def resident_bytes(self, device: str) -> int:
        return self._caches[device].used

    def hit_rate(self, device: str) -> float | None:
        """Cached over prompt tokens of the prefills with blocks that ran on ``device``
        since the last call (None: none ran)."""
        counts = self._tokens.pop(device, None)
        return counts[1] / counts[0] if counts and counts[0] else None

    def snapshot(self) -> FrozenCache:
        """A copy that answers as this index does now, for a decision in another thread."""
        return FrozenCache({k: frozenset(v) for k, v in self._holders.items()}, self.keys)


class FrozenCache:
    """:class:`CacheIndex`'s answers at one instant, from a copy of which devices hold
    each block (a device holds a block exactly when it is in that device's cache)."""

    __slots__ = ("_holders", "_keys")

    def __init__(self, holders: Mapping[BlockKey, frozenset[str]],
                 keys: Callable[[AttentionJob], tuple[BlockKey, ...]] = block_keys) -> None:
        self._holders, self._keys = holders, keys

    def hit(self, job: Job, device: str) -> int:
        if not isinstance(job, AttentionJob) or not job.block_tokens:
            return 0
        blocks = 0
        for key in self._keys(job):
            if device not in self._holders.get(key, ()):
                break
            blocks += 1
        return hit_tokens(job, blocks)

    def holders(self, job: Job) -> frozenset[str]:
        if not isinstance(job, AttentionJob) or not job.block_tokens:
            return frozenset()
        return self._holders.get(self._keys(job)[0], frozenset())


class CacheReader:
    """What ``view.cache`` is in a synchronous decision: :class:`CacheIndex`'s two
    questions and nothing else, so a policy reads the caches and cannot change them."""

    __slots__ = ("_index",)

    def __init__(self, index: CacheIndex) -> None:
        self._index = index

    def hit(self, job: Job, device: str) -> int:
        return self._index.hit(job, device)

    def holders(self, job: Job) -> frozenset[str]:
        return self._index.holders(job)


NO_CACHE = FrozenCache({})  # a view made by hand: nothing resident anywhere
