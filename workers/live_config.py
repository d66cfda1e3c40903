"""How a live run uses Ray, and what its progress bar shows."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.state import Batch


class Payloads(Protocol):
    """Where jobs that brought tensors keep them (scheduler.serve.payloads)."""

    def inputs(self, job_ids: Iterable[str]) -> dict[str, bytes]: ...

    def save_outputs(self, outputs: Mapping[str, bytes]) -> None: ...

PROGRESS_EVERY = 0.2  # seconds of wall time between progress reports


@dataclass(frozen=True, slots=True)
class LiveProgress:
    """What a live run's progress bar shows; sent at most every ``PROGRESS_EVERY`` s."""

    done: int  # jobs finished, completed or failed
    failed: int
    clock: float  # trace seconds
    rate: float  # jobs finished per wall-clock second since the run began
    util: float | None  # mean over devices of each one's latest telemetry sample
    queued: int = 0  # jobs waiting in the controller
    # device -> (latest utilization or None, jobs running there, worker up)
    devices: Mapping[str, tuple[float | None, int, bool]] = field(default_factory=dict)


@dataclass
class LiveConfig:
    """How a live run uses Ray. ``memory_fraction`` scales every device's memory.

    The scaled memory is both what the controller plans with and the budget
    each worker enforces, so a policy never packs past it; the headroom is for
    what the cost model does not see (allocator slack, the CUDA context).
    """

    address: str | None = None
    emulate_gpus: int = 0
    cpu_workers: int = 0
    num_cpus: int | None = None
    speed: float = 1.0
    telemetry_interval: float = 1.0
    seed: int = 0
    memory_fraction: float = 0.9
    slow: Mapping[str, float] = field(default_factory=dict)  # test knob: device -> factor
    # Test knob: device -> bytes its worker enforces instead of the planned memory, as a
    # device smaller than the cluster spec says would (a MIG slice).
    worker_budget: Mapping[str, int] = field(default_factory=dict)
    progress: Callable[[LiveProgress], None] | None = None
    # Profile name -> file: time the devices with a calibrated profile instead of
    # the shipped one (e.g. ``{"cpu": "profile.json"}``).
    profiles: Mapping[str, str] = field(default_factory=dict)
    # Continue the run journalled in the output folder instead of starting afresh.
    resume: bool = False
    # Start afresh even over an unfinished run's journal (deleting it).
    overwrite: bool = False
    # (policy, name) to switch to when the policy fails repeatedly; None: stop the run.
    fallback: tuple[Any, str] | None = None
    # Wall seconds a policy's decide() may take before it counts as a failure.
    decide_timeout: float | None = 10.0
    # Port of the local Ray's Prometheus endpoint (attnsched's metrics); None: Ray picks.
    metrics_port: int | None = None
    # Called with each batch that ran, the seconds its worker timed it, the wall seconds
    # from sending it to its result, and the wall seconds from its start on the
    # controller's clock (the decision that placed it) to its result: how calibration
    # sees what a live run's workers and round trips really cost
    # (workers/calibrate_live.py).
    on_batch: Callable[[Batch, float, float, float], None] | None = None
    # Jobs' own tensors (``attnsched serve``): inputs sent with their batch, outputs kept.
    payloads: Payloads | None = None
