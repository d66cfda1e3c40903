"""Live runs from their options: checked before Ray starts, then replayed on the workers.

``attnsched run``, ``compare --mode live``, ``fidelity`` and the Python API's
``run`` build their live configs here; the CLI adds only its progress bars,
tables and exit codes. The live stack (``workers``: Ray, torch) loads only
inside functions, so importing this module stays cheap and works without it
(STYLE.md rule 5).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler.cluster_ray import cpu_worker_count
from scheduler.errors import InputError
from scheduler.inputfiles import clip
from scheduler.jobs import Job
from scheduler.policy import run_name
from scheduler.run_options import parse_profiles, parse_slow
from scheduler.runs import MIN_TELEMETRY_S, RunSpec, bounded, check_options, check_seed, trace_jobs

if TYPE_CHECKING:
    from scheduler.sim.runner import RunResult
    from workers.executor import LiveConfig

MAX_DECIDE_TIMEOUT = 3600.0  # seconds; longer is no limit at all, and overflows timers


def live_config(*, address: str | None, emulate_gpus: int, cpu_workers: int, speed: float,
                memory_fraction: float, telemetry_interval: float, seed: int,
                slow: Mapping[str, float], profiles: Mapping[str, str] | None = None,
                decide_timeout: float | None = None) -> LiveConfig:
    """Check the live options before anything starts; the config a run needs."""
    bounded("--speed", speed, 1e-3, 1e6)
    bounded("--memory-fraction", memory_fraction, 0.01, 1)
    bounded("--telemetry-interval", telemetry_interval, MIN_TELEMETRY_S, 3600, unit=" seconds")
    check_seed(seed)
    if decide_timeout is not None:
        bounded("--decide-timeout", decide_timeout, 0, MAX_DECIDE_TIMEOUT, unit=" seconds")
    if address and emulate_gpus:
        raise InputError("--emulate-gpus declares slots on a local Ray; a cluster declares "
                         "its own GPUs", field="--emulate-gpus")
    if slow and not address:
        check_slow_devices(slow, local_devices(emulate_gpus, cpu_workers))
    from workers.executor import LiveConfig

    config = LiveConfig(address=address, emulate_gpus=emulate_gpus, cpu_workers=cpu_workers,
                        speed=speed, telemetry_interval=telemetry_interval, seed=seed,
                        memory_fraction=memory_fraction, slow=dict(slow),
                        profiles=dict(profiles or {}))
    if decide_timeout is not None:
        config.decide_timeout = decide_timeout or None  # 0: no limit
    return config


def local_devices(emulate_gpus: int, cpu_workers: int) -> list[str]:
    """The devices a local Ray will have, named as ``scheduler.cluster.from_ray_nodes`` and
    ``for_live_run`` name them: one node, ``head``; a device per (declared) GPU, else its
    CPU, split as ``scheduler.cluster_ray.cpu_worker_count`` says."""
    gpus = emulate_gpus or _cuda_devices()
    if gpus:
        return [f"head/gpu{i}" for i in range(gpus)]
    count = cpu_worker_count(os.cpu_count() or 1, cpu_workers)
    return [f"head/cpu{i}" for i in range(count)] if count > 1 else ["head/cpu"]


def check_slow_devices(slow: Mapping[str, float], devices: list[str]) -> None:
    """``--slow`` names devices that will exist: a typo must not slow nothing, silently."""
    for device in slow:
        if device not in devices:
            sample = ", ".join(devices[:4]) + (", ..." if len(devices) > 4 else "")
            raise InputError(f"no device {clip(device)} in this live run; its devices: "
                             f"{sample}", field="--slow")


def _cuda_devices() -> int:
    import torch  # the live stack, loaded only for a local live run's checks

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def live_setup(trace: Path, policy: str, *, policy_opt: list[str], address: str | None,
               model: str | None, limit: int | None, seed: int, speed: float,
               emulate_gpus: int, cpu_workers: int, memory_fraction: float,
               telemetry_interval: float, slow: list[str], profile: list[str],
               out: Path | None, resume: Path | None, fallback_policy: str | None,
               decide_timeout: float, metrics_port: int | None = None,
               built: Any = None, overwrite: bool = False) -> tuple[RunSpec, Any, LiveConfig]:
    """Check ``run``'s options, in their command-line forms, before anything starts.

    Returns the run, the built policy (``built`` when the caller has one) and the
    live config; the Python API's ``run`` goes through here too.
    """
    from policies.base import load_policy, parse_options

    if resume is not None:
        if overwrite:
            raise InputError("--resume continues the run in its folder and --overwrite "
                             "replaces it; give one", field="--overwrite")
        if out is not None and out.resolve() != resume.resolve():
            raise InputError(f"--out {out} and --resume {resume} name different folders",
                             field="--resume")
        out = resume

    config = live_config(address=address, emulate_gpus=emulate_gpus, cpu_workers=cpu_workers,
                         speed=speed, memory_fraction=memory_fraction,
                         telemetry_interval=telemetry_interval, seed=seed,
                         slow=parse_slow(slow), profiles=parse_profiles(profile),
                         decide_timeout=decide_timeout)
    options = parse_options(policy_opt)
    if built is None:
        built = load_policy(policy, options)
    if metrics_port is not None and address:
        raise InputError("a cluster's nodes serve metrics on their own ports (see run.json)",
                         field="--metrics-port")
    config.metrics_port = metrics_port
    config.resume = resume is not None
    config.overwrite = overwrite
    if fallback_policy is not None:
        config.fallback = (load_policy(fallback_policy), fallback_policy)
    spec = RunSpec(trace=trace, policy=policy, policy_options=options, model=model,
                   limit=limit, seed=seed, telemetry_interval=telemetry_interval, out=out)
    check_options(spec)
    return spec, built, config


def live_run(spec: RunSpec, policy: Any, config: LiveConfig, report: bool = True,
             jobs: Iterable[Job] | None = None) -> RunResult:
    """Replay ``spec``'s trace live with a built policy: ``attnsched run`` and the API's ``run``.

    Writes the run's outputs when ``spec.out`` is set, and its report too with ``report``.
    ``jobs``: the trace's jobs when the caller has read them already.
    """
    from workers.executor import run_identity, run_live

    name = run_name(spec.policy, policy)
    identity = run_identity(spec, config, name) if spec.out is not None else None
    result = run_live(trace_jobs(spec) if jobs is None else jobs, policy, name, spec.out, config,
                      {"trace": str(spec.trace)}, identity=identity)
    if spec.out is not None and report:
        from scheduler.report import write_report

        write_report(spec.out)
    return result
