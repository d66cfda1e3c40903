"""The packing rule, once: which jobs may share a batch, and how a batch becomes kernel calls.

The cost model (``scheduler/costmodel.py``) prices a batch by what this module
says; the worker (``workers/worker.py``) runs a batch by what it says; the
kernels (``workers/kernels.py``) read :data:`RULES` to pick, launch by launch,
how different shapes share one call. When these lived in four places they
disagreed (issue 21); keep every rule about grouping here.

The rule:

* **A batch** is attention jobs sharing head_dim, dtype and causality; a
  model job (the seq2seq network) runs alone (:func:`can_pack`).
* **Launches.** The worker hands the kernels one launch per call group and
  pass (:func:`launch_groups`): prompts and training steps of one head layout
  go together, layer by layer; decode requests of one head layout and layer
  count decode together, one launch per layer and step.
* **Calls per job** (:func:`forward_calls`): one per layer, repeated per step
  for decode and training; a prefill is one pass over its prompt whatever its
  ``steps`` (DESIGN.md: steps count decode tokens and training steps), and a
  model job is ``steps`` runs of its network. Training adds one backward call
  per forward call (:func:`backward_calls`).
* **Kernel calls** (:func:`call_groups`): a launch of several prompt shapes is
  one kernel call where the device's rule nests or pads them (GPUs), and one
  call per shape where it does not (CPUs). A GPU launch whose shapes can be
  neither nested nor padded within :data:`RULES` also splits by shape; the
  cost model does not price that case yet (it counts one call).

A group makes as many calls as its longest member; a member takes part in the
first of them, until its own count runs out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scheduler.jobs import AttentionJob, DType, Job, JobKind

RULE = ("jobs in one batch must be attention jobs sharing head_dim, dtype and causality; "
        "a model job runs alone")

PackKey = tuple[int, DType, bool]
GroupKey = tuple[object, ...]


def pack_key(job: Job) -> PackKey | None:
    """What the jobs of one batch share; None for a job that shares a batch with nothing."""
    if not isinstance(job, AttentionJob) or job.kind is JobKind.MODEL:
        return None
    return (job.head_dim, job.dtype, job.causal)


def can_pack(jobs: Sequence[Job]) -> bool:
    """Whether ``jobs`` may run as one batch (a lone attention job always may)."""
    if len(jobs) == 1:
        return isinstance(jobs[0], AttentionJob)
    want = pack_key(jobs[0]) if jobs else None
    return want is not None and all(pack_key(j) == want for j in jobs)


def refusal(jobs: Sequence[Job]) -> str | None:
    """Why ``jobs`` may not share a batch (:data:`RULE` and the job at fault), or None."""
    if can_pack(jobs):
        return None
    if not jobs:
        return f"{RULE} (the batch is empty)"
    head = jobs[0]
    for job in jobs:
        if pack_key(job) is None:
            return f"{RULE} ({job.id} is a {job.kind.value} job)"
        if pack_key(job) != pack_key(head):
            return f"{RULE} ({_described(job)}, {_described(head)})"
    return RULE  # unreachable: can_pack failed, so some job differs


def _described(job: Job) -> str:
    assert isinstance(job, AttentionJob)
    causal = "causal" if job.causal else "not causal"
    return f"{job.id} has head_dim {job.head_dim}, dtype {job.dtype.value}, {causal}"


# -- how many calls --------------------------------------------------------------------------


def passes(job: AttentionJob) -> int:
    """Times the worker runs a job's layers: once per step, but once for a prefill."""
    return 1 if job.kind is JobKind.PREFILL else job.steps


def forward_calls(job: AttentionJob) -> int:
    """Forward kernel launches the job takes part in (a model job: runs of its network)."""
    if job.kind is JobKind.MODEL:
        return job.steps
    return job.layers * passes(job)


def backward_calls(job: AttentionJob) -> int:
    """Backward calls: one per forward call for training (a model trains inside its runs)."""
    return forward_calls(job) if job.kind is JobKind.TRAIN else 0


# -- which jobs share them -------------------------------------------------------------------


@dataclass(frozen=True)
class PackRule:
    """How one device type packs different shapes into one call; figures in docs/benchmarks.md.

    ``nested``: try jagged tensors first. ``max_pad_waste``: pad only when at
    most this share of the padded score matrix is padding, and only when
    each separate call would do at most ``launch_bound_flops`` (bigger calls
    already run near the device's peak, so padding only adds work).
    """

    nested: bool
    max_pad_waste: float
    launch_bound_flops: float

    @property
    def shares_shapes(self) -> bool:
        """Whether different shapes can share one call at all (else one call per shape)."""
        return self.nested or self.max_pad_waste >= 0


# Keyed by torch device type (``kernels.choose_packing`` gets a tensor's);
# ``rule_for`` also takes a profile's kind ("gpu").
RULES = {
    # Measured on the 2-core CPU (bench/pack_methods.py, fp32 and bf16): one
    # call per shape beat padding in every mix of lengths (10-93% padding:
    # padded 1.1-24x slower; a CPU call is cheap, so fewer calls buy little),
    # and jagged tensors were 6-95x (fp32) and 8-700x (bf16) slower than
    # per-shape calls, 8.5x even with nothing to pad (CPU nested SDPA is the
    # math kernel over strided nested tensors). So: never pad, never nest.
    "cpu": PackRule(nested=False, max_pad_waste=-1.0, launch_bound_flops=0.0),
    # H100 profile (packing_64_jobs_*): a call of one small job is launch-bound
    # (~25 µs: 1.2 TFLOP/s at L=128, 22 at L=512), a packed one is not (132,
    # 370). Varlen flash/cuDNN kernels pack without padding, so nested comes
    # first; a masked padded call runs on the efficient kernel (flash takes no
    # mask; ~1/3 of cuDNN), which still beats launch-bound calls below ~1 GFLOP
    # each while half the scores are real. Not yet measured on a GPU: run
    # bench/pack_methods.py there and adjust.
    "cuda": PackRule(nested=True, max_pad_waste=0.5, launch_bound_flops=1e9),
}
_TORCH_TYPE = {"gpu": "cuda"}  # a profile's kind -> torch's device type


def rule_for(device: str) -> PackRule:
    """The rule of a torch device type or profile kind; unknown devices get the CPU's."""
    return RULES.get(_TORCH_TYPE.get(device, device), RULES["cpu"])


def launch_key(job: AttentionJob) -> GroupKey:
    """Jobs with one key go to the kernels together, once per launch (see module doc)."""
    if job.kind is JobKind.DECODE:
        return ("decode", job.heads, job.kv_heads, job.layers)
    if job.kind is JobKind.MODEL:
        return ("model", job.id)
    return ("layout", job.heads, job.kv_heads)


def call_key(job: AttentionJob, device_kind: str) -> GroupKey:
    """Jobs with one key share each kernel call on ``device_kind`` ("gpu", "cpu", "cuda")."""
    kind = job.kind
    if kind is JobKind.DECODE or kind is JobKind.MODEL:
        return launch_key(job)
    if rule_for(device_kind).shares_shapes:
        return ("layout", job.heads, job.kv_heads)
    return ("shape", job.heads, job.kv_heads, job.q_len, job.kv_len)


@dataclass(frozen=True, slots=True)
class CallGroup:
    """Jobs that share every call they take part in, and how many calls the group makes.

    ``forward`` is the longest member's :func:`forward_calls` (member ``j``
    joins calls ``0 .. forward_calls(j) - 1``); ``backward`` the longest
    training member's :func:`backward_calls`. ``jobs`` keep the batch's order.
    """

    key: GroupKey
    jobs: tuple[AttentionJob, ...]
    forward: int
    backward: int

    @property
    def kind(self) -> str:
        """"layout" or "shape" (prompts and training), "decode" or "model"."""
        return str(self.key[0])

    @property
    def calls(self) -> int:
        return self.forward + self.backward


def launch_groups(jobs: Sequence[Job]) -> tuple[CallGroup, ...]:
    """What the worker hands the kernels together; ValueError if ``jobs`` cannot share a batch."""
    return _grouped(jobs, launch_key)


def call_groups(jobs: Sequence[Job], device_kind: str) -> tuple[CallGroup, ...]:
    """The kernel calls those launches become on ``device_kind`` (by :data:`RULES`)."""
    return _grouped(jobs, lambda job: call_key(job, device_kind))


def _grouped(jobs: Sequence[Job], key: Callable[[AttentionJob], GroupKey]
             ) -> tuple[CallGroup, ...]:
    why = refusal(jobs)
    if why is not None:
        raise ValueError(why)
    members: dict[GroupKey, list[AttentionJob]] = {}
    for job in jobs:
        assert isinstance(job, AttentionJob)  # can_pack admits nothing else
        members.setdefault(key(job), []).append(job)
    # The worker runs prompts and training first, then the decodes: the order
    # its results and random inputs have always come in.
    ordered = sorted(members.items(), key=lambda item: item[0][0] == "decode")
    return tuple(CallGroup(k, tuple(group), max(map(forward_calls, group)),
                           max(map(backward_calls, group)))
                 for k, group in ordered)


# -- what kind of work a batch is ------------------------------------------------------------


def scale_kind(job: AttentionJob) -> str:
    """How ``DeviceProfile.worker_scale`` groups a job: prefill, decode or train."""
    if job.kind is JobKind.DECODE:
        return "decode"
    return "train" if job.kind is JobKind.TRAIN else "prefill"


def joined_kind(batch: str, job: str) -> str:
    """A batch's scale kind after adding a job's: theirs when they agree, else prefill's
    (``batch`` is "" for an empty batch)."""
    return job if not batch or batch == job else "prefill"
