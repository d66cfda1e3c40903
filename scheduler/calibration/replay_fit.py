"""What the live replays calibration ends with say of the live worker path, as profile
fields (the replays themselves run in :mod:`workers.calibrate_live`).

Each lone batch of a replay gives its worker-timed seconds, the profile's prediction for
it and its busy peers; :func:`fit_worker_path` fits a fixed cost per batch, a level per
kind and the slowdown per busy peer, :func:`combine_rounds` takes each figure's median
over the replays, and :func:`fit_replay` folds them into ``worker_scale``,
``worker_batch_us``, ``batch_call_us`` and ``node_sharing``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from scheduler.calibration.figures import ReplayTiming, Run
from scheduler.calibration.fit import Curve, us
from scheduler.profile_json import micros
from scheduler.profiles import DeviceProfile

REPLAY_LOAD = 0.5  # offered load of the replay on its workers
REPLAY_MIN = 10  # lone jobs of a kind needed to correct that kind
FIT_ROUNDS = 2000  # most alternations of the worker-path fit (levels, then c)


def busy_peers(runs: Sequence[Run]) -> list[float]:
    """Each run's busy peers, time-averaged: its overlap with other devices' runs over its
    length (1.0: one other worker computed the whole time)."""
    out = []
    for _, device, start, end, _ in runs:
        length = max(end - start, 1e-12)
        out.append(sum(max(0.0, min(end, e) - max(start, s)) for _, d, s, e, _ in runs
                       if d != device) / length)
    return out


@dataclass(frozen=True)
class WorkerFit:
    """What a replay's lone batches say of the live worker path (:func:`fit_worker_path`)."""

    levels: Mapping[str, float]  # kind -> worker-timed over predicted seconds, beyond fixed_s
    fixed_s: float  # a lone batch's time in its worker beyond what its seconds scale with
    per_peer: float  # c: the slowdown each busy peer adds
    counts: Mapping[str, int]  # lone batches of each kind


def fit_worker_path(runs: Sequence[Run], fixed_c: float | None = None) -> WorkerFit:
    """Fit ``worker-timed = (fixed + level(kind) · predicted) · (1 + c · peers)``.

    The simulator slows a worker while its node's other workers compute (the
    ``node_sharing`` curve), so the levels must be net of that, and the curve
    is best measured where it applies: inside this live run, on its own job
    mix. A synthetic measurement (k workers each looping one batch) slows
    every job by the same share, but here a short prompt or decode hardly
    slows while a long training step does.

    ``fixed`` is there because a live worker's call costs it a millisecond or
    two whatever the job (its thread waking, the launch, its loop, while its
    peer and the driver share the cores), which the lone-job fit on a quiet
    node does not see. A ratio per kind takes that in as a share: the
    shortest quarter of prompts ran at 1.4–1.7× their prediction in one
    replay and the longest at 0.8–0.9×, and the long jobs, which make a
    queue, were priced 10–30% too dear. With ``fixed`` the ratio is flat
    across sizes within 5–10%.

    Least squares weighted by 1 / predicted (a run's noise grows with its
    length), so each kind's worker-timed total equals its fitted total: the
    load a replay puts on its workers is what the simulator charges. Given
    ``c`` the rest is linear, and given those ``c`` is; they are solved in
    turn until ``c`` holds still (:func:`_alternate`). Each run's ratio is
    clipped to 0.25–4× its kind's median first, so one disturbed run cannot
    set the slope. ``fixed`` is never negative, and is 0 where the sizes
    cannot tell it from the levels. With ``fixed_c`` nothing about sharing is
    fitted.
    """
    if not runs:
        return WorkerFit({}, 0.0, fixed_c or 0.0, {})
    kinds = sorted({run[0] for run in runs})
    kind = np.array([kinds.index(run[0]) for run in runs])
    solo = np.array([run[4] for run in runs])
    ratio = np.array([(run[3] - run[2]) / run[4] for run in runs])
    middle = np.array([np.median(ratio[kind == k]) for k in range(len(kinds))])[kind]
    took = np.clip(ratio, 0.25 * middle, 4.0 * middle) * solo
    design = np.zeros((len(runs), 1 + len(kinds)))
    design[np.arange(len(runs)), 1 + kind] = solo
    design[:, 0] = 1.0
    coef, c = _alternate(design, took, solo, np.array(busy_peers(runs)), fixed_c)
    return WorkerFit(levels={k: float(coef[1 + i]) for i, k in enumerate(kinds)},
                     fixed_s=float(coef[0]), per_peer=c,
                     counts={k: int(np.sum(kind == i)) for i, k in enumerate(kinds)})


def _alternate(design: Any, took: Any, solo: Any, peers: Any,
               fixed_c: float | None) -> tuple[Any, float]:
    """(fixed, levels...) and ``c`` of :func:`fit_worker_path`, each solved given the other."""
    weight = 1.0 / np.sqrt(solo)  # on each residual: variance ∝ predicted seconds
    c = 0.0 if fixed_c is None else fixed_c
    coef = None
    for _ in range(FIT_ROUNDS):
        shared = design * (1.0 + c * peers)[:, None]
        coef, _, rank, _ = np.linalg.lstsq(shared * weight[:, None], took * weight, rcond=None)
        if rank < design.shape[1] or coef[0] < 0:  # no intercept to be told apart, or < 0
            coef = np.concatenate([[0.0], np.linalg.lstsq(
                shared[:, 1:] * weight[:, None], took * weight, rcond=None)[0]])
        if fixed_c is not None:
            break
        alone = design @ coef  # predicted time with no peer busy
        bottom = float(np.sum((alone * peers) ** 2 / solo))
        before = c
        c = max(0.0, float(np.sum(alone * peers * (took - alone) / solo)) / bottom) \
            if bottom > 0 else 0.0
        if abs(c - before) < 1e-9:
            break
    return coef, c


@dataclass(frozen=True)
class ReplayRound:
    """What one live replay measured, fitted (:func:`replay_round`)."""

    levels: Mapping[str, float]  # kind -> worker-timed / predicted beyond fixed_us, net of sharing
    per_peer: float  # c: the slowdown each busy peer adds
    round_trip_us: float  # median wall round trip of a batch beyond its worker's timing
    lone_batches: Mapping[str, int]
    jct_mean_s: float | None
    # median wall time of a batch from the decision that placed it (its start on the
    # controller's clock, where its jobs' service counts from) to its result, beyond its
    # worker's timing; 0: not timed
    held_us: float = 0.0
    fixed_us: float = 0.0  # a lone batch's time in its worker beyond what scales with it


def replay_round(t: ReplayTiming, fixed_c: float | None = None) -> ReplayRound:
    """One replay's fit (``fixed_c``: see :func:`fit_worker_path`); a kind's level only
    where it had ``REPLAY_MIN`` lone batches."""
    fit = fit_worker_path(t.runs, fixed_c)
    return ReplayRound(
        levels={k: round(v, 4) for k, v in fit.levels.items() if fit.counts[k] >= REPLAY_MIN},
        per_peer=round(fit.per_peer, 4),
        round_trip_us=round(statistics.median(t.beyond_s) * 1e6, 3) if t.beyond_s else 0.0,
        held_us=round(statistics.median(t.held_s) * 1e6, 3) if t.held_s else 0.0,
        fixed_us=round(fit.fixed_s * 1e6, 3),
        lone_batches=fit.counts,
        jct_mean_s=t.jct_mean_s)


def combine_rounds(rounds: Sequence[ReplayRound]) -> ReplayRound:
    """Each figure's median over the replays: one replay disturbed by the machine (a
    neighbour's burst on a shared VM) moves a median of three little, a mean a lot."""
    kinds = sorted({k for r in rounds for k in r.levels})
    jcts = [r.jct_mean_s for r in rounds if r.jct_mean_s is not None]
    return ReplayRound(
        levels={k: round(statistics.median(r.levels[k] for r in rounds if k in r.levels), 4)
                for k in kinds},
        per_peer=round(statistics.median(r.per_peer for r in rounds), 4),
        round_trip_us=round(statistics.median(r.round_trip_us for r in rounds), 3),
        held_us=round(statistics.median(r.held_us for r in rounds), 3),
        fixed_us=round(statistics.median(r.fixed_us for r in rounds), 3),
        lone_batches={k: sum(r.lone_batches.get(k, 0) for r in rounds)
                      for k in sorted({k for r in rounds for k in r.lone_batches})},
        jct_mean_s=statistics.median(jcts) if jcts else None)


def worker_batch(got: ReplayRound, worker_job_us: float) -> float:
    """Microseconds a lone batch costs in its worker beyond its attention and its job's
    cost (``worker_job_us``, which the simulator charges per job on its own)."""
    return round(max(0.0, got.fixed_us - worker_job_us), 3)


def batch_call(got: ReplayRound, decision_us: float) -> float:
    """Microseconds a batch costs beyond its worker's timing, as its jobs' service counts.

    A job's service runs on the controller's clock from the decision that
    placed its batch to its result in the driver's hands. The round trip from
    the send misses the part before it (applying the decision, the journal's
    commit, serializing the jobs: 1.4–1.7 ms a batch in this VM's replays), so
    the whole interval is taken, less the decision, which the simulator
    charges on its own (``decision_us``). A replay from before the interval
    was timed (``held_us`` 0) gives its round trip.
    """
    if got.held_us <= 0:
        return got.round_trip_us
    return round(max(got.round_trip_us, got.held_us - decision_us), 3)


def sharing_curve(c: float, workers: int) -> Curve:
    """``node_sharing`` for ``workers`` workers of a node, ``c`` slower per busy peer."""
    return tuple((float(k), round(1.0 / (1.0 + c * (k - 1)), 4))
                 for k in range(1, max(2, workers) + 1))


def per_peer_slowdown(profile: DeviceProfile) -> float:
    """``c`` of the profile's ``node_sharing`` (the inverse of :func:`sharing_curve`), read
    at its most workers: ``efficiency = 1 / (1 + c · (k − 1))``."""
    k, efficiency = max(profile.node_sharing)
    return 0.0 if k <= 1 else max(0.0, (1.0 / efficiency - 1.0) / (k - 1))


def fold_scale(worker_scale: Mapping[str, Curve], levels: Mapping[str, float],
               devices: Mapping[str, float]) -> dict[str, Curve]:
    """``worker_scale`` with each kind's curve multiplied by the replay's level for it.

    The lone-job curve keeps its shape across sizes; the replay sets its level
    under a live run's conditions. A kind the lone-job fit kept no point for
    gets a flat curve at the replay's level (``devices``: a typical device time).
    """
    out = dict(worker_scale)
    for kind, level in levels.items():
        if kind in out:
            out[kind] = tuple((x, round(y * level, 4)) for x, y in out[kind])
        elif kind in devices:
            out[kind] = ((float(f"{devices[kind]:.6g}"), level),)
    return out


@dataclass(frozen=True)
class ReplayFit:
    """The profile fields the replays set (``node_sharing`` None: kept as it was)."""

    worker_scale: Mapping[str, Curve]
    worker_batch_us: float
    batch_call_us: float
    node_sharing: Curve | None


def fit_replay(profile: DeviceProfile, got: ReplayRound, typical: Mapping[str, float],
               workers: int, fixed_c: float | None = None) -> ReplayFit:
    """``profile``'s live-path fields as the replays (``got``, combined) paid them:
    ``typical`` is each kind's median device seconds in the replay, ``workers`` how many
    ran it; with ``fixed_c`` the profile's node sharing is kept."""
    return ReplayFit(
        worker_scale=fold_scale(profile.worker_scale, got.levels, typical),
        worker_batch_us=worker_batch(got, micros(profile.worker_job_s)),
        # never below an empty actor call, as the fit's intercept is not
        batch_call_us=max(micros(profile.actor_call_s),
                          batch_call(got, micros(profile.decision_s))),
        node_sharing=sharing_curve(got.per_peer, workers) if fixed_c is None else None)


def apply_replay(profile: DeviceProfile, fit: ReplayFit) -> DeviceProfile:
    return replace(profile, worker_scale=MappingProxyType(dict(fit.worker_scale)),
                   worker_batch_s=us(fit.worker_batch_us), batch_call_s=us(fit.batch_call_us),
                   node_sharing=(profile.node_sharing if fit.node_sharing is None
                                 else fit.node_sharing))


def replay_reference(jobs: int, workers: int, rounds: Sequence[ReplayRound],
                     got: ReplayRound) -> dict[str, Any]:
    """The replays' raw figures: their median (``got``) and each round's."""
    return {"jobs": jobs, "load": REPLAY_LOAD, "workers": workers, "rounds": len(rounds),
            "lone_batches": dict(got.lone_batches),
            "worker_level": dict(got.levels),
            "worker_fixed_us": got.fixed_us,
            "slowdown_per_busy_peer": got.per_peer,
            "round_trip_beyond_worker_us": got.round_trip_us,
            "held_beyond_worker_us": got.held_us,
            "jct_mean_s": got.jct_mean_s,
            "per_round": [{"worker_level": dict(r.levels),
                           "worker_fixed_us": r.fixed_us,
                           "slowdown_per_busy_peer": r.per_peer,
                           "round_trip_beyond_worker_us": r.round_trip_us,
                           "held_beyond_worker_us": r.held_us}
                          for r in rounds]}
