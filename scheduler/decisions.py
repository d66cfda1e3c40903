"""What a policy may decide: small frozen values, each carrying its reason.

The controller validates every action against its own state before applying
it; an action that would over-commit a device, touch an unknown job or place
a job twice is rejected (and recorded) instead of applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias


@dataclass(frozen=True, slots=True)
class Place:
    """Start pending jobs now on ``device`` as one packed batch.

    Several attention jobs form one batch only if they share head_dim, dtype
    and causality. A cluster job needing ``k`` GPUs names ``k - 1`` more
    devices in ``gang``.
    """

    jobs: tuple[str, ...]
    device: str
    reason: str = ""
    gang: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Offload:
    """Like :class:`Place`, onto a CPU device: GPUs are saturated and the job is small."""

    jobs: tuple[str, ...]
    device: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Preempt:
    """Stop a running job; it returns to the queue with ``attempts + 1``."""

    job: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Migrate:
    """Restart a running job on another device (attention state is not checkpointed)."""

    job: str
    device: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Split:
    """Replace a pending attention job by ``parts`` jobs along ``axis`` (batch or heads).

    The parent completes when every part has; each part is scheduled on its own.
    """

    job: str
    parts: int
    axis: str = "batch"
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Defer:
    """Decide explicitly not to act on ``job`` (or on anything, when None) now."""

    job: str | None = None
    reason: str = ""


Action: TypeAlias = Place | Offload | Preempt | Migrate | Split | Defer
ACTION_TYPES = (Place, Offload, Preempt, Migrate, Split, Defer)


@dataclass(frozen=True, slots=True)
class Decisions:
    """A policy's answer: actions, plus state handed back to it on the next call.

    ``state`` is the only memory a policy keeps between calls; it must be an
    immutable value. Returning a plain sequence of actions means no state.
    """

    actions: tuple[Action, ...] = ()
    state: Any = None
