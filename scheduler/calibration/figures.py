"""What a calibration measured, as the measurements in ``workers/`` return it: seconds and
counts, before any fit. :mod:`scheduler.calibration.fit` and
:mod:`scheduler.calibration.replay_fit` turn these into profile fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

Run = tuple[str, str, float, float, float]  # kind, device, start, end, predicted seconds


# -- the device -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SdpaTiming:
    """Seconds per SDPA call of ``batch`` × ``heads`` square sequences of ``length``."""

    backend: str
    dtype: str
    head_dim: int
    causal: bool
    batch: int
    heads: int
    length: int
    seconds: float


@dataclass(frozen=True, slots=True)
class HostTiming:
    """Calls too small to compute, so they time the launch path alone."""

    call_s: float  # one worker attention call (backend choice included)
    decode_step_s: float  # one step of the worker's packed decode (slicing included)
    loop_job_s: float  # per job of a Python loop of one SDPA call each


@dataclass(frozen=True, slots=True)
class DecodeTiming:
    """Decode calls of ``steps`` steps, ``rows`` requests of ``heads`` query heads of
    ``head_dim``: per cache length, the seconds of one call (or, for the mask, the seconds
    a masked call takes beyond the same call unmasked)."""

    rows: int
    heads: int
    head_dim: int
    steps: int
    seconds: tuple[tuple[int, float], ...]  # (cache length, seconds per call), two lengths


@dataclass(frozen=True, slots=True)
class PackingTiming:
    """Per-job seconds of ``jobs`` jobs (8 heads of 64) in one call, and one call each."""

    jobs: int
    seq_len: int
    one_by_one_s: float
    packed_s: float


@dataclass(frozen=True, slots=True)
class DeviceFigures:
    """Everything but the live path: the device, its SDPA grid and its host costs."""

    kind: str  # gpu or cpu
    device: str  # as the driver or OS names it
    matches: tuple[str, ...]
    memory_bytes: int
    source: str  # what measured it, when
    threads: int
    dtypes: tuple[str, ...]  # the grid's dtypes, the reference (decode, live) dtype first
    host: HostTiming
    decode_step: DecodeTiming
    decode_mask: DecodeTiming
    sdpa: tuple[SdpaTiming, ...]
    matmul_side: int
    matmul_s: Mapping[str, float]  # dtype -> seconds of one square matmul of matmul_side
    copy_bytes: int
    copy_s: float  # seconds of one device copy of copy_bytes
    batching: tuple[PackingTiming, ...]  # N = 1.. jobs at the shortest packing length
    packing: tuple[PackingTiming, ...]  # per packing length, at the largest N


# -- the live path --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobFitTiming:
    """Per batch size, the median wall seconds of an n-job batch less the attention the
    cost model predicts for it."""

    residuals: tuple[tuple[int, float], ...]


@dataclass(frozen=True, slots=True)
class ScaleTiming:
    """One lone job of the job mix run by the worker: its kind, the grid's device seconds
    and SDPA calls for it, and the median wall seconds it took."""

    kind: str
    device_s: float
    calls: int
    median_s: float


@dataclass(frozen=True, slots=True)
class DecisionTiming:
    """Seconds of each ``Controller.decide`` round, and the jobs they placed."""

    seconds: tuple[float, ...]
    placed: int
    devices: int
    queue: int


@dataclass(frozen=True, slots=True)
class SharingTiming:
    """Per count of busy workers, the worker-timed seconds of batches run while all were
    busy."""

    seconds: tuple[tuple[int, tuple[float, ...]], ...]


@dataclass(frozen=True, slots=True)
class RayFigures:
    actor_s: float  # an empty actor call's round trip
    task_s: float  # an empty task's round trip
    telemetry_s: float  # a telemetry request's round trip
    via_ray: JobFitTiming  # the per-job fit through a Ray actor
    peers_busy: JobFitTiming | None  # the same with the node's other workers busy (CPU)
    sharing: SharingTiming | None  # node sharing (CPU)


@dataclass(frozen=True, slots=True)
class LiveFigures:
    """The live path's costs: the controller, the worker in process, and through Ray
    (None: not measured)."""

    decision: DecisionTiming
    in_process: JobFitTiming
    scale: tuple[ScaleTiming, ...]
    ray: RayFigures | None


@dataclass(frozen=True, slots=True)
class ReplayTiming:
    """One live replay: each lone batch's run, every batch's wall seconds beyond its
    worker's timing (from the send; from the decision that placed it), and the mean JCT."""

    runs: tuple[Run, ...]
    beyond_s: tuple[float, ...]
    held_s: tuple[float, ...]
    jct_mean_s: float | None
