"""A seeded synthetic trace generator: realistic shapes, deterministic bytes.

Lengths follow lognormal fits of the Azure LLM 2023 conversation trace
(prompt median 1,020, p99 4,142; output median 129, p99 601); arrivals are
Poisson or bursty (a gamma renewal process with inter-arrival CV 3). The same
seed and options always give the same jobs, so generated traces need no
storage: the command line is the trace.

With :class:`SharedPrefix`, prefills carry prefix blocks (scheduler/kvcache.py):
new conversations open with one of a few system prompts, and later turns
extend an earlier turn's prompt, so a prefix cache has something to hit.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from scheduler.errors import InputError
from scheduler.jobs import MAX_BLOCK_ID, AttentionJob, DType, JobKind
from scheduler.kvcache import prompt_blocks
from scheduler.presets import ModelPreset
from scheduler.traces.importers import BLOCK_TOKENS

# ln-space fits of the Azure conv trace: sigma = ln(p99 / p50) / z(0.99).
PROMPT_MEDIAN, PROMPT_SIGMA = 1020.0, math.log(4142 / 1020) / 2.326
OUTPUT_MEDIAN, OUTPUT_SIGMA = 129.0, math.log(601 / 129) / 2.326
MAX_TOKENS = 32_768
CHUNK = 4096  # jobs drawn per RNG call: fixed so output never depends on memory
# A follow-up continues one of the OPEN_CONVERSATIONS opened most recently: close enough in
# time that a device's cache may still hold the earlier turn.
OPEN_CONVERSATIONS = 64
PREFIX_STREAM = 0x5052454649580001  # the shared-prefix draws' own stream, so the rest stay put


@dataclass(frozen=True)
class SharedPrefix:
    """Prompts that share leading blocks: system prompts and multi-turn conversations.

    A new conversation opens with one of ``system_prompts`` system prompts
    (Zipf-weighted; 0: none) of ``system_prompt_tokens`` trace tokens; a
    ``followup_fraction`` of prefills are a later turn of an open conversation.
    """

    system_prompts: int = 8
    system_prompt_tokens: int = 2048
    followup_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.system_prompts <= 10_000:
            raise InputError(f"expected 0..10000 system prompts, got {self.system_prompts}",
                             field="--system-prompts")
        if not BLOCK_TOKENS <= self.system_prompt_tokens <= MAX_TOKENS // 2:
            raise InputError(f"expected {BLOCK_TOKENS}..{MAX_TOKENS // 2} tokens (at least one "
                             f"{BLOCK_TOKENS}-token block), got {self.system_prompt_tokens}",
                             field="--system-prompt-tokens")
        if not 0 <= self.followup_fraction <= 1:
            raise InputError(f"expected a fraction in [0, 1], got {self.followup_fraction}",
                             field="--followup-fraction")


@dataclass(frozen=True)
class SynthSpec:
    """What to generate; validated on construction so the CLI can report the option."""

    jobs: int
    seed: int = 0
    rate: float = 5.0
    arrivals: str = "poisson"
    mix: Mapping[str, float] = field(default_factory=lambda: MappingProxyType(
        {"prefill": 0.45, "decode": 0.45, "train": 0.1}))
    tenants: int = 4
    deadline_fraction: float = 0.3
    burst_cv: float = 3.0
    prefix: SharedPrefix | None = None  # None: prefills carry no prefix blocks

    def __post_init__(self) -> None:
        if not 1 <= self.jobs <= 100_000_000:
            raise InputError(f"expected 1..100000000 jobs, got {self.jobs}", field="--jobs")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"expected a seed in [0, 2^63), got {self.seed}", field="--seed")
        if not (math.isfinite(self.rate) and 0 < self.rate <= 1e7):
            raise InputError(f"expected a rate in (0, 1e7] jobs/s, got {self.rate}",
                             field="--rate")
        if self.arrivals not in ("poisson", "bursty"):
            raise InputError(f"expected poisson or bursty, got {self.arrivals!r}",
                             field="--arrivals")
        allowed = {JobKind.PREFILL.value, JobKind.DECODE.value, JobKind.TRAIN.value}
        if not self.mix or any(k not in allowed or not (math.isfinite(v) and v >= 0)
                               for k, v in self.mix.items()) or sum(self.mix.values()) <= 0:
            raise InputError("expected weights like prefill=0.5,decode=0.4,train=0.1",
                             field="--mix")
        if not 1 <= self.tenants <= 10_000:
            raise InputError(f"expected 1..10000 tenants, got {self.tenants}", field="--tenants")
        if not 0 <= self.deadline_fraction <= 1:
            raise InputError("expected a fraction in [0, 1]", field="--deadline-fraction")


def parse_mix(text: str) -> dict[str, float]:
    """``prefill=0.5,decode=0.4,train=0.1`` → weights."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            mix[name.strip()] = float(value)
        except ValueError:
            raise InputError(f"expected KIND=WEIGHT pairs, got {part!r}", field="--mix") from None
    return mix


def block_id(seed: int, owner: int, block: int) -> int:
    """Id of block ``block`` of the prompt that ``owner`` wrote first: a job's index, or
    ``-1 - k`` for system prompt ``k``.

    Hashed rather than counted, so an id depends on nothing drawn before it, and over the
    seed, so two seeds' traces never name each other's blocks.
    """
    key = struct.pack("<QqQ", seed, owner, block)
    digest = hashlib.blake2b(key, digest_size=8, person=b"attnsched-prefix").digest()
    return int.from_bytes(digest, "little") & MAX_BLOCK_ID


@dataclass(frozen=True, slots=True)
class _Turn:
    tokens: int  # the prompt's length, in the preset's tokens
    whole: tuple[int, ...]  # ids of its whole blocks: what a later turn shares


class _Conversations:
    """Shared-prefix state across chunks: the system prompts' blocks, open conversations.

    Blocks are ``preset.tokens(BLOCK_TOKENS)`` tokens, as the Mooncake importer's. A
    system prompt of S trace tokens spans ``S // BLOCK_TOKENS`` whole blocks at every
    token scale (its scaled length is raised to them if rounding fell short).
    """

    def __init__(self, shape: SharedPrefix, seed: int, preset: ModelPreset) -> None:
        self.shape, self.seed = shape, seed
        self.block = preset.tokens(BLOCK_TOKENS)
        self.system_whole = shape.system_prompt_tokens // BLOCK_TOKENS
        self.system_tokens = max(preset.tokens(shape.system_prompt_tokens),
                                 self.system_whole * self.block)
        self.window = preset.tokens(MAX_TOKENS)  # a conversation longer than this ends
        self.rng = np.random.Generator(np.random.PCG64(
            np.random.SeedSequence((seed, PREFIX_STREAM))))
        zipf = 1.0 / np.arange(1, shape.system_prompts + 1)  # a few popular prompts
        self.weights = zipf / zipf.sum() if shape.system_prompts else None
        self.open: list[_Turn | None] = [None] * OPEN_CONVERSATIONS
        self.next_slot = 0  # new conversations replace the oldest, round robin
        self.systems: dict[int, tuple[int, ...]] = {}

    def draw(self, n: int) -> list[tuple[bool, int, int]]:
        """Per job of a chunk: a follow-up or not, which open conversation, which system
        prompt (drawn for every job, used by prefills, so positions never shift)."""
        follow = self.rng.random(n) < self.shape.followup_fraction
        slots = self.rng.integers(0, OPEN_CONVERSATIONS, n)
        systems = (self.rng.choice(self.shape.system_prompts, n, p=self.weights)
                   if self.shape.system_prompts else np.zeros(n, dtype=np.int64))
        return list(zip(follow.tolist(), slots.tolist(), systems.tolist(), strict=True))

    def prompt(self, job: int, user: int, draw: tuple[bool, int, int]
               ) -> tuple[int, tuple[int, ...]]:
        """Job ``job``'s prompt of ``user`` new tokens: its length and block ids."""
        follow, slot, system = draw
        parent = self.open[slot] if follow else None
        if parent is not None and parent.tokens + user <= self.window:
            tokens, shared = parent.tokens + user, parent.whole
        else:  # a new conversation: after a system prompt, so q_len > its length
            slot, self.next_slot = self.next_slot, (self.next_slot + 1) % OPEN_CONVERSATIONS
            tokens, shared = user, ()
            if self.shape.system_prompts:
                tokens, shared = self.system_tokens + user, self._system(system)
        fresh = range(len(shared), prompt_blocks(tokens, self.block))
        ids = shared + tuple(block_id(self.seed, job, b) for b in fresh)
        self.open[slot] = _Turn(tokens, ids[:tokens // self.block])
        return tokens, ids

    def _system(self, k: int) -> tuple[int, ...]:
        ids = self.systems.get(k)
        if ids is None:
            ids = self.systems[k] = tuple(block_id(self.seed, -1 - k, b)
                                          for b in range(self.system_whole))
        return ids


def generate(spec: SynthSpec, preset: ModelPreset) -> Iterator[AttentionJob]:
    """Jobs in submit order, every one a complete, valid AttentionJob."""
    rng = np.random.Generator(np.random.PCG64(spec.seed))
    kinds = list(spec.mix)
    weights = np.array([spec.mix[k] for k in kinds], dtype=float)
    weights /= weights.sum()
    tenant_weights = 1.0 / np.arange(1, spec.tenants + 1)  # Zipf-like: a few big tenants
    tenant_weights /= tenant_weights.sum()
    kind_enums = [JobKind(k) for k in kinds]
    tenant_names = [f"t{i}" for i in range(spec.tenants)]
    dtype = DType(preset.dtype)
    talk = _Conversations(spec.prefix, spec.seed, preset) if spec.prefix else None
    clock = 0.0
    made = 0
    while made < spec.jobs:
        n = min(CHUNK, spec.jobs - made)
        if spec.arrivals == "poisson":
            gaps = rng.exponential(1.0 / spec.rate, n)
        else:
            k = 1.0 / spec.burst_cv**2  # gamma shape for mean 1/rate and CV burst_cv
            gaps = rng.gamma(k, 1.0 / (spec.rate * k), n)
        times = clock + np.cumsum(gaps)
        clock = float(times[-1])
        kind_idx = rng.choice(len(kinds), n, p=weights)
        prompts = np.clip(rng.lognormal(math.log(PROMPT_MEDIAN), PROMPT_SIGMA, n), 1, MAX_TOKENS)
        outputs = np.clip(rng.lognormal(math.log(OUTPUT_MEDIAN), OUTPUT_SIGMA, n), 1, 4096)
        tenants = rng.choice(spec.tenants, n, p=tenant_weights)
        priorities = rng.choice(3, n, p=[0.6, 0.3, 0.1])
        has_deadline = rng.random(n) < spec.deadline_fraction
        slack = rng.uniform(2.0, 20.0, n)
        train_batch = rng.choice([1, 2, 4, 8], n)
        draws = talk.draw(n) if talk else [None] * n
        # Plain lists: indexing numpy arrays element by element costs more than the job.
        rows = zip(times.tolist(), kind_idx.tolist(), prompts.tolist(), outputs.tolist(),
                   tenants.tolist(), priorities.tolist(), has_deadline.tolist(),
                   slack.tolist(), train_batch.tolist(), draws, strict=True)
        for i, (t, k, p, o, tenant, priority, late, sl, tb, draw) in enumerate(rows):
            kind = kind_enums[k]
            prompt = preset.tokens(int(p))
            output = preset.tokens(int(o))
            blocks: tuple[int, ...] = ()
            if kind is JobKind.PREFILL:
                if talk is not None and draw is not None:
                    prompt, blocks = talk.prompt(made + i, prompt, draw)
                batch, q, kv, causal, steps = 1, prompt, prompt, True, 1
            elif kind is JobKind.DECODE:
                batch, q, kv, causal, steps = 1, 1, prompt, False, output
            else:  # a training step over a sequence, a few steps at a time
                seq = min(prompt, 4096)
                batch, q, kv, causal, steps = tb, seq, seq, True, 1 + int(o) % 4
            yield AttentionJob(
                id=f"j{made + i}", submit_time=round(t, 6), kind=kind, batch=batch,
                heads=preset.heads, kv_heads=preset.kv_heads, q_len=q, kv_len=kv,
                head_dim=preset.head_dim, layers=preset.layers, dtype=dtype, causal=causal,
                steps=steps, tenant=tenant_names[tenant], priority=priority,
                deadline=round(sl, 3) if late else None, prefix_blocks=blocks,
                block_tokens=talk.block if blocks and talk else 0)
        made += n
