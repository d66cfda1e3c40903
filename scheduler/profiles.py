"""Device profiles: what a device measurably does, as data the cost model reads.

A profile is a JSON file (format ``attnsched-profile/1``, documented in
``docs/profiles.md``; its schema and writer are :mod:`scheduler.profile_json`)
holding measured SDPA throughput per backend over shapes, the host time of
one call, and Ray's dispatch costs. The cost model interpolates between
measured points and never invents a rate: shapes outside the measured range
are clamped to the nearest measured point. A dtype the device has no points
for runs only at a rate the profile names for it: an alias (the same rate as
a measured dtype) or an extrapolation (a measured dtype's rate times a factor
with its basis written down), which a run reports it used.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from scheduler.errors import InputError
from scheduler.inputfiles import clip, read_capped
from scheduler.jobs import DType
from scheduler.profile_json import (
    BACKENDS,
    FORMAT,
    SCALE_KINDS,
    SCHEMA,
    check_profile_json,
    profile_to_dict,
    schema_message,
)

__all__ = ["BACKENDS", "FORMAT", "MAX_PROFILE_BYTES", "SCALE_KINDS", "SCHEMA", "DeviceProfile",
           "Extrapolation", "SdpaPoint", "check_profile_json", "load_profile", "load_profile_data",
           "profile_from_dict", "profile_to_dict", "schema_message", "shipped_profiles"]
RATE_BUCKETS_PER_E = 1000  # rate memo resolution: 1000 buckets per e-fold of q·kv
MAX_PROFILE_BYTES = 16 << 20  # shipped profiles are ~20 KB; calibration writes far less than this


@dataclass(frozen=True, slots=True)
class SdpaPoint:
    """One measured SDPA forward call: its shape and the rate it ran at."""

    backend: str
    dtype: DType
    head_dim: int
    causal: bool
    batch: int
    heads: int
    q_len: int
    kv_len: int
    tflops: float

    @property
    def seq(self) -> float:
        """The length the rate is interpolated over (geometric mean of q and kv)."""
        return math.sqrt(self.q_len * self.kv_len)


def _loglog(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear interpolation in log-log space, clamped at both ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))


class Extrapolation(NamedTuple):
    """A dtype priced at ``factor`` × ``source``'s measured rate, for ``basis``'s reason."""

    source: DType
    factor: float
    basis: str


@dataclass(frozen=True)
class DeviceProfile:
    """Measured behaviour of one device model; immutable, cheap to query.

    Attributes:
        name: short name used by cluster specs (``h100``, ``cpu``).
        kind: ``gpu`` or ``cpu``.
        matches: device model names this profile describes (``H100``).
        memory_bytes: device memory a scheduler may plan with.
        bandwidth_bytes_s: memory bandwidth, for the memory-bound floor.
        matmul_tflops: dense matmul rate per dtype (whole-model jobs).
        sdpa: measured points.
        dtype_aliases: dtypes without points that run at another's rate.
        dtype_extrapolations: dtypes without points priced at a fraction of
            another's rate (:class:`Extrapolation`); runs report their use.
        call_host_s: host time of one SDPA call; a call never takes less.
        unpacked_job_host_s: ``(seq, seconds)`` host time per job when jobs run
            one call each from a Python loop (the naive path).
        actor_call_s / task_s: one Ray actor call / one Ray task round trip.
        sharing: ``(workers, efficiency)``: total throughput when that many
            workers share the device, relative to one.
        backward_factor: backward FLOPs per forward FLOP.
        worker_job_s: per-job cost inside a worker call beyond the attention
            itself (making inputs, bookkeeping), paid once per job of a batch.
        batch_call_s: round trip of one batch to a worker and its result back,
            beyond the attention and the per-job costs (0: ``actor_call_s``).
        worker_batch_s: per-batch cost inside a live worker's call beyond the
            attention priced and the per-job costs (waking, launching, its loop
            while its peers and the driver share the cores); the worker times it,
            so its telemetry counts it, unlike ``batch_call_s``.
        telemetry_s: round trip of one telemetry request to a worker.
        decision_s: the controller's time for one decision round (policy
            included); live, nothing is dispatched while it runs.
        node_sharing: ``(busy workers, efficiency)``: per-worker speed when
            that many workers of one node compute at once, relative to one
            alone (CPU contention between workers sharing cores).
        decode_mask_call_s / decode_mask_score_s: what a packed decode pays
            when its requests' caches differ in length and a mask must hide the
            padding: per call (one step of one layer), and per masked score
            (row × head × key position), beyond the same call unmasked.
        decode_step_s / decode_element_s / decode_dtype: one unmasked step of
            the worker's packed decode loop, timed on it: per call (one step of
            one layer) and per element read (row × query head × key ×
            head-dim), in ``decode_dtype``. When measured (``decode_step_s >
            0``), decode groups are priced by it instead of by the SDPA grid,
            whose square shapes say little about one query against a cache.
    """

    name: str
    kind: str
    device: str
    matches: tuple[str, ...]
    memory_bytes: int
    bandwidth_bytes_s: float
    matmul_tflops: Mapping[DType, float]
    sdpa: tuple[SdpaPoint, ...]
    dtype_aliases: Mapping[DType, DType] = field(default_factory=lambda: MappingProxyType({}))
    dtype_extrapolations: Mapping[DType, Extrapolation] = field(
        default_factory=lambda: MappingProxyType({}))
    call_host_s: float = 0.0
    unpacked_job_host_s: tuple[tuple[float, float], ...] = ()
    actor_call_s: float = 0.0
    task_s: float = 0.0
    sharing: tuple[tuple[float, float], ...] = ((1.0, 1.0),)
    backward_factor: float = 2.5
    worker_job_s: float = 0.0
    batch_call_s: float = 0.0
    worker_batch_s: float = 0.0
    telemetry_s: float = 0.0
    decision_s: float = 0.0
    node_sharing: tuple[tuple[float, float], ...] = ((1.0, 1.0),)
    decode_mask_call_s: float = 0.0
    decode_mask_score_s: float = 0.0
    decode_step_s: float = 0.0
    decode_element_s: float = 0.0
    decode_dtype: DType | None = None
    # Kind (prefill, decode, train) -> ((device s, measured/predicted), ...): what the
    # worker's own call path takes against the grid's prediction, by the job's device time.
    worker_scale: Mapping[str, tuple[tuple[float, float], ...]] = field(
        default_factory=lambda: MappingProxyType({}))
    source: str = ""

    @cached_property
    def _curves(self) -> dict[tuple[str, DType, int, bool], tuple[list[float], list[float]]]:
        groups: dict[tuple[str, DType, int, bool], list[SdpaPoint]] = {}
        for p in self.sdpa:
            groups.setdefault((p.backend, p.dtype, p.head_dim, p.causal), []).append(p)
        curves = {}
        for key, pts in groups.items():
            pts.sort(key=lambda p: p.seq)
            curves[key] = ([p.seq for p in pts], [p.tflops for p in pts])
        return curves

    @cached_property
    def _dims(self) -> dict[tuple[str, DType, bool], list[int]]:
        """Measured head sizes per (backend, dtype, causal), sorted."""
        dims: dict[tuple[str, DType, bool], list[int]] = {}
        for backend, dtype, head_dim, causal in self._curves:
            dims.setdefault((backend, dtype, causal), []).append(head_dim)
        return {k: sorted(v) for k, v in dims.items()}

    @cached_property
    def _rates(self) -> dict[tuple[int, int, DType, bool, str | None], tuple[float, str]]:
        return {}  # memo of sdpa_tflops: traces repeat shapes, the simulator asks often

    @cached_property
    def _used(self) -> set[DType]:
        return set()  # dtypes priced by extrapolation so far, for the run's report

    @cached_property
    def _measured(self) -> frozenset[DType]:
        return frozenset(p.dtype for p in self.sdpa)

    def dtype_for(self, dtype: DType) -> DType | None:
        """The dtype whose measurements stand for ``dtype`` here, or None."""
        if dtype in self._measured:
            return dtype
        alias = self.dtype_aliases.get(dtype)
        if alias is not None:
            return alias
        guess = self.dtype_extrapolations.get(dtype)
        return None if guess is None else guess.source

    def extrapolated(self) -> list[str]:
        """One line per dtype this profile has priced by extrapolation."""
        return [f"profile {self.name}: {d.value} priced at {e.factor:g} x its {e.source.value} "
                f"rate, an extrapolation ({e.basis})"
                for d, e in self.dtype_extrapolations.items() if d in self._used]

    def backends(self, dtype: DType, causal: bool) -> tuple[str, ...]:
        d = self.dtype_for(dtype)
        return tuple(sorted({k[0] for k in self._curves if k[1] is d and k[3] == causal}))

    def sdpa_tflops(self, q_len: int, kv_len: int, head_dim: int, dtype: DType, causal: bool,
                    backend: str | None = None) -> tuple[float, str]:
        """Rate (TFLOP/s) and backend for a saturating call of this shape.

        With ``backend=None`` the fastest measured backend wins, as a worker
        that benchmarks its backends would pick. Raises InputError when the
        profile has no measurement that can stand for the request.
        """
        # Rates are smooth in length: price the shape at the centre of a 0.1%-wide
        # bucket of log(q·kv), so the millions of distinct lengths in a trace
        # share a few thousand interpolations (error < 0.05%).
        bucket = round(math.log(q_len * kv_len) * RATE_BUCKETS_PER_E)
        key = (bucket, head_dim, dtype, causal, backend)
        known = self._rates.get(key)
        if known is not None:
            return known
        d = self.dtype_for(dtype)
        if d is None:
            raise InputError(f"profile {clip(self.name)} has no measurements for dtype "
                             f"{dtype.value}; calibrate it on the device", field="dtype")
        seq = math.exp(bucket / RATE_BUCKETS_PER_E / 2)
        candidates = [backend] if backend else self.backends(dtype, causal)
        best: tuple[float, str] | None = None
        for b in candidates:
            dims = self._dims.get((b, d, causal))
            if not dims:
                continue
            rate = _interp_dims(dims, head_dim,
                                lambda hd, b=b: _loglog(*self._curves[(b, d, hd, causal)], seq))
            if best is None or rate > best[0]:
                best = (rate, b)
        if best is None:
            raise InputError(f"profile {clip(self.name)} has no {backend or 'SDPA'} measurements "
                             f"for {dtype.value} causal={causal}", field="backend")
        if d is not dtype and dtype not in self.dtype_aliases:
            self._used.add(dtype)
            best = (best[0] * self.dtype_extrapolations[dtype].factor, best[1])
        if len(self._rates) > 200_000:
            self._rates.clear()
        self._rates[key] = best
        return best

    def unpacked_host_s(self, seq: float) -> float:
        if not self.unpacked_job_host_s:
            return self.call_host_s
        xs, ys = zip(*self.unpacked_job_host_s, strict=True)
        return _loglog(xs, ys, seq)

    def sharing_efficiency(self, workers: float) -> float:
        xs, ys = zip(*self.sharing, strict=True)
        return _loglog(xs, ys, max(1.0, workers))

    def scale(self, kind: str, seconds: float) -> float:
        """Measured over predicted for a ``kind`` batch of ``seconds`` device time (the
        cost model's compute or memory time, without the host floor).

        The SDPA grid times saturating calls in a tight loop; a worker runs a
        lone request's few heads with its own bookkeeping, which calibration
        measures on the job mix itself (``worker_scale``). 1 where unmeasured.
        """
        curve = self.worker_scale.get(kind)
        if not curve or seconds <= 0:
            return 1.0
        xs, ys = zip(*curve, strict=True)
        return _loglog(xs, ys, seconds)

    def node_efficiency(self, busy: float) -> float:
        """Per-worker speed with ``busy`` workers of one node computing at once."""
        xs, ys = zip(*self.node_sharing, strict=True)
        return _loglog(xs, ys, max(1.0, busy))


def _interp_dims(dims: list[int], head_dim: int, rate_at: Any) -> float:
    """Interpolate a rate across measured head sizes, log-linearly, clamped."""
    if head_dim <= dims[0]:
        return float(rate_at(dims[0]))
    if head_dim >= dims[-1]:
        return float(rate_at(dims[-1]))
    i = bisect.bisect_right(dims, head_dim)
    return _loglog([dims[i - 1], dims[i]], [rate_at(dims[i - 1]), rate_at(dims[i])], head_dim)


def profile_from_dict(data: Any, path: str | Path | None = None) -> DeviceProfile:
    """Validate a parsed profile and build it; errors name the key path at fault."""
    check_profile_json(data, path)
    return _build(data)


def _seconds(data: Mapping[str, Any], key: str, unit: float = 1e-6) -> float:
    return float(data.get(key, 0.0)) * unit


def _curve(rows: Any) -> tuple[tuple[float, float], ...]:
    return tuple(sorted((float(x), float(y)) for x, y in rows))


def _build(data: Mapping[str, Any]) -> DeviceProfile:
    """The profile of a checked parse (:func:`check_profile_json`)."""
    pts = tuple(
        SdpaPoint(p["backend"], DType(p["dtype"]), p["head_dim"], p["causal"], p["batch"],
                  p["heads"], p["q_len"], p["kv_len"], float(p["tflops"]))
        for p in data["sdpa"]
    )
    return DeviceProfile(
        name=data["name"], kind=data["kind"], device=data["device"],
        matches=tuple(data.get("matches", ())),
        memory_bytes=data["memory_bytes"],
        bandwidth_bytes_s=float(data["bandwidth_gb_s"]) * 1e9,
        matmul_tflops=MappingProxyType(
            {DType(k): float(v) for k, v in data.get("matmul_tflops", {}).items()}),
        sdpa=pts,
        dtype_aliases=MappingProxyType(
            {DType(k): DType(v) for k, v in data.get("dtype_aliases", {}).items()}),
        dtype_extrapolations=MappingProxyType(
            {DType(k): Extrapolation(DType(v["from"]), float(v["factor"]), v["basis"])
             for k, v in data.get("dtype_extrapolations", {}).items()}),
        call_host_s=_seconds(data, "call_host_us"),
        unpacked_job_host_s=tuple(sorted((float(s), float(us) * 1e-6)
                                         for s, us in data.get("unpacked_job_host_us", ()))),
        actor_call_s=_seconds(data, "actor_call_us"),
        task_s=_seconds(data, "task_us"),
        sharing=_curve(data.get("sharing", [[1, 1]])),
        backward_factor=float(data.get("backward_factor", 2.5)),
        worker_job_s=_seconds(data, "worker_job_us"),
        batch_call_s=_seconds(data, "batch_call_us"),
        worker_batch_s=_seconds(data, "worker_batch_us"),
        telemetry_s=_seconds(data, "telemetry_us"),
        decision_s=_seconds(data, "decision_us"),
        node_sharing=_curve(data.get("node_sharing", [[1, 1]])),
        decode_mask_call_s=_seconds(data, "decode_mask_call_us"),
        decode_mask_score_s=_seconds(data, "decode_mask_score_ns", 1e-9),
        decode_step_s=_seconds(data, "decode_step_us"),
        decode_element_s=_seconds(data, "decode_element_ns", 1e-9),
        decode_dtype=DType(data["decode_dtype"]) if "decode_dtype" in data else None,
        worker_scale=MappingProxyType({
            kind: _curve(curve) for kind, curve in data.get("worker_scale", {}).items()}),
        source=data.get("source", ""),
    )


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """A shipped profile by name (``h100``, ``cpu``) or any profile file by path."""
    data, path = load_profile_data(name_or_path)
    return profile_from_dict(data, path=path)


def load_profile_data(name_or_path: str | Path) -> tuple[Any, Path]:
    """A profile's parsed JSON, not yet validated, and the path to name in errors."""
    text: str
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        # The rule every input file follows: a FIFO, a device or an oversized file is
        # refused before it is read, never waited on or buffered whole.
        data = read_capped(p, MAX_PROFILE_BYTES, what="profile JSON file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"not UTF-8 text (bad byte at offset {e.start}); expected a "
                             "profile JSON file", path=p,
                             line=data[:e.start].count(b"\n") + 1) from None
    else:
        if str(name_or_path) not in shipped_profiles():
            raise InputError(f"no profile {clip(str(name_or_path))}; shipped: "
                             f"{', '.join(shipped_profiles())}, or give a .json path",
                             field="profile")
        p = Path(f"{name_or_path}.json")
        text = resources.files("scheduler.profile_data").joinpath(p.name).read_text("utf-8")
    try:
        return json.loads(text), p
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=p, line=e.lineno) from None
    except RecursionError:
        raise InputError("invalid JSON: nested too deeply", path=p) from None
    except ValueError:  # an integer past Python's 4,300-digit limit
        raise InputError("invalid JSON: a number with too many digits", path=p) from None


def shipped_profiles() -> tuple[str, ...]:
    folder = resources.files("scheduler.profile_data")
    return tuple(sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".json")))
