"""From measured figures to a device profile: the device's rates and host costs, then the
live path's costs (the live replay's fit is :mod:`scheduler.calibration.replay_fit`).

A profile file holds times rounded in the units they were measured in (µs to three
decimals, and so on); the profile built here holds exactly what reading that file gives
(``us * 1e-6``), so the live fits predict with the same numbers a run will read, and the
profile written (:meth:`Calibrated.to_json`) is the one built.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from scheduler.calibration.figures import (
    DecisionTiming,
    DecodeTiming,
    DeviceFigures,
    JobFitTiming,
    LiveFigures,
    PackingTiming,
    ScaleTiming,
    SdpaTiming,
    SharingTiming,
)
from scheduler.jobs import DType
from scheduler.profile_json import profile_to_dict
from scheduler.profiles import DeviceProfile, SdpaPoint

Curve = tuple[tuple[float, float], ...]
# A size tells of the device's rate only where the grid's device time is at least this
# share of the host floor; below, overheads the per-call and per-job fit covers dominate
# and the ratio is noise (tens to a hundred on a 32-token prompt).
FLOOR_SHARE = 8
RAY_FIELDS = ("actor_call_us", "task_us", "batch_call_us", "telemetry_us", "node_sharing")


def us(micros: float) -> float:
    """Seconds of a figure the profile file holds in microseconds, as reading it gives."""
    return float(micros) * 1e-6


def attention_flops(b: int, h: int, q: int, kv: int, d: int, causal: bool) -> float:
    f = 4.0 * b * h * q * kv * d
    return f / 2 if causal else f


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``y = a + b·x``; returns ``(a, b)``."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("a line needs at least two distinct x values")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    return my - b * mx, b


def line_through(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(intercept, slope) of the line through two points, each floored at 0: a cost."""
    (x0, y0), (x1, y1) = points
    slope = max(0.0, (y1 - y0) / (x1 - x0))
    return max(0.0, y0 - slope * x0), slope


# -- the device -----------------------------------------------------------------------------


def sdpa_point(t: SdpaTiming) -> SdpaPoint:
    flops = attention_flops(t.batch, t.heads, t.length, t.length, t.head_dim, t.causal)
    return SdpaPoint(t.backend, DType(t.dtype), t.head_dim, t.causal, t.batch, t.heads,
                     t.length, t.length, round(flops / t.seconds / 1e12, 6))


def decode_step_line(t: DecodeTiming) -> tuple[float, float]:
    """Seconds per decode step (one layer) and per element read (row × query head × key ×
    head-dim), from steps over two cache lengths (keys counted at their mean per step)."""
    return line_through([(t.rows * t.heads * (length + (t.steps - 1) / 2) * t.head_dim,
                          seconds / t.steps) for length, seconds in t.seconds])


def decode_mask_line(t: DecodeTiming) -> tuple[float, float]:
    """What the mask adds: seconds per call and per masked score (row × head × key), from
    the extra seconds of masked calls over two cache lengths (never below 0)."""
    return line_through([(t.rows * t.heads * (length + (t.steps - 1) / 2),
                          max(0.0, added) / t.steps) for length, added in t.seconds])


def packing_row(t: PackingTiming) -> dict[str, float]:
    return {"jobs": t.jobs, "seq_len": t.seq_len,
            "one_by_one_us_per_job": round(t.one_by_one_s * 1e6, 3),
            "packed_us_per_job": round(t.packed_s * 1e6, 3),
            "gain": round(t.one_by_one_s / t.packed_s, 3)}


def packing_reference(t: PackingTiming) -> dict[str, float]:
    """A packing length's rates one by one and in one call (TFLOP/s, from the rounded µs)."""
    row = packing_row(t)
    f = attention_flops(1, 8, 1, 1, 64, False) * t.seq_len * t.seq_len
    return {"seq_len": t.seq_len, "jobs": t.jobs,
            "one_by_one_tflops": f / row["one_by_one_us_per_job"] / 1e6,
            "one_packed_call_tflops": f / row["packed_us_per_job"] / 1e6}


def device_profile(fig: DeviceFigures, name: str) -> DeviceProfile:
    """The profile of the device figures alone: what the live path's fits predict with."""
    step, element = decode_step_line(fig.decode_step)
    mask_call, mask_score = decode_mask_line(fig.decode_mask)
    call_host = max(fig.host.call_s, fig.host.decode_step_s)
    bandwidth = 2 * fig.copy_bytes / fig.copy_s / 1e9  # read + write, GB/s
    # CPU fp16 runs at bf16's rate (both are converted to fp32 per tile).
    aliases = ({DType.FP16: DType.BF16} if "bf16" in fig.dtypes and "fp16" not in fig.dtypes
               else {})
    return DeviceProfile(
        name=name, kind=fig.kind, device=fig.device, matches=fig.matches,
        memory_bytes=fig.memory_bytes, bandwidth_bytes_s=round(bandwidth, 3) * 1e9,
        matmul_tflops=MappingProxyType({
            DType(d): round(2 * fig.matmul_side**3 / t / 1e12, 6)
            for d, t in fig.matmul_s.items()}),
        sdpa=tuple(sdpa_point(t) for t in fig.sdpa),
        dtype_aliases=MappingProxyType(aliases),
        call_host_s=us(round(call_host * 1e6, 3)),
        unpacked_job_host_s=((1.0, us(round(fig.host.loop_job_s * 1e6, 3))),),
        decode_step_s=us(round(step * 1e6, 3)),
        decode_element_s=round(element * 1e9, 6) * 1e-9,
        decode_dtype=DType(fig.dtypes[0]),
        decode_mask_call_s=us(round(mask_call * 1e6, 3)),
        decode_mask_score_s=round(mask_score * 1e9, 4) * 1e-9,
        source=fig.source)


def device_reference(fig: DeviceFigures) -> dict[str, Any]:
    return {"threads": fig.threads,
            "batching_heads8_headdim64": [packing_row(t) for t in fig.batching],
            "packing_batch1_heads8_headdim64": [packing_reference(t) for t in fig.packing]}


# -- the live path --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobFit:
    """``measured(n) − predicted attention(n) = per_call + n·per_job``, in µs."""

    per_call_us: float
    per_job_us: float
    residual_us: tuple[tuple[int, float], ...]

    def reference(self) -> dict[str, Any]:
        return {"per_call_us": self.per_call_us, "per_job_us": self.per_job_us,
                "residual_us": [[n, r] for n, r in self.residual_us]}


def job_fit(t: JobFitTiming) -> JobFit:
    per_call, per_job = fit_line([(float(n), r) for n, r in t.residuals])
    return JobFit(round(per_call * 1e6, 3), round(per_job * 1e6, 3),
                  tuple((int(n), round(r * 1e6, 3)) for n, r in t.residuals))


def worker_scale(timings: Sequence[ScaleTiming], fit: JobFit,
                 call_host_s: float) -> dict[str, Curve]:
    """Per kind: (device s, measured/predicted device time) of lone jobs run by the worker.

    The per-call and per-job costs of the worker path (``fit``, charged apart
    by the simulator) come off the measured time first, and a size is kept
    only where what is left exceeds the host floor and the grid's device time
    is not negligible beside it: elsewhere the floor and the overheads explain
    the time and say nothing of the device's rate.
    """
    per_call_s, per_job_s = max(0.0, fit.per_call_us) * 1e-6, max(0.0, fit.per_job_us) * 1e-6
    out: dict[str, list[tuple[float, float]]] = {}
    for t in timings:
        left = t.median_s - per_call_s - per_job_s
        floor = t.calls * call_host_s
        if left <= floor or t.device_s < floor / FLOOR_SHARE:
            continue
        out.setdefault(t.kind, []).append(
            (float(f"{t.device_s:.6g}"), round(left / t.device_s, 4)))
    # sorted: a batch can outgrow a longer sequence
    return {kind: tuple(sorted(curve)) for kind, curve in out.items()}


def decision_summary(t: DecisionTiming) -> dict[str, Any]:
    times = sorted(t.seconds)
    return {"median_us": round(statistics.median(times) * 1e6, 3),
            "p90_us": round(times[int(0.9 * (len(times) - 1))] * 1e6, 3),
            "rounds": len(times), "devices": t.devices, "queue": t.queue,
            "jobs_placed": t.placed}


def node_sharing(t: SharingTiming) -> tuple[Curve, list[dict[str, float]]]:
    """``((k, per-worker speed with k busy, relative to one alone), ...)`` and the medians."""
    medians = [(k, statistics.median(seconds)) for k, seconds in t.seconds]
    alone = dict(medians)[1]
    # Noise can make k workers look faster than one; a worker never gains from peers.
    curve = tuple((float(k), round(min(1.0, alone / median), 4)) for k, median in medians)
    return curve, [{"workers": k, "median_batch_s": round(median, 6)} for k, median in medians]


def live_profile(base: DeviceProfile, live: LiveFigures) -> tuple[DeviceProfile, dict[str, Any]]:
    """``base`` with the live path's costs, and their raw figures for ``reference``.

    A live batch pays the Ray path's per-job cost (the job records are pickled
    too), so that slope is the figure; the in-process fit stays in the
    reference as a check. The Ray fit's intercept is what a batch costs
    through Ray beyond its jobs: the empty call's round trip plus sending the
    batch and its result (never less than the former; with the node's other
    workers busy, as live runs pay it, when that is larger).
    """
    in_process = job_fit(live.in_process)
    decision = decision_summary(live.decision)
    reference: dict[str, Any] = {"decision": decision,
                                 "worker_in_process": in_process.reference()}
    profile = replace(base, decision_s=us(decision["median_us"]),
                      worker_job_s=us(max(0.0, in_process.per_job_us)),
                      worker_scale=MappingProxyType(
                          worker_scale(live.scale, in_process, base.call_host_s)))
    ray = live.ray
    if ray is None:
        return profile, reference
    via = job_fit(ray.via_ray)
    busy = job_fit(ray.peers_busy) if ray.peers_busy is not None else via
    if ray.peers_busy is not None:
        reference["worker_through_ray_peers_busy"] = busy.reference()
    sharing: Curve = ((1.0, 1.0),)
    if ray.sharing is not None:
        sharing, reference["node_sharing"] = node_sharing(ray.sharing)
    reference["worker_through_ray"] = via.reference()
    actor_us = ray.actor_s * 1e6
    return replace(
        profile, actor_call_s=us(round(actor_us, 3)), task_s=us(round(ray.task_s * 1e6, 3)),
        batch_call_s=us(round(max(actor_us, via.per_call_us, busy.per_call_us), 3)),
        worker_job_s=us(max(0.0, via.per_job_us)),
        telemetry_s=us(round(ray.telemetry_s * 1e6, 3)), node_sharing=sharing), reference


# -- the result -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibrated:
    """A calibration's profile, its raw figures (``reference``), and the profile fields it
    did not measure (left out of the file, as the reader's defaults stand for them)."""

    profile: DeviceProfile
    reference: Mapping[str, Any] = field(default_factory=dict)
    omit: frozenset[str] = frozenset()

    def noted(self, note: str) -> Calibrated:
        """The same with ``note`` added to the profile's source (``; note``)."""
        return replace(self, profile=replace(self.profile,
                                             source=f"{self.profile.source}; {note}"))

    def to_json(self) -> dict[str, Any]:
        return profile_to_dict(self.profile, self.reference, self.omit)
