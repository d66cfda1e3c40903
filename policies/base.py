"""The Policy interface and the registry that finds policies by name or path.

A policy is a pure decision: ``decide(view) -> Decisions``. It reads the
frozen :class:`~scheduler.view.View` and returns actions; it performs no I/O,
reads no clock, holds no executor handle and keeps no mutable attributes
between calls (memory goes in ``Decisions.state``). The same object therefore
runs unchanged in the simulator and live.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from scheduler.decisions import Action, Decisions
from scheduler.errors import InputError
from scheduler.view import View

ENTRY_POINT_GROUP = "attnsched.policies"


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


PolicyFactory = Callable[..., Policy]
_BUILTINS: dict[str, str] = {
    "static": "policies.static:StaticPolicy",
    "greedy": "policies.greedy:GreedyPolicy",
    "adaptive": "policies.adaptive:AdaptivePolicy",
    "fifo": "policies.fifo:FifoPolicy",
    "sjf": "policies.sjf:SjfPolicy",
    "las": "policies.las:LasPolicy",
    "drf": "policies.drf:DrfPolicy",
    "edf": "policies.edf:EdfPolicy",
    "srtf": "policies.srtf:SrtfPolicy",
}


def _load_target(spec: str) -> Any:
    """Resolve ``module:Class`` or ``path/to/file.py:Class`` to the object named."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise InputError(f"expected a registered name, module:Class or path/file.py:Class, "
                         f"got {spec!r}", field="--policy")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise InputError("no such file", path=path, field="--policy")
        name = f"attnsched_plugin_{abs(hash(path.resolve()))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise InputError("cannot import this file", path=path, field="--policy")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:  # a plugin's sys.exit() must not end the CLI
            raise InputError(f"importing the plugin failed: {type(e).__name__}: {e}",
                             path=path, field="--policy") from None
    else:
        try:
            module = importlib.import_module(target)
        except (Exception, SystemExit) as e:
            raise InputError(f"cannot import module {target!r}: {type(e).__name__}: {e}",
                             field="--policy") from None
    try:
        obj = getattr(module, attr, None)
    except Exception:  # a module __getattr__ may raise anything, not just AttributeError
        obj = None
    if obj is None:
        raise InputError(f"{target} has no {attr!r}", field="--policy")
    return obj


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> dict[str, str]:
    """Every policy loadable by name, with its one-line description."""
    out: dict[str, str] = {}
    for name, target in _BUILTINS.items():
        cls = _load_target(target)
        out[name] = getattr(cls, "description", "")
    for name, ep in sorted(_plugins().items()):
        if name not in out:
            # Listed from its metadata, never imported: installed code runs only when a
            # user names it (a listing must not execute every plugin on the machine).
            out[name] = f"plugin {ep.value} (imported only when named)"
    return out


def load_policy(spec: str, options: Mapping[str, str] | None = None) -> Policy:
    """Build the policy ``spec`` names (registered name, entry point, module or file)."""
    if spec in _BUILTINS:
        factory = _load_target(_BUILTINS[spec])
    elif spec in (plugins := _plugins()):
        try:
            factory = plugins[spec].load()
        except (Exception, SystemExit) as e:
            raise InputError(f"plugin {spec!r} fails to load: {type(e).__name__}: {e}",
                             field="--policy") from None
    elif ":" in spec:
        factory = _load_target(spec)
    else:
        raise InputError(f"unknown policy {spec!r}; available: {', '.join(available())}, "
                         "or module:Class or path/file.py:Class", field="--policy")
    return _instantiate(spec, factory, options or {})


def _instantiate(spec: str, factory: Any, options: Mapping[str, str]) -> Policy:
    if not callable(factory):
        raise InputError(f"{spec} is not a class or factory", field="--policy")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    kwargs: dict[str, Any] = {}
    for key, raw in options.items():
        param = params.get(key)
        if param is None:
            known = ", ".join(p for p in params if p != "self") or "none"
            raise InputError(f"{spec} takes no option {key!r}; options: {known}",
                             field="--policy-opt")
        kwargs[key] = _convert(spec, key, raw, param.default)
    try:
        policy = factory(**kwargs)
    except InputError:
        raise
    except (Exception, SystemExit) as e:
        raise InputError(f"{spec} could not be built: {type(e).__name__}: {e}",
                         field="--policy") from None
    if not callable(getattr(policy, "decide", None)):
        raise InputError(f"{spec} is not a policy: it has no decide(view) method",
                         field="--policy")
    return policy  # type: ignore[no-any-return]


def _convert(spec: str, key: str, raw: str, default: Any) -> Any:
    """Options arrive as text; convert them to the type of the parameter's default."""
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
    elif isinstance(default, int | float):
        try:
            return type(default)(raw)
        except ValueError:
            pass
    else:
        return raw
    raise InputError(f"{spec} option {key}={raw!r}: expected a {type(default).__name__}",
                     field="--policy-opt")


def parse_options(items: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings from ``--policy-opt`` into a dict."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected key=value, got {item!r}", field="--policy-opt")
        out[key.strip()] = value.strip()
    return out
