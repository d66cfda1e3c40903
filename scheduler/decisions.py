"""What a policy may decide: small frozen values, each carrying its reason.

The controller validates every action against its own state before applying
it; an action that would over-commit a device, touch an unknown job or place
a job twice is rejected (and recorded) instead of applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
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


def wrong_field(action: Action) -> str | None:
    """Which field of ``action`` has the wrong type, if any.

    Actions are plain dataclasses, so a plugin can put anything in them; a
    list for a job id or a float for ``parts`` must be refused before it
    reaches a dict, a set or the decision log.
    """
    for f in fields(action):
        value = getattr(action, f.name)
        if f.name in ("jobs", "gang"):
            ok = isinstance(value, tuple | list) and all(isinstance(v, str) for v in value)
        elif f.name == "parts":
            ok = type(value) is int
        else:
            ok = isinstance(value, str) or (value is None and isinstance(action, Defer))
        if not ok:
            kind = "int" if f.name == "parts" else "tuple or list of str" if f.name in (
                "jobs", "gang") else "str"
            return f"{f.name} is not a {kind}"
    return None


def unpack(answer: object, state: Any) -> tuple[Sequence[Action], Any]:
    """A policy's answer as (actions, its new state); TypeError for anything else."""
    actions: Sequence[Action]
    if isinstance(answer, Decisions):
        actions, state = answer.actions, answer.state
    elif isinstance(answer, list | tuple):
        actions = answer
    else:
        raise TypeError(f"decide() returned {type(answer).__name__}, expected Decisions "
                        "or a list of actions")
    for a in actions:
        if not isinstance(a, ACTION_TYPES):
            raise TypeError(f"decide() returned {a!r}, which is not an action")
        wrong = wrong_field(a)
        if wrong is not None:
            raise TypeError(f"decide() returned {a!r}, whose {wrong}")
    return actions, state
