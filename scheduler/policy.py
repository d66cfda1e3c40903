"""The Policy protocol, with the core types it speaks in, so the controller can type it.

``policies.base`` re-exports :class:`Policy` beside the registry that finds
policies by name or path; a policy author imports it from either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from scheduler.decisions import Action, Decisions
from scheduler.view import View

# The version of the policy API (the protocol, the view and its members, the actions):
# within one version members are only added, never removed or changed in meaning.
API_VERSION = 1


class PolicyFailure(RuntimeError):
    """The policy failed too many times in a row; the run cannot go on sensibly."""


@runtime_checkable
class Policy(Protocol):
    """The one interface every policy implements.

    ``decide`` is called after every event that can change what should run:
    job arrivals, batch completions, device failures and telemetry ticks
    (``view.event`` says which). It may return any number of actions; the
    controller applies them in order, validating each against the state left
    by the ones before, and rejects (and records) any that are invalid. It
    must be deterministic given the view (use ``view.rng`` for randomness)
    and should do work proportional to what it places, not to the queue
    length: a view may hold a million pending jobs.
    """

    name: ClassVar[str]
    description: ClassVar[str]

    def decide(self, view: View) -> Decisions | Sequence[Action]: ...


def run_name(spec: str, policy: object) -> str:
    """The name a run of ``policy`` goes by in every output (summary, tables, folders,
    decision records): the policy's own ``name``, else the spec that loaded it."""
    name = getattr(policy, "name", None)
    return name if isinstance(name, str) and name else spec
