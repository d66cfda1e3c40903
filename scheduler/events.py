"""What executors report to the run loop, as typed values instead of strings.

An executor (simulated devices or Ray workers) turns what happens on its
devices into these events; the loop hands each to the controller. A failed
batch carries a :class:`Failure` whose code decides what the controller does
(an out-of-memory failure also shrinks what it plans with on that device),
so no component parses another's error text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from scheduler.view import Telemetry


class FailureCode(str, Enum):
    OUT_OF_MEMORY = "out_of_memory"  # the batch did not fit the device's memory
    ERROR = "error"  # the kernel raised (bad shapes, a runtime error)
    WORKER = "worker"  # the worker process failed the call (not the batch's fault)
    CANCELLED = "cancelled"  # stopped between launches, as asked (ray.cancel)


@dataclass(frozen=True, slots=True)
class Failure:
    code: FailureCode
    detail: str  # the reason recorded for the jobs (one line)

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True, slots=True)
class BatchDone:
    """A batch ended: ran to completion (``failure`` None) or failed on its device.

    ``cached``: tokens of each prefill's prompt its worker took from its KV cache,
    when the executor measured them (live); None where the controller's plan stands.
    """

    batch: str
    failure: Failure | None = None
    cached: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class DeviceDown:
    device: str
    reason: str


@dataclass(frozen=True, slots=True)
class NodeDown:
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class DeviceUp:
    """A device is back (its worker restarted)."""

    device: str


@dataclass(frozen=True, slots=True)
class Samples:
    """Telemetry that reached the controller (live: a worker's answer to a probe)."""

    samples: tuple[Telemetry, ...]


Event = BatchDone | DeviceDown | NodeDown | DeviceUp | Samples


@dataclass
class RunResult:
    """What a run (simulated or live) ends with; the same files went to its folder."""

    summary: dict[str, Any]
    run_info: dict[str, Any]
    exit_code: int  # 0 ok, 1 the run stopped early (policy failure, jobs left unplaced)
    message: str | None = None
