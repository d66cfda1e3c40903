"""What the controller reports: one frozen record per decision, and where records go.

Every action a policy returns is recorded applied or rejected (a rejection
with a :class:`RejectCode` and its reason in words), every policy error and
every change the controller observed on its own (a device lost or back, an
out-of-memory lesson, a fallback). Consumers read the code, never the text:
the text names jobs and devices and is meant for people.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from scheduler.state import JobRecord


class RejectCode(str, Enum):
    JOB_NOT_QUEUED = "job_not_queued"  # unknown, running, finished or blocked
    JOB_NOT_RUNNING = "job_not_running"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_DOWN = "device_down"
    DEVICE_BUSY = "device_busy"  # no free slot or compute share
    MEMORY = "memory"  # the device has too little memory free
    HOST = "host"  # the node has too few CPUs or too little host memory free
    NO_PROFILE = "no_profile"  # no profile times these jobs on the device
    BAD_BATCH = "bad_batch"  # repeated ids, or jobs that cannot share a batch
    BAD_GANG = "bad_gang"
    BAD_SPLIT = "bad_split"
    BAD_TARGET = "bad_target"  # wrong kind of device, or already there
    CANNOT_PREEMPT = "cannot_preempt"  # live workers run a batch to its end


class Rejected(Exception):
    """An action failed validation; ``str()`` is the reason recorded."""

    def __init__(self, code: RejectCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    """One line of decisions.jsonl.

    ``action`` is the action's type (``place``, ``defer``...) or what the
    controller did itself (``error``, ``fallback``, ``oom``, ``device_down``,
    ``device_up``); ``reason`` is the policy's own words (policy actions
    only), ``why`` the controller's.
    """

    t: float
    policy: str
    action: str
    outcome: str  # applied | rejected | error | switched | learned | observed
    jobs: tuple[str | None, ...] | None = None
    device: str | None = None
    reason: str | None = None
    why: str | None = None
    code: RejectCode | None = None
    by_policy: bool = False  # an action the policy returned: its reason is always written

    def row(self) -> dict[str, Any]:
        """The JSON object written for it (absent fields left out, in a fixed order)."""
        row: dict[str, Any] = {"t": self.t, "policy": self.policy, "action": self.action,
                               "outcome": self.outcome}
        if self.jobs is not None:
            row["jobs"] = list(self.jobs)
        if self.device is not None:
            row["device"] = self.device
        if self.by_policy:
            row["reason"] = self.reason
        if self.why is not None:
            row["why"] = self.why
        if self.code is not None:
            row["code"] = self.code.value
        return row


class Sink:
    """Where the controller reports what happened; the default keeps nothing."""

    def job_finished(self, record: JobRecord) -> None:
        """Called exactly once per job, when it is done or failed."""

    def decision(self, record: DecisionRecord) -> None:
        """Called for every action, applied or rejected, and every policy error."""


class Fanout(Sink):
    """Several sinks as one, each told everything in turn."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def job_finished(self, record: JobRecord) -> None:
        for sink in self.sinks:
            sink.job_finished(record)

    def decision(self, record: DecisionRecord) -> None:
        for sink in self.sinks:
            sink.decision(record)
