"""The cost model: FLOPs, bytes, memory and durations of jobs on devices.

This is the one place these numbers are computed; policies, the simulator and
reports all call it, so they never disagree about what a job costs.

Conventions (DESIGN.md): forward FLOPs of one attention call are
``4·batch·heads·q_len·kv_len·head_dim``; a causal mask keeps the fraction
``1 − min(q,kv) / (2·max(q,kv))`` of the scores (exactly half when
``q_len == kv_len``, everything for a single decode query); backward costs
``backward_factor`` × forward. A job runs one call per layer per step.

Durations come from a :class:`~scheduler.profiles.DeviceProfile`: a call
takes ``max(host time, device time)``, where device time is the larger of
compute at the measured SDPA rate and memory traffic at the device bandwidth.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.jobs import AttentionJob, ClusterJob, DType, Job, JobKind
from scheduler.profiles import DeviceProfile

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


def _mean_kv(job: AttentionJob) -> float:
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
    """Forward FLOPs of the whole job (all layers, all steps)."""
    if isinstance(job, ClusterJob):
        return 0.0
    if job.kind is JobKind.MODEL:
        return seq2seq_step_flops(job.batch, job.q_len, job.head_dim) * job.steps
    if job.kind is JobKind.DECODE:
        # Σ_i 4·b·h·q·(kv+i)·d for i < steps, in closed form (q·kv ≥ kv, so the
        # causal fraction only matters for q > 1 and is taken at the mean KV).
        mean = _mean_kv(job)
        per = 4.0 * job.batch * job.heads * job.q_len * job.head_dim * job.layers
        frac = causal_fraction(job.q_len, round(mean)) if job.causal else 1.0
        return per * mean * job.steps * frac
    return call_flops(job) * job.layers * job.steps


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
    return call_bytes(job, _mean_kv(job)) * job.layers * job.steps


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


@dataclass(frozen=True, slots=True)
class Estimate:
    """Predicted run of a job or packed batch on one device."""

    seconds: float
    backend: str
    flops: float
    calls: int


def _call_seconds(profile: DeviceProfile, rate_tflops: float, flops: float, nbytes: float,
                  host_s: float) -> float:
    device_s = max(flops / (rate_tflops * 1e12), nbytes / profile.bandwidth_bytes_s)
    return max(host_s, device_s)


def _job_terms(job: AttentionJob, profile: DeviceProfile, backend: str | None
               ) -> tuple[float, float, int, float, str]:
    """One job's share of a packed batch: (compute s, bytes, calls, flops, backend)."""
    launches = job.layers * job.steps
    if job.kind is JobKind.DECODE:
        compute, nbytes, _, used = _decode_terms(job, ((job.steps, job.kv_len, job.batch),),
                                                 profile, backend)  # one request: no mask
        # A timed decode step is a whole step, host included: no separate floor.
        calls = 0 if profile.decode_step_s > 0 else launches
        return compute, nbytes, calls, total_flops(job, profile.backward_factor), used
    kv = _mean_kv(job)
    rate, used = profile.sdpa_tflops(job.q_len, round(kv), job.head_dim, job.dtype,
                                     job.causal, backend)
    train = job.kind is JobKind.TRAIN
    work = call_flops(job, round(kv)) * (1.0 + profile.backward_factor if train else 1)
    return (work * launches / (rate * 1e12), call_bytes(job, kv) * launches * (3 if train else 1),
            launches * (2 if train else 1), total_flops(job, profile.backward_factor), used)


DecodeRow = tuple[int, int, int]  # (steps, kv_len, rows) of one decode request


def padded_positions(rows: Sequence[DecodeRow]) -> tuple[float, float]:
    """Key positions a packed decode attends to, padding included, and its query rows × steps.

    This is the worker's loop (``kernels.decode_many``): ``rows`` ordered by
    steps, longest first; at step ``s`` the requests still running form a
    prefix, and each of them attends to the longest cache among that prefix
    plus ``s``. A shorter request's cache is padded to that length, and the
    padding costs as much as real keys.
    """
    total = 0.0
    active = longest = work = 0
    for i, (steps, kv, n) in enumerate(rows):
        active += n
        longest = max(longest, kv)
        work += n * steps
        after = rows[i + 1][0] if i + 1 < len(rows) else 0
        if steps > after:  # steps after..steps-1 run the first i+1 requests
            total += active * (steps - after) * (longest + (after + steps - 1) / 2)
    return total, float(work)


def _decode_terms(job: AttentionJob, rows: Sequence[DecodeRow], profile: DeviceProfile,
                  backend: str | None) -> tuple[float, float, float, str]:
    """(compute s, bytes, mask s, backend) of one decode call group: ``job``'s head layout
    over ``rows`` (see :func:`padded_positions`), by the profile's timing of the worker's
    decode step where it has one (else at the grid's rate of the mean padded cache), and
    the profile's measured cost of the mask when the caches differ in length.

    The mask is measured on the worker's own decode loop, not derived from the
    grid, so ``worker_scale`` (the grid's error) does not apply to it.
    """
    positions, work = padded_positions(rows)
    mean = positions / work
    keys = max(1, round(mean))
    rate, used = profile.sdpa_tflops(job.q_len, keys, job.head_dim, job.dtype, job.causal,
                                     backend)
    if profile.decode_step_s > 0:
        # Timed on the worker's decode loop: a step's fixed cost and its cost per element
        # read, the latter at another dtype's rate as the grid compares the two.
        element = profile.decode_element_s
        if profile.decode_dtype is not None and profile.decode_dtype != job.dtype:
            measured, _ = profile.sdpa_tflops(job.q_len, keys, job.head_dim,
                                              profile.decode_dtype, job.causal, used)
            element *= measured / rate
        compute = job.layers * (rows[0][0] * profile.decode_step_s + positions * job.q_len
                                * job.heads * job.head_dim * element)
    else:
        per = 4.0 * job.heads * job.q_len * job.head_dim * job.layers
        if job.causal:
            per *= causal_fraction(job.q_len, keys)
        compute = per * positions / (rate * 1e12)
    mask = 0.0
    if len({kv for _, kv, _ in rows}) > 1:  # the worker masks only then (decode_many)
        mask = rows[0][0] * job.layers * profile.decode_mask_call_s \
            + positions * job.heads * job.layers * profile.decode_mask_score_s
    s = job.dtype.itemsize
    nbytes = (2.0 * job.heads * job.q_len * work + 2.0 * job.kv_heads * positions) \
        * job.head_dim * job.layers * s
    return compute, nbytes, mask, used


def scale_kind(job: AttentionJob) -> str:
    """How ``DeviceProfile.worker_scale`` groups a job: prefill, decode or train."""
    if job.kind is JobKind.DECODE:
        return "decode"
    return "train" if job.kind is JobKind.TRAIN else "prefill"


def _joined(a: str, b: str) -> str:
    """A batch's scale kind: its jobs' kind when they share one, else prefill's."""
    return b if not a or a == b else "prefill"


def call_group(job: AttentionJob, kind: str) -> tuple[object, ...]:
    """Jobs of one group share their launches in a worker (workers/worker.py).

    Decode requests of one head layout decode together, one call per step; a
    GPU packs prompts of one head layout into one call (jagged or padded); a
    CPU worker runs each distinct shape in its own call, since padding and
    jagged tensors measured slower there (docs/benchmarks.md).
    """
    if job.kind is JobKind.DECODE:
        return ("decode", job.heads, job.kv_heads, job.layers)
    if kind == "cpu":
        return ("shape", job.heads, job.kv_heads, job.q_len, job.kv_len)
    return ("layout", job.heads, job.kv_heads)


@dataclass(frozen=True, slots=True)
class _DecodeGroup:
    """One decode call group of a pack: its requests, longest first, and what they cost."""

    rows: tuple[DecodeRow, ...]
    compute_s: float
    nbytes: float
    mask_s: float


class Pack:
    """Running totals of a packed batch on one device: adding a job is O(1), a decode O(group).

    Packed jobs share launches within their call group (:func:`call_group`):
    a group makes as many calls as its longest member (layers × steps, twice
    for training) and the batch makes its groups' calls one after another,
    so host time is paid once per call, while device time is each job's own
    work at its own rate, and memory traffic each job's own bytes. Decodes
    are the exception: a decode group runs over caches padded to its longest
    (:func:`padded_positions`) and pays a mask when they differ, so it is
    priced as a whole. A call never beats its host floor:
    ``seconds = max(calls · host, Σ compute, Σ bytes / bandwidth) + Σ mask``.
    """

    __slots__ = ("backend", "calls", "compute_s", "decodes", "flops", "groups", "jobs", "kind",
                 "mask_s", "memo", "nbytes", "profile", "want")

    def __init__(self, profile: DeviceProfile, backend: str | None = None,
                 memo: dict[str, tuple[float, float, int, float, str]] | None = None) -> None:
        self.profile, self.want = profile, backend
        self.memo = memo  # job id -> terms on this profile, shared across packs
        self.compute_s = self.nbytes = self.flops = self.mask_s = 0.0
        self.calls = self.jobs = 0
        self.groups: dict[tuple[object, ...], int] = {}  # call group -> its calls
        self.decodes: dict[tuple[object, ...], _DecodeGroup] = {}
        self.backend = ""
        self.kind = ""  # scale kind of the batch (see scale_kind)

    def _terms(self, job: AttentionJob) -> tuple[float, float, int, float, str]:
        if self.memo is not None:
            known = self.memo.get(job.id)
            if known is None:
                known = self.memo[job.id] = self._compute_terms(job)
            return known
        return self._compute_terms(job)

    def _compute_terms(self, job: AttentionJob) -> tuple[float, float, int, float, str]:
        return _job_terms(job, self.profile, self.want)

    def _joining(self, job: AttentionJob, group: tuple[object, ...], compute: float,
                 nbytes: float) -> tuple[_DecodeGroup | None, float, float, float]:
        """(the group ``job`` makes, and the compute, bytes and mask it adds to the pack);
        no group unless ``job`` is a decode, whose own terms are ``compute``/``nbytes``."""
        if job.kind is not JobKind.DECODE:
            return None, compute, nbytes, 0.0
        row = (job.steps, job.kv_len, job.batch)
        old = self.decodes.get(group)
        if old is None:
            return _DecodeGroup((row,), compute, nbytes, 0.0), compute, nbytes, 0.0
        rows = list(old.rows)
        bisect.insort(rows, row, key=lambda r: -r[0])  # the worker's order (decode_many)
        new = _DecodeGroup(tuple(rows), *_decode_terms(job, rows, self.profile, self.want)[:3])
        return (new, new.compute_s - old.compute_s, new.nbytes - old.nbytes,
                new.mask_s - old.mask_s)

    def add(self, job: AttentionJob) -> None:
        """Account for one more job; raises InputError if the profile cannot time it."""
        compute, nbytes, calls, flops, self.backend = self._terms(job)
        group = call_group(job, self.profile.kind)
        decodes, compute, nbytes, mask = self._joining(job, group, compute, nbytes)
        if decodes is not None:
            self.decodes[group] = decodes
        self.compute_s += compute
        self.nbytes += nbytes
        self.mask_s += mask
        had = self.groups.get(group, 0)
        if calls > had:
            self.groups[group] = calls
            self.calls += calls - had
        self.flops += flops
        self.jobs += 1
        self.kind = _joined(self.kind, scale_kind(job))

    def seconds_with(self, job: AttentionJob) -> float:
        """What the batch would take with ``job`` added, without adding it."""
        compute, nbytes, calls, _, _ = self._terms(job)
        group = call_group(job, self.profile.kind)
        _, compute, nbytes, mask = self._joining(job, group, compute, nbytes)
        had = self.groups.get(group, 0)
        return self._seconds(self.calls + max(0, calls - had), self.compute_s + compute,
                             self.nbytes + nbytes, self.mask_s + mask,
                             _joined(self.kind, scale_kind(job)))

    def _seconds(self, calls: int, compute: float, nbytes: float, mask: float,
                 kind: str) -> float:
        device = max(compute, nbytes / self.profile.bandwidth_bytes_s)
        if self.profile.worker_scale:
            device *= self.profile.scale(kind, device)
        return max(calls * self.profile.call_host_s, device) + mask

    @property
    def seconds(self) -> float:
        return self._seconds(self.calls, self.compute_s, self.nbytes, self.mask_s, self.kind)

    def estimate(self) -> Estimate:
        return Estimate(self.seconds, self.backend, self.flops, self.calls)


def batch_estimate(jobs: Sequence[AttentionJob], profile: DeviceProfile,
                   backend: str | None = None, *, packed: bool = True) -> Estimate:
    """Time to run ``jobs`` on ``profile``'s device, packed into shared calls (see Pack).

    ``packed=False`` prices the naive loop that launches each job on its own
    from Python, paying the per-job host cost every call. Jobs must share
    head_dim, dtype and causality (the packing rule).
    """
    if not jobs:
        raise ValueError("empty batch")
    head = jobs[0]
    if any((j.head_dim, j.dtype, j.causal) != (head.head_dim, head.dtype, head.causal)
           for j in jobs):
        raise ValueError("packed jobs must share head_dim, dtype and causal")
    if any(j.kind is JobKind.MODEL for j in jobs):
        if len(jobs) > 1:
            raise ValueError("model jobs are not packed")
        return _model_estimate(head, profile)
    if not packed:
        seconds, backend_used, flops, calls = 0.0, "", 0.0, 0
        for j in jobs:
            e = _unpacked(j, profile, backend)
            seconds += e.seconds
            flops += e.flops
            calls += e.calls
            backend_used = e.backend
        return Estimate(seconds, backend_used, flops, calls)
    pack = Pack(profile, backend)
    for j in jobs:
        pack.add(j)
    return pack.estimate()


def _seq(job: AttentionJob) -> float:
    return math.sqrt(job.q_len * _mean_kv(job))


def _unpacked(job: AttentionJob, profile: DeviceProfile, backend: str | None) -> Estimate:
    """One job launched on its own from a Python loop: per-job host cost every call."""
    kv = _mean_kv(job)
    rate, name = profile.sdpa_tflops(job.q_len, round(kv), job.head_dim, job.dtype, job.causal,
                                     backend)
    host = profile.unpacked_host_s(_seq(job))
    per_call = _call_seconds(profile, rate, call_flops(job, round(kv)), call_bytes(job, kv),
                             host)
    if job.kind is JobKind.TRAIN:
        per_call += _call_seconds(profile, rate, call_flops(job, round(kv))
                                  * profile.backward_factor, 2 * call_bytes(job, kv), host)
    calls = job.layers * job.steps
    return Estimate(per_call * calls, name, total_flops(job, profile.backward_factor), calls)


def _model_estimate(job: AttentionJob, profile: DeviceProfile) -> Estimate:
    rate = profile.matmul_tflops.get(job.dtype) or profile.matmul_tflops.get(DType.FP32)
    if not rate:
        rate = max(profile.matmul_tflops.values(), default=0.0)
    if not rate:
        raise ValueError(f"profile {profile.name!r} has no matmul rate for model jobs")
    flops = total_flops(job, profile.backward_factor)
    return Estimate(max(profile.call_host_s, flops / (rate * 1e12)), "matmul", flops, job.steps)


def estimate(job: Job, profile: DeviceProfile, backend: str | None = None) -> Estimate:
    """Predicted run of one job alone on ``profile``'s device."""
    if isinstance(job, ClusterJob):
        return Estimate(job.duration, "n/a", 0.0, 0)
    if job.kind is JobKind.MODEL:
        return _model_estimate(job, profile)
    # A batch of one, without the batch's checks and running totals: the
    # simulator prices every new shape through here.
    compute, nbytes, calls, flops, used = _job_terms(job, profile, backend)
    device = max(compute, nbytes / profile.bandwidth_bytes_s)
    if profile.worker_scale:
        device *= profile.scale(scale_kind(job), device)
    return Estimate(max(calls * profile.call_host_s, device), used, flops, calls)


def device_seconds(job: AttentionJob, profile: DeviceProfile) -> float:
    """The device's share of a lone job's time (no host floor), as the grid predicts it:
    what ``worker_scale`` is keyed on and scales, since it grows with the job where the
    host floor does not (the floor and the per-call and per-job costs are measured
    apart)."""
    compute, nbytes, *_ = _job_terms(job, profile, None)
    return max(compute, nbytes / profile.bandwidth_bytes_s)
