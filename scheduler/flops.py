"""What a job computes and holds: FLOPs, bytes moved and peak memory (no timing).

Conventions (DESIGN.md): forward FLOPs of one attention call are
``4·batch·heads·q_len·kv_len·head_dim``; a causal mask keeps the fraction
``1 − min(q,kv) / (2·max(q,kv))`` of the scores (exactly half when
``q_len == kv_len``, everything for a single decode query); backward costs
``backward_factor`` × forward. A job runs one call per layer per pass
(``scheduler.packing.passes``: every step, but one pass for a prefill).
``scheduler.costmodel`` turns these into durations and re-exports them.
"""

from __future__ import annotations

from scheduler.jobs import AttentionJob, ClusterJob, Job, JobKind
from scheduler.packing import passes

MEMORY_BACKENDS = ("math", "flash", "cudnn", "efficient")

# The seed's seq2seq model (workers/ builds the same network): vocabulary,
# embedding width and LSTM units; batch and sequence come from the job shape.
SEQ2SEQ_VOCAB = 10_000
SEQ2SEQ_EMBED = 256


def causal_fraction(q_len: int, kv_len: int) -> float:
    """Share of the score matrix a causal mask keeps."""
    return 1.0 - min(q_len, kv_len) / (2.0 * max(q_len, kv_len))


def call_flops(job: AttentionJob, kv_len: int | None = None) -> float:
    """Forward FLOPs of one call (one layer, one step) at KV length ``kv_len``."""
    kv = job.kv_len if kv_len is None else kv_len
    flops = 4.0 * job.batch * job.heads * job.q_len * kv * job.head_dim
    return flops * causal_fraction(job.q_len, kv) if job.causal else flops


def mean_kv(job: AttentionJob) -> float:
    """Mean KV length over the job's steps: decode grows it one per step."""
    return job.kv_len + (job.steps - 1) / 2 if job.kind is JobKind.DECODE else float(job.kv_len)


def seq2seq_step_flops(batch: int, seq: int, units: int) -> float:
    """Forward FLOPs of one seq2seq step: LSTM, dot attention, vocabulary softmax."""
    lstm = 2.0 * 4 * units * (SEQ2SEQ_EMBED + units) * batch * seq
    attention = 4.0 * batch * seq * seq * units
    combine = 2.0 * batch * seq * (2 * units) * units
    vocab = 2.0 * batch * seq * units * SEQ2SEQ_VOCAB
    return lstm + attention + combine + vocab


def forward_flops(job: Job) -> float:
    """Forward FLOPs of the whole job: every layer of every pass the worker makes."""
    if isinstance(job, ClusterJob):
        return 0.0
    if job.kind is JobKind.MODEL:
        return seq2seq_step_flops(job.batch, job.q_len, job.head_dim) * job.steps
    if job.kind is JobKind.DECODE:
        # Σ_i 4·b·h·q·(kv+i)·d for i < steps, in closed form (q·kv ≥ kv, so the
        # causal fraction only matters for q > 1 and is taken at the mean KV).
        mean = mean_kv(job)
        per = 4.0 * job.batch * job.heads * job.q_len * job.head_dim * job.layers
        frac = causal_fraction(job.q_len, round(mean)) if job.causal else 1.0
        return per * mean * job.steps * frac
    return call_flops(job) * job.layers * passes(job)


def total_flops(job: Job, backward_factor: float = 2.5) -> float:
    """Forward plus backward FLOPs: training kinds pay the backward pass."""
    f = forward_flops(job)
    if isinstance(job, AttentionJob) and job.kind in (JobKind.TRAIN, JobKind.MODEL):
        return f * (1.0 + backward_factor)
    return f


def call_bytes(job: AttentionJob, kv_len: float) -> float:
    """HBM traffic of one call: read Q, K, V, write O (K/V are the KV cache in decode)."""
    s = job.dtype.itemsize
    q_o = 2.0 * job.batch * job.heads * job.q_len * job.head_dim
    k_v = 2.0 * job.batch * job.kv_heads * kv_len * job.head_dim
    return (q_o + k_v) * s


def bytes_moved(job: Job) -> float:
    """Bytes read and written over the whole job (forward)."""
    if isinstance(job, ClusterJob):
        return 0.0
    return call_bytes(job, mean_kv(job)) * job.layers * passes(job)


def peak_memory_bytes(job: Job, backend: str = "flash") -> int:
    """Device memory the job needs at its peak on ``backend``.

    The math backend materializes the score and probability matrices
    (``2·batch·heads·q_len·kv_len``); fused backends do not. Serving jobs
    (prefill, decode) keep the KV cache of every layer resident; training
    keeps every layer's activations for the backward pass.
    """
    if isinstance(job, ClusterJob):
        return job.memory_bytes
    if backend not in MEMORY_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")
    s = job.dtype.itemsize
    b, h, kvh, q, d = job.batch, job.heads, job.kv_heads, job.q_len, job.head_dim
    kv = job.final_kv_len
    if job.kind is JobKind.MODEL:
        return _seq2seq_memory(b, q, d)
    qo_layer = 2 * b * h * q * d * s
    kv_layer = 2 * b * kvh * kv * d * s
    scores = 2 * b * h * q * kv * s if backend == "math" else 0
    if job.kind is JobKind.TRAIN:
        lse = b * h * q * 4
        saved = (qo_layer + kv_layer + lse + scores // 2) * job.layers
        grads = qo_layer + kv_layer  # dQ, dK, dV of the layer being differentiated
        return saved + grads + scores
    return kv_layer * job.layers + qo_layer + scores


def _seq2seq_memory(batch: int, seq: int, units: int) -> int:
    params = SEQ2SEQ_VOCAB * SEQ2SEQ_EMBED + 4 * units * (SEQ2SEQ_EMBED + units + 1) \
        + 2 * units * units + units * SEQ2SEQ_VOCAB + SEQ2SEQ_VOCAB
    weights = 4 * params * 4  # fp32 weights, grads, two Adam moments
    acts = 4 * batch * seq * (SEQ2SEQ_EMBED + 6 * units + seq + 2 * SEQ2SEQ_VOCAB)
    return weights + acts
