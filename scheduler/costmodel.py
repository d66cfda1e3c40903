"""The cost model: durations of jobs and packed batches on devices.

This is the one place these numbers are computed; policies, the simulator and
reports all call it, so they never disagree about what a job costs. What a
job computes (FLOPs, bytes, memory) is in :mod:`scheduler.flops` and which
jobs share which calls in :mod:`scheduler.packing`; both are re-exported
here, where callers have always imported them from.

Durations come from a :class:`~scheduler.profiles.DeviceProfile`: a call
takes ``max(host time, device time)``, where device time is the larger of
compute at the measured SDPA rate and memory traffic at the device bandwidth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from scheduler import packing
from scheduler.decodes import DecodeRow, DecodeRows, padded_positions
from scheduler.flops import (
    MEMORY_BACKENDS,
    SEQ2SEQ_EMBED,
    SEQ2SEQ_VOCAB,
    bytes_moved,
    call_bytes,
    call_flops,
    causal_fraction,
    forward_flops,
    mean_kv,
    peak_memory_bytes,
    seq2seq_step_flops,
    total_flops,
)
from scheduler.jobs import AttentionJob, ClusterJob, DType, Job, JobKind
from scheduler.packing import scale_kind
from scheduler.profiles import DeviceProfile

__all__ = [  # the formulas' and the rule's old home keeps exporting them
    "MEMORY_BACKENDS", "SEQ2SEQ_EMBED", "SEQ2SEQ_VOCAB", "DType", "DecodeRow", "Estimate",
    "Pack", "Terms", "batch_estimate", "bytes_moved", "call_bytes", "call_flops",
    "causal_fraction", "device_seconds", "estimate", "forward_flops", "padded_positions",
    "peak_memory_bytes", "scale_kind", "seq2seq_step_flops", "total_flops",
]


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


class Terms(NamedTuple):
    """One job's share of a packed batch on one profile (memoized per job id)."""

    compute_s: float
    nbytes: float
    calls: int  # forward calls that pay the host floor (packing.forward_calls)
    flops: float
    backend: str
    backward: int  # backward calls that pay it (packing.backward_calls)
    group: packing.GroupKey = ()  # its call group on this profile (packing.call_key)
    kind: str = "prefill"  # its scale kind (packing.scale_kind)


def _job_terms(job: AttentionJob, profile: DeviceProfile, backend: str | None) -> Terms:
    """One job's share of a packed batch: compute, bytes, calls, flops and backend."""
    launches = packing.forward_calls(job)
    if job.kind is JobKind.DECODE:
        compute, nbytes, _, used = _decode_terms(
            job, DecodeRows.of((job.steps, job.kv_len, job.batch)), profile, backend)
        # A timed decode step is a whole step, host included: no separate floor.
        calls = 0 if profile.decode_step_s > 0 else launches
        return Terms(compute, nbytes, calls, total_flops(job, profile.backward_factor), used, 0,
                     packing.call_key(job, profile.kind), "decode")
    kv = mean_kv(job)
    rate, used = profile.sdpa_tflops(job.q_len, round(kv), job.head_dim, job.dtype,
                                     job.causal, backend)
    train = job.kind is JobKind.TRAIN
    work = call_flops(job, round(kv)) * (1.0 + profile.backward_factor if train else 1)
    return Terms(work * launches / (rate * 1e12),
                 call_bytes(job, kv) * launches * (3 if train else 1), launches,
                 total_flops(job, profile.backward_factor), used, packing.backward_calls(job),
                 packing.call_key(job, profile.kind), scale_kind(job))


def _decode_terms(job: AttentionJob, rows: DecodeRows, profile: DeviceProfile,
                  backend: str | None) -> tuple[float, float, float, str]:
    """(compute s, bytes, mask s, backend) of one decode call group: ``job``'s head layout
    over ``rows`` (see :mod:`scheduler.decodes`), by the profile's timing of the worker's
    decode step where it has one (else at the grid's rate of the mean padded cache), and
    the profile's measured cost of the mask when the caches differ in length.

    The mask is measured on the worker's own decode loop, not derived from the
    grid, so ``worker_scale`` (the grid's error) does not apply to it.
    """
    positions, work = rows.positions, float(rows.work)
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
        compute = job.layers * (rows.rows[0][0] * profile.decode_step_s + positions * job.q_len
                                * job.heads * job.head_dim * element)
    else:
        per = 4.0 * job.heads * job.q_len * job.head_dim * job.layers
        if job.causal:
            per *= causal_fraction(job.q_len, keys)
        compute = per * positions / (rate * 1e12)
    mask = 0.0
    if rows.mixed:  # the worker masks only when caches differ (decode_many)
        mask = rows.rows[0][0] * job.layers * profile.decode_mask_call_s \
            + positions * job.heads * job.layers * profile.decode_mask_score_s
    s = job.dtype.itemsize
    nbytes = (2.0 * job.heads * job.q_len * work + 2.0 * job.kv_heads * positions) \
        * job.head_dim * job.layers * s
    return compute, nbytes, mask, used


@dataclass(frozen=True, slots=True)
class _DecodeGroup:
    """One decode call group of a pack: its requests, longest first, and what they cost."""

    rows: DecodeRows
    compute_s: float
    nbytes: float
    mask_s: float


# What a job adds to a pack: the decode group it makes (None unless a decode), and the
# compute, bytes and mask it adds.
_Joined = tuple[_DecodeGroup | None, float, float, float]


class Pack:
    """Running totals of a packed batch on one device: adding a job is O(1), a decode O(group).

    Packed jobs share calls within their call group (``packing.call_key`` on
    the profile's kind): a group makes its longest member's forward calls
    and its longest training member's backward calls, and the batch makes
    its groups' calls one after another, so host time is paid once per call,
    while device time is each job's own work at its own rate, and memory
    traffic each job's own bytes. Decodes are the exception: a decode group
    runs over caches padded to its longest (:func:`padded_positions`) and
    pays a mask when they differ, so it is priced as a whole. A call never
    beats its host floor:
    ``seconds = max(calls · host, Σ compute, Σ bytes / bandwidth) + Σ mask``.
    """

    __slots__ = ("backend", "calls", "compute_s", "decodes", "flops", "groups", "jobs",
                 "kind", "last", "mask_s", "memo", "nbytes", "profile", "want")

    def __init__(self, profile: DeviceProfile, backend: str | None = None,
                 memo: dict[str, Terms] | None = None) -> None:
        self.profile, self.want = profile, backend
        self.memo = memo  # job id -> terms on this profile, shared across packs
        self.compute_s = self.nbytes = self.flops = self.mask_s = 0.0
        self.calls = self.jobs = 0
        # call group -> its (forward, backward) calls that pay the host floor
        self.groups: dict[packing.GroupKey, tuple[int, int]] = {}
        self.decodes: dict[packing.GroupKey, _DecodeGroup] = {}
        self.backend = ""
        self.kind = ""  # scale kind of the batch (see packing.scale_kind)
        # (job, what it adds) from the last seconds_with: packing asks, then adds that job
        self.last: tuple[AttentionJob, _Joined] | None = None

    def _terms(self, job: AttentionJob) -> Terms:
        if self.memo is not None:
            known = self.memo.get(job.id)
            if known is None:
                known = self.memo[job.id] = self._compute_terms(job)
            return known
        return self._compute_terms(job)

    def _compute_terms(self, job: AttentionJob) -> Terms:
        return _job_terms(job, self.profile, self.want)

    def _joining(self, job: AttentionJob, group: packing.GroupKey, compute: float,
                 nbytes: float) -> _Joined:
        """(the group ``job`` makes, and the compute, bytes and mask it adds to the pack);
        no group unless ``job`` is a decode, whose own terms are ``compute``/``nbytes``."""
        if job.kind is not JobKind.DECODE:
            return None, compute, nbytes, 0.0
        row = (job.steps, job.kv_len, job.batch)
        old = self.decodes.get(group)
        if old is None:
            return _DecodeGroup(DecodeRows.of(row), compute, nbytes, 0.0), compute, nbytes, 0.0
        rows = old.rows.join(row)
        new = _DecodeGroup(rows, *_decode_terms(job, rows, self.profile, self.want)[:3])
        return (new, new.compute_s - old.compute_s, new.nbytes - old.nbytes,
                new.mask_s - old.mask_s)

    def add(self, job: AttentionJob) -> None:
        """Account for one more job; raises InputError if the profile cannot time it."""
        terms = self._terms(job)
        self.backend = terms.backend
        group = terms.group
        last, self.last = self.last, None
        decodes, compute, nbytes, mask = (
            last[1] if last is not None and last[0] is job
            else self._joining(job, group, terms.compute_s, terms.nbytes))
        if decodes is not None:
            self.decodes[group] = decodes
        self.compute_s += compute
        self.nbytes += nbytes
        self.mask_s += mask
        forward, backward = self.groups.get(group, (0, 0))
        calls = self.groups[group] = (max(forward, terms.calls), max(backward, terms.backward))
        self.calls += calls[0] + calls[1] - forward - backward
        self.flops += terms.flops
        self.jobs += 1
        self.kind = packing.joined_kind(self.kind, terms.kind)

    def seconds_with(self, job: AttentionJob) -> float:
        """What the batch would take with ``job`` added, without adding it."""
        terms = self._terms(job)
        group = terms.group
        joined = self._joining(job, group, terms.compute_s, terms.nbytes)
        self.last = (job, joined)
        _, compute, nbytes, mask = joined
        more, kind = self._more(terms)
        return self._seconds(self.calls + more, self.compute_s + compute,
                             self.nbytes + nbytes, self.mask_s + mask, kind)

    def within(self, job: AttentionJob, budget_s: float) -> bool:
        """Whether the batch with ``job`` added takes at most ``budget_s``.

        A decode is first priced as if its group paid for its own cache alone
        (no padding, no mask), which costs no repricing of the group: packing
        asks this of every candidate, and in a deep queue most decodes asked
        are refused on that price already.
        """
        terms = self._terms(job)
        if job.kind is JobKind.DECODE and terms.group in self.decodes:
            more, kind = self._more(terms)
            if self._seconds(self.calls + more, self.compute_s + terms.compute_s,
                             self.nbytes + terms.nbytes, self.mask_s, kind) > budget_s:
                return False
        return self.seconds_with(job) <= budget_s

    def _more(self, terms: Terms) -> tuple[int, str]:
        """(the calls ``terms``' job adds to the batch, the batch's kind with it)."""
        forward, backward = self.groups.get(terms.group, (0, 0))
        more = max(0, terms.calls - forward) + max(0, terms.backward - backward)
        return more, terms.kind if not self.kind or self.kind == terms.kind else "prefill"

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
    from Python, paying the per-job host cost every call. ValueError unless
    the jobs may share a batch (``packing.can_pack``).
    """
    why = packing.refusal(jobs)
    if why is not None:
        raise ValueError(why)
    head = jobs[0]
    if head.kind is JobKind.MODEL:  # alone, by the rule
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
    return math.sqrt(job.q_len * mean_kv(job))


def _unpacked(job: AttentionJob, profile: DeviceProfile, backend: str | None) -> Estimate:
    """One job launched on its own from a Python loop: per-job host cost every call."""
    kv = mean_kv(job)
    rate, name = profile.sdpa_tflops(job.q_len, round(kv), job.head_dim, job.dtype, job.causal,
                                     backend)
    host = profile.unpacked_host_s(_seq(job))
    per_call = _call_seconds(profile, rate, call_flops(job, round(kv)), call_bytes(job, kv),
                             host)
    if job.kind is JobKind.TRAIN:
        per_call += _call_seconds(profile, rate, call_flops(job, round(kv))
                                  * profile.backward_factor, 2 * call_bytes(job, kv), host)
    calls = packing.forward_calls(job)  # each with its backward, for training
    return Estimate(per_call * calls, name, total_flops(job, profile.backward_factor), calls)


def _model_estimate(job: AttentionJob, profile: DeviceProfile) -> Estimate:
    rate = profile.matmul_tflops.get(job.dtype) or profile.matmul_tflops.get(DType.FP32)
    if not rate:
        rate = max(profile.matmul_tflops.values(), default=0.0)
    if not rate:
        raise ValueError(f"profile {profile.name!r} has no matmul rate for model jobs")
    flops = total_flops(job, profile.backward_factor)
    return Estimate(max(profile.call_host_s, flops / (rate * 1e12)), "matmul", flops,
                    packing.forward_calls(job))


def estimate(job: Job, profile: DeviceProfile, backend: str | None = None) -> Estimate:
    """Predicted run of one job alone on ``profile``'s device."""
    if isinstance(job, ClusterJob):
        return Estimate(job.duration, "n/a", 0.0, 0)
    if job.kind is JobKind.MODEL:
        return _model_estimate(job, profile)
    # A batch of one, without the batch's checks and running totals: the
    # simulator prices every new shape through here.
    compute, nbytes, forward, flops, used, backward, _, _ = _job_terms(job, profile, backend)
    device = max(compute, nbytes / profile.bandwidth_bytes_s)
    if profile.worker_scale:
        device *= profile.scale(scale_kind(job), device)
    calls = forward + backward
    return Estimate(max(calls * profile.call_host_s, device), used, flops, calls)


def device_seconds(job: AttentionJob, profile: DeviceProfile) -> float:
    """The device's share of a lone job's time (no host floor), as the grid predicts it:
    what ``worker_scale`` is keyed on and scales, since it grows with the job where the
    host floor does not (the floor and the per-call and per-job costs are measured
    apart)."""
    compute, nbytes, *_ = _job_terms(job, profile, None)
    return max(compute, nbytes / profile.bandwidth_bytes_s)
