"""A seeded synthetic trace generator: realistic shapes, deterministic bytes.

Lengths follow lognormal fits of the Azure LLM 2023 conversation trace
(prompt median 1,020, p99 4,142; output median 129, p99 601); arrivals are
Poisson or bursty (a gamma renewal process with inter-arrival CV 3). The same
seed and options always give the same jobs, so generated traces need no
storage: the command line is the trace.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np

from scheduler.errors import InputError
from scheduler.jobs import AttentionJob, DType, JobKind
from scheduler.presets import ModelPreset

# ln-space fits of the Azure conv trace: sigma = ln(p99 / p50) / z(0.99).
PROMPT_MEDIAN, PROMPT_SIGMA = 1020.0, math.log(4142 / 1020) / 2.326
OUTPUT_MEDIAN, OUTPUT_SIGMA = 129.0, math.log(601 / 129) / 2.326
MAX_TOKENS = 32_768
CHUNK = 4096  # jobs drawn per RNG call: fixed so output never depends on memory


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
        # Plain lists: indexing numpy arrays element by element costs more than the job.
        rows = zip(times.tolist(), kind_idx.tolist(), prompts.tolist(), outputs.tolist(),
                   tenants.tolist(), priorities.tolist(), has_deadline.tolist(),
                   slack.tolist(), train_batch.tolist(), strict=True)
        for i, (t, k, p, o, tenant, priority, late, sl, tb) in enumerate(rows):
            kind = kind_enums[k]
            prompt = preset.tokens(int(p))
            output = preset.tokens(int(o))
            if kind is JobKind.PREFILL:
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
                deadline=round(sl, 3) if late else None)
        made += n
