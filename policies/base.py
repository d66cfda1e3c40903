"""The Policy interface and the registry that finds policies by name or path.

A policy is a pure decision: ``decide(view) -> Decisions``. It reads the
frozen :class:`~scheduler.view.View` and returns actions; it performs no I/O,
reads no clock, holds no executor handle and keeps no mutable attributes
between calls (memory goes in ``Decisions.state``). The same object therefore
runs unchanged in the simulator and live.

What a spec (``module:attr``, ``file.py:attr`` or an entry point) may name is
a class with a ``decide`` method, or a function marked with
:func:`policy_factory`. Anything else is refused before it is called, so
``--policy os:system --policy-opt command=...`` runs nothing: importing the
module a user names is the only code a spec runs before the check.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from scheduler.errors import InputError
from scheduler.inputfiles import clip, shown
from scheduler.policy import API_VERSION, Policy, run_name  # a policy author's imports

ENTRY_POINT_GROUP = "attnsched.policies"
__all__ = ["API_VERSION", "Policy", "PolicyFactory", "policy_factory"]


PolicyFactory = Callable[..., Policy]
_FACTORY_MARK = "__attnsched_policy_factory__"
_F = TypeVar("_F", bound=Callable[..., Any])


def policy_factory(func: _F) -> _F:
    """Mark a plain function as one a policy spec may call to build a policy.

    A spec may name a policy class directly; a function (say, one choosing a
    class by its options) must carry this mark, so that a spec naming any
    other callable (``os:system``, ``builtins:exec``) is refused uncalled.
    """
    if not inspect.isfunction(func):
        raise TypeError("policy_factory marks Python functions; a class needs no mark")
    setattr(func, _FACTORY_MARK, True)
    return func


def _buildable(obj: Any) -> bool:
    """A policy class or a marked factory, judged without calling or instantiating it.

    Read statically (no ``__getattr__`` of the object or its metaclass runs):
    the point is to decide before any code of the target executes.
    """
    if inspect.isclass(obj):
        decide = inspect.getattr_static(obj, "decide", None)
        return callable(decide) or isinstance(decide, staticmethod | classmethod)
    return inspect.isfunction(obj) and obj.__dict__.get(_FACTORY_MARK) is True


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
    "prefix-affinity": "policies.prefix_affinity:PrefixAffinityPolicy",
}
BUILT_IN: tuple[str, ...] = tuple(_BUILTINS)  # the names shipped with attnsched


def _load_target(spec: str) -> Any:
    """Resolve ``module:Class`` or ``path/to/file.py:Class`` to the object named."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise InputError(f"expected a registered name, module:Class or path/file.py:Class, "
                         f"got {clip(spec)}", field="--policy")
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
            raise InputError(f"importing the plugin failed: {_said(e)}",
                             path=path, field="--policy") from None
    else:
        try:
            module = importlib.import_module(target)
        except (Exception, SystemExit) as e:
            raise InputError(f"cannot import module {clip(target)}: {_said(e)}",
                             field="--policy") from None
    try:
        obj = getattr(module, attr, None)
    except Exception:  # a module __getattr__ may raise anything, not just AttributeError
        obj = None
    if obj is None:
        raise InputError(f"{clip(target)} has no {clip(attr)}", field="--policy")
    return obj


def _said(e: BaseException) -> str:
    """``Type: message`` of a plugin's exception, cut where a plugin made it long."""
    return f"{type(e).__name__}: {shown(e)}"


def _plugins() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _plugin_line(ep: Any) -> str:
    """An installed plugin described from its package's metadata (its summary, the
    package and version), without importing it."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return f"plugin {ep.value}"
    summary = (dist.metadata.get("Summary") or "").strip()
    source = f"{dist.metadata.get('Name') or ep.value} {dist.version}"
    return f"{summary} (plugin from {source})" if summary else f"plugin from {source}"


def run_names(built: Mapping[str, object]) -> dict[str, str]:
    """Each spec's :func:`run_name`, from its built policy; refuses two runs of one name."""
    names = {spec: run_name(spec, policy) for spec, policy in built.items()}
    seen: dict[str, str] = {}
    for spec, name in names.items():
        if name in seen:
            raise InputError(f"{clip(seen[name])} and {clip(spec)} are both called "
                             f"{clip(name)}; a comparison needs one name per run",
                             field="--policies")
        seen[name] = spec
    return names


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
            out[name] = _plugin_line(ep)
    return out


def load_policy(spec: str, options: Mapping[str, str] | None = None) -> Policy:
    """Build the policy ``spec`` names (registered name, entry point, module or file)."""
    if spec in _BUILTINS:
        factory = _load_target(_BUILTINS[spec])
    elif spec in (plugins := _plugins()):
        try:
            factory = plugins[spec].load()
        except (Exception, SystemExit) as e:
            raise InputError(f"plugin {clip(spec)} fails to load: {_said(e)}",
                             field="--policy") from None
    elif ":" in spec:
        factory = _load_target(spec)
    else:
        raise InputError(f"unknown policy {clip(spec)}; available: {', '.join(available())}, "
                         "or module:Class or path/file.py:Class", field="--policy")
    return _instantiate(spec, factory, options or {})


def _instantiate(spec: str, factory: Any, options: Mapping[str, str]) -> Policy:
    if not _buildable(factory):
        what = ("a class without a decide(view) method" if inspect.isclass(factory) else
                f"a {type(factory).__name__}, not a policy class or a function marked "
                "@policy_factory")
        raise InputError(f"{clip(spec)} is not a policy: it is {what}; nothing was called",
                         field="--policy")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    kwargs: dict[str, Any] = {}
    for key, raw in options.items():
        param = params.get(key)
        if param is None:
            known = ", ".join(p for p in params if p != "self") or "none"
            raise InputError(f"{clip(spec)} takes no option {clip(key)}; options: {known}",
                             field="--policy-opt")
        kwargs[key] = _convert(spec, key, raw, param.default)
    try:
        policy = factory(**kwargs)
    except InputError:
        raise
    except ValueError as e:
        if not options:
            raise InputError(f"{clip(spec)} could not be built: {_said(e)}",
                             field="--policy") from None
        # A constructor refusing a value is the options' fault: say so, in its words.
        raise InputError(f"{clip(spec)} refused its options: {e}", field="--policy-opt") \
            from None
    except (Exception, SystemExit) as e:
        raise InputError(f"{clip(spec)} could not be built: {_said(e)}",
                         field="--policy") from None
    if not callable(getattr(policy, "decide", None)):
        raise InputError(f"{clip(spec)} is not a policy: it has no decide(view) method",
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
    wanted = {"bool": "true or false", "int": "an integer", "float": "a number"}
    raise InputError(f"{clip(spec)} option {clip(key)}={clip(raw)}: expected "
                     f"{wanted.get(type(default).__name__, type(default).__name__)}",
                     field="--policy-opt")


def parse_options(items: Sequence[str]) -> dict[str, str]:
    """``key=value`` strings from ``--policy-opt`` into a dict."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"expected key=value, got {clip(item)}", field="--policy-opt")
        out[key.strip()] = value.strip()
    return out
