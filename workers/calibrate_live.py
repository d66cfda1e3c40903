"""The live replays calibration ends with, and ``attnsched fidelity --retime``'s re-timing.

The grid and the lone-job fit time one worker on a quiet node, each shape run
again and again. A live run is not that: its workers compute side by side
while the driver decides, journals and sends, and every prompt has its own
length. A short replay through the real live path (``run_live`` with the
static policy, so every batch is one job, on emulated GPUs as a local run
uses) measures the difference: each lone batch's worker-timed seconds against
the profile's prediction for the same job, and every batch's wall time beyond
its worker's timing. The fit is :mod:`scheduler.calibration.replay_fit`.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from scheduler import costmodel
from scheduler.calibration.figures import ReplayTiming, Run
from scheduler.calibration.plan import REPLAY_JOBS, REPLAY_ROUNDS, ReplayPlan, Tick, no_tick
from scheduler.calibration.replay_fit import (
    REPLAY_LOAD,
    ReplayFit,
    apply_replay,
    combine_rounds,
    fit_replay,
    per_peer_slowdown,
    replay_reference,
    replay_round,
)
from scheduler.jobs import AttentionJob
from scheduler.profile_json import OPTIONAL, profile_to_dict
from scheduler.profiles import DeviceProfile, profile_from_dict

REPLAY_SEED = 7919  # the replay's own jobs: not a trace anyone evaluates on


def replay_jobs(plan: ReplayPlan, profile: DeviceProfile) -> list[AttentionJob]:
    """``plan.jobs`` tiny-preset jobs (the mix a CPU worker is given), arriving at
    ``REPLAY_LOAD`` of ``plan.workers`` workers as the profile prices them."""
    from scheduler.presets import get_preset
    from scheduler.traces.synth import SynthSpec, generate

    jobs = list(generate(SynthSpec(jobs=plan.jobs, seed=REPLAY_SEED, rate=1.0),
                         get_preset("tiny")))
    per_batch = (profile.batch_call_s + profile.decision_s + profile.worker_job_s
                 + profile.worker_batch_s)
    mean_s = statistics.fmean(costmodel.estimate(j, profile).seconds + per_batch for j in jobs)
    rate = REPLAY_LOAD * plan.workers / mean_s  # jobs per second
    return [replace(j, submit_time=j.submit_time / rate) for j in jobs]


def replay_once(jobs: Sequence[AttentionJob], profile: DeviceProfile, session: Any,
                profile_name: str = "cpu") -> ReplayTiming:
    """Replay ``jobs`` with the static policy on ``session``'s workers, their devices
    (profile ``profile_name``) timed by ``profile``."""
    from policies.base import load_policy
    from workers.executor import LiveConfig, run_live

    kinds = {j.id: costmodel.scale_kind(j) for j in jobs}
    runs: list[Run] = []
    beyond: list[float] = []
    held_beyond: list[float] = []

    def record(batch: Any, seconds: float, round_trip: float, held: float) -> None:
        beyond.append(max(0.0, round_trip - seconds))
        held_beyond.append(max(0.0, held - seconds))
        if len(batch.jobs) == 1 and batch.solo_seconds > 0:
            end = time.perf_counter()
            runs.append((kinds[batch.jobs[0]], batch.device, end - seconds, end,
                         batch.solo_seconds))

    with tempfile.TemporaryDirectory(prefix="attnsched-replay-") as tmp:
        path = Path(tmp) / "profile.json"
        path.write_text(json.dumps(profile_to_dict(profile)))
        config = LiveConfig(speed=1.0, profiles={profile_name: str(path)}, on_batch=record,
                            decide_timeout=None)
        # A run folder as a real run has: the journal and outputs cost the driver time.
        result = run_live(list(jobs), load_policy("static"), "static", Path(tmp) / "run",
                          config, session=session)
    if result.exit_code != 0:
        raise RuntimeError(f"the calibration replay failed: {result.message}")
    return ReplayTiming(tuple(runs), tuple(beyond), tuple(held_beyond),
                        result.summary.get("jct_mean"))


def replay_rounds(plan: ReplayPlan, jobs: Sequence[AttentionJob], profile: DeviceProfile,
                  tick: Tick, session: Any = None, profile_name: str = "cpu"
                  ) -> tuple[list[ReplayTiming], int]:
    """``plan.rounds`` replays back to back, and how many workers ran them. With
    ``session`` on its workers; without, on a session (and a Ray) opened for them."""
    import ray

    from workers.executor import LiveConfig, close_session, open_session

    started = not ray.is_initialized()
    own = session is None
    if own:
        session = open_session(LiveConfig(emulate_gpus=plan.workers))
    try:
        timings = []
        for i in range(plan.rounds):
            tick("live replay" if plan.rounds <= 1 else f"live replay {i + 1}/{plan.rounds}")
            timings.append(replay_once(jobs, profile, session, profile_name))
    finally:
        if own:
            close_session(session)
            if started:
                ray.shutdown()
    return timings, len(session.workers)


def replay_fit(plan: ReplayPlan, profile: DeviceProfile, tick: Tick = no_tick,
               session: Any = None, profile_name: str = "cpu", fixed_c: float | None = None
               ) -> tuple[ReplayFit, dict[str, Any]]:
    """The profile's live-path fields as a live run pays them, and the raw figures.

    ``worker_scale`` set to what the run's workers took over what ``profile``
    predicts, per kind, beyond ``worker_batch_us``, what a lone batch took in
    its worker whatever its size; ``node_sharing`` as the workers slowed each
    other; and ``batch_call_us``, the median wall time of a batch beyond its
    worker's own timing, from the decision that placed it to its result in the
    driver's hands (applying the decision, sending, the result's way back, the
    driver's loop noticing it), which the Ray-path fit measures on an idle
    driver. ``plan.rounds`` replays run back to back and each figure is their
    median: one replay's levels move by 5–10% from the next on a shared VM.

    With ``session`` the replay runs on those workers (``attnsched fidelity``
    re-times a profile on its own session); without, it opens one. With
    ``fixed_c`` the profile's node sharing is kept and the levels are taken
    net of it.
    """
    jobs = replay_jobs(plan, profile)
    sizes: dict[str, list[float]] = {}
    for job in jobs:
        sizes.setdefault(costmodel.scale_kind(job), []).append(
            costmodel.device_seconds(job, profile))
    timings, workers = replay_rounds(plan, jobs, profile, tick, session, profile_name)
    rounds = [replay_round(t, fixed_c) for t in timings]
    got = combine_rounds(rounds)
    typical = {kind: statistics.median(v) for kind, v in sizes.items()}
    return (fit_replay(profile, got, typical, workers, fixed_c),
            replay_reference(len(jobs), workers, rounds, got))


def can_retime(data: Any) -> bool:
    """Whether ``data`` (a profile's JSON) was calibrated with a live replay to re-time."""
    return isinstance(data, dict) and "live_replay" in (data.get("reference") or {})


RETIMED = ("worker_scale", "worker_batch_us", "batch_call_us", "source")


def retimed(data: Mapping[str, Any], session: Any, profile_name: str = "cpu", *,
            jobs: int = REPLAY_JOBS, rounds: int = REPLAY_ROUNDS) -> dict[str, Any]:
    """``data`` with its live-path levels and round trip re-timed now on ``session``'s
    workers (``rounds`` replays of ``jobs`` jobs: calibration's by default).

    A profile describes the machine when it was calibrated; a shared VM's speed
    drifts by 10–20% over hours, which at a queueing load moves mean JCT by
    more than a simulator's own error. The replays calibration ends with, run
    against the profile as it is, measure how far the workers have moved from
    it (levels of 1 and the profile's fixed cost: nothing moved) and that is
    folded in. Node sharing is kept: one replay's fitted slowdown moved between
    0.06 and 0.24 per busy peer, and the simulator's mean JCT more than doubles
    across that range, so it stays the calibration's median. The replay's jobs
    are its own (``REPLAY_SEED``), never the trace being evaluated. The
    profile's other fields, and the keys it leaves out, are kept as they were.
    """
    profile = profile_from_dict(data)
    plan = ReplayPlan(jobs=jobs, rounds=rounds, workers=max(1, len(session.workers)))
    fit, reference = replay_fit(plan, profile, no_tick, session, profile_name,
                                fixed_c=per_peer_slowdown(profile))
    when = time.strftime("%Y-%m-%d %H:%M")
    new = replace(apply_replay(profile, fit),
                  source=f"{data.get('source', '')}; live path re-timed {when}")
    omit = [k for k in OPTIONAL if k not in data and k not in RETIMED and k != "reference"]
    return profile_to_dict(new, {**data.get("reference", {}), "retimed": reference}, omit)
