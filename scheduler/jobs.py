"""The job model: what a scheduler is asked to run.

Two kinds of job share one identity block (id, tenant, priority, deadline,
submit time, dependency) so one controller schedules both:

* :class:`AttentionJob` carries a ``softmax(QKᵀ/√d)V`` shape; its cost comes
  from the cost model and a device profile.
* :class:`ClusterJob` carries only resources and a duration, which is all a
  GPU-cluster trace (Alibaba's) records.

Both are frozen and validated on construction, so a job that exists is a job
that can be costed; every error names the field at fault.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from enum import Enum
from operator import attrgetter
from typing import TypeAlias

from scheduler.errors import InputError
from scheduler.inputfiles import clip


class JobKind(str, Enum):
    """What a job computes; ``CLUSTER`` jobs have a duration instead of a shape."""

    PREFILL = "prefill"
    DECODE = "decode"
    TRAIN = "train"
    MODEL = "model"
    CLUSTER = "cluster"


class DType(str, Enum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"

    @property
    def itemsize(self) -> int:
        return 4 if self is DType.FP32 else 2


ATTENTION_KINDS = frozenset({JobKind.PREFILL, JobKind.DECODE, JobKind.TRAIN, JobKind.MODEL})

# Upper bounds that no real job reaches; they turn unit mistakes (bytes for MiB,
# ms for s) and corrupted rows into errors instead of runs that never end.
MAX_TIME_S = 1e10  # ~317 years
MAX_PRIORITY = 1_000_000
MAX_ID_LEN = 256
LIMITS: dict[str, int] = {
    "batch": 1 << 20,
    "heads": 1 << 14,
    "kv_heads": 1 << 14,
    "q_len": 1 << 24,
    "kv_len": 1 << 24,
    "head_dim": 1024,
    "layers": 1024,
    "steps": 1 << 24,
    "gpus": 4096,
}
_SHAPE_LIMITS = tuple((n, LIMITS[n]) for n in ("batch", "heads", "kv_heads", "q_len", "kv_len",
                                                "head_dim", "layers", "steps"))
MAX_BLOCKS = 1 << 20  # prefix blocks of one prompt
MAX_BLOCK_ID = (1 << 63) - 1
MAX_CPUS = 1 << 16
MAX_MEMORY_BYTES = 1 << 50  # 1 PiB


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """Return ``value`` if it is an int in ``[lo, hi]``; else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"expected an integer, got {clip(value)}", field=name)
    if not lo <= value <= hi:
        raise InputError(f"{clip(value)} is outside [{lo}, {hi}]", field=name)
    return value


def check_float(name: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """Return ``value`` as float if finite and in range; else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"expected a number, got {clip(value)}", field=name)
    f = float(value)
    if not math.isfinite(f):
        raise InputError(f"{clip(value)} is not a finite number", field=name)
    if f < lo or f > hi or (lo_open and f == lo):
        bracket = "(" if lo_open else "["
        raise InputError(f"{clip(value)} is outside {bracket}{lo:g}, {hi:g}]", field=name)
    return f


def _check_name(name: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LEN:
        raise InputError(f"expected a non-empty string of at most {MAX_ID_LEN} characters, "
                         f"got {clip(value)}", field=name)
    if not value.isprintable():
        raise InputError(f"{clip(value)} has non-printable characters", field=name)


def _check_identity(job: AttentionJob | ClusterJob) -> None:
    _check_name("id", job.id)
    _check_name("tenant", job.tenant)
    _check_name("depends_on", job.depends_on, optional=True)
    if job.depends_on == job.id:
        raise InputError("a job cannot depend on itself", field="depends_on")
    check_int("priority", job.priority, -MAX_PRIORITY, MAX_PRIORITY)
    # Stored as float so equal jobs compare equal whatever number type came in.
    object.__setattr__(job, "submit_time", check_float("submit_time", job.submit_time, 0.0,
                                                       MAX_TIME_S))
    if job.deadline is not None:
        object.__setattr__(job, "deadline", check_float("deadline", job.deadline, 0.0,
                                                        MAX_TIME_S, lo_open=True))


def _check_prefix(job: AttentionJob) -> None:
    """A prompt's prefix blocks: distinct ids of ``block_tokens`` tokens each, every block
    starting within the prompt (scheduler/kvcache.py says what they stand for). A prompt
    may name only its leading blocks."""
    blocks = job.prefix_blocks
    if not isinstance(blocks, tuple | list) or not blocks:
        given = "" if blocks in ((), [], None) else f", got {clip(blocks)}"
        raise InputError(f"block_tokens needs prefix_blocks, a non-empty list of block "
                         f"ids{given}", field="prefix_blocks")
    if job.kind is not JobKind.PREFILL:
        raise InputError("only a prefill's prompt has prefix blocks", field="prefix_blocks")
    if len(blocks) > MAX_BLOCKS:
        raise InputError(f"{len(blocks)} blocks, more than {MAX_BLOCKS}", field="prefix_blocks")
    for block in blocks:
        if type(block) is not int or not 0 <= block <= MAX_BLOCK_ID:
            check_int("prefix_blocks", block, 0, MAX_BLOCK_ID)
    object.__setattr__(job, "prefix_blocks", tuple(blocks))
    if len(set(blocks)) < len(blocks):  # an id stands for its block and all before it
        twice = next(b for i, b in enumerate(blocks) if b in blocks[:i])
        raise InputError(f"block id {twice} appears twice in one prompt", field="prefix_blocks")
    if not job.block_tokens:
        raise InputError("prefix_blocks needs block_tokens, the tokens in a block (>= 1)",
                         field="block_tokens")
    check_int("block_tokens", job.block_tokens, 1, LIMITS["q_len"])
    last = (len(blocks) - 1) * job.block_tokens
    if last >= job.q_len:
        raise InputError(f"block {len(blocks)} of {job.block_tokens} tokens would start at token "
                         f"{last}, past the prompt's {job.q_len}", field="prefix_blocks")


@dataclass(frozen=True, slots=True)
class AttentionJob:
    """One request for attention work, as DESIGN.md defines it.

    Shape semantics: ``q_len != kv_len`` is cross-attention; for ``decode``,
    ``kv_len`` is the KV length at the first step and grows by one per step,
    while ``q_len`` new query tokens are processed each step. ``deadline`` is
    an SLO in seconds after ``submit_time``. ``depends_on`` names a job that
    must finish first (a request's decode waits for its prefill).
    ``prefix_blocks`` names a prefill's prompt in blocks of ``block_tokens``
    tokens, for prefix caching (:mod:`scheduler.kvcache`).
    """

    id: str
    submit_time: float
    kind: JobKind
    batch: int
    heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    layers: int = 1
    dtype: DType = DType.BF16
    causal: bool = True
    steps: int = 1
    tenant: str = "default"
    priority: int = 0
    deadline: float | None = None
    depends_on: str | None = None
    prefix_blocks: tuple[int, ...] = ()
    block_tokens: int = 0

    def __post_init__(self) -> None:
        _check_identity(self)
        kind: JobKind | None = self.kind
        if type(kind) is not JobKind:  # fast path: already the enum (the common case)
            try:
                kind = JobKind(kind)
            except ValueError:
                kind = None
        if kind is None or kind not in ATTENTION_KINDS:
            names = ", ".join(k.value for k in ATTENTION_KINDS)
            raise InputError(f"expected one of {names}, got {clip(self.kind)}", field="kind")
        object.__setattr__(self, "kind", kind)
        if type(self.dtype) is not DType:
            try:
                object.__setattr__(self, "dtype", DType(self.dtype))
            except ValueError:
                raise InputError(
                    f"expected one of {', '.join(d.value for d in DType)}, got {clip(self.dtype)}",
                    field="dtype",
                ) from None
        for name, hi in _SHAPE_LIMITS:
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= hi:
                check_int(name, value, 1, hi)  # raises, naming the field
        if self.heads % self.kv_heads:
            raise InputError(f"heads={self.heads} is not a multiple of kv_heads={self.kv_heads}",
                             field="kv_heads")
        if not isinstance(self.causal, bool):
            raise InputError(f"expected true or false, got {clip(self.causal)}", field="causal")
        if self.prefix_blocks or self.block_tokens:
            _check_prefix(self)
        elif self.prefix_blocks != ():  # an empty list, as JSON gives it
            if self.prefix_blocks != []:  # type: ignore[comparison-overlap]
                _check_prefix(self)  # raises, naming the field
            object.__setattr__(self, "prefix_blocks", ())

    def split_part(self, axis: str, parts: int, index: int) -> AttentionJob:
        """Part ``index`` of ``parts`` along ``batch`` or ``heads`` (whole GQA groups)."""
        if axis == "batch":
            return replace(self, id=f"{self.id}/{index}", batch=self.batch // parts,
                           depends_on=None, prefix_blocks=(), block_tokens=0)
        group = self.heads // self.kv_heads
        kv = self.kv_heads // parts
        return replace(self, id=f"{self.id}/{index}", heads=kv * group, kv_heads=kv,
                       depends_on=None, prefix_blocks=(), block_tokens=0)

    @property
    def final_kv_len(self) -> int:
        """KV length at the last step: decode grows the cache one token per step."""
        return self.kv_len + self.steps - 1 if self.kind is JobKind.DECODE else self.kv_len


# Slot setters in field order: how a job already checked (a column at a time, or an
# existing job retimed) is built without running every per-field check again.
_ATTENTION_FIELDS = tuple(f.name for f in fields(AttentionJob))
_ATTENTION_SETTERS = tuple(getattr(AttentionJob, name).__set__ for name in _ATTENTION_FIELDS)
_ATTENTION_VALUES = attrgetter(*_ATTENTION_FIELDS)
_SUBMIT_TIME = _ATTENTION_FIELDS.index("submit_time")


def attention_unchecked(*values: object) -> AttentionJob:
    """An AttentionJob from field values, in field order, that the caller has checked."""
    job = object.__new__(AttentionJob)
    for set_field, value in zip(_ATTENTION_SETTERS, values, strict=True):
        set_field(job, value)
    return job


def retimed(job: Job, submit_time: float) -> Job:
    """``job`` submitted at ``submit_time`` (checked; every other field is the job's)."""
    t = check_float("submit_time", submit_time, 0.0, MAX_TIME_S)
    if not isinstance(job, AttentionJob):
        return replace(job, submit_time=t)
    values = list(_ATTENTION_VALUES(job))
    values[_SUBMIT_TIME] = t
    return attention_unchecked(*values)


@dataclass(frozen=True, slots=True)
class ClusterJob:
    """A duration-only job from a GPU-cluster trace: resources held for ``duration`` s.

    ``gpu_fraction`` is the share of one GPU a GPU-sharing pod asks for; it is
    only below 1 when ``gpus == 1``.
    """

    id: str
    submit_time: float
    duration: float
    gpus: int = 0
    gpu_fraction: float = 1.0
    cpus: float = 1.0
    memory_bytes: int = 0
    tenant: str = "default"
    priority: int = 0
    deadline: float | None = None
    depends_on: str | None = None

    def __post_init__(self) -> None:
        _check_identity(self)
        for name, value in (
            ("duration", check_float("duration", self.duration, 0.0, MAX_TIME_S, lo_open=True)),
            ("gpu_fraction", check_float("gpu_fraction", self.gpu_fraction, 0.0, 1.0,
                                         lo_open=True)),
            ("cpus", check_float("cpus", self.cpus, 0.0, MAX_CPUS)),
        ):
            object.__setattr__(self, name, value)
        check_int("gpus", self.gpus, 0, LIMITS["gpus"])
        if self.gpus != 1 and self.gpu_fraction != 1.0:
            raise InputError("a GPU fraction below 1 needs gpus == 1", field="gpu_fraction")
        check_int("memory_bytes", self.memory_bytes, 0, MAX_MEMORY_BYTES)

    @property
    def kind(self) -> JobKind:
        return JobKind.CLUSTER


Job: TypeAlias = AttentionJob | ClusterJob
