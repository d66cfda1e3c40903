"""A device profile's JSON form (``attnsched-profile/1``): its schema, the checks a parsed
file passes before a :class:`~scheduler.profiles.DeviceProfile` is built from it, and the
writer that turns a profile back into that form.

The file counts time in the units it was measured in (microseconds, nanoseconds per
element) where the profile counts seconds; :func:`micros` and :func:`nanos` give back the
number a file holds for a profile's seconds, so a profile read and written again keeps its
figures.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler.errors import InputError
from scheduler.inputfiles import MAX_ECHO, clip
from scheduler.jobs import DType

if TYPE_CHECKING:
    from scheduler.profiles import DeviceProfile

FORMAT = "attnsched-profile/1"
BACKENDS = ("cudnn", "flash", "efficient", "math")
SCALE_KINDS = ("prefill", "decode", "train")  # how worker_scale groups jobs
_POS = {"type": "number", "exclusiveMinimum": 0, "maximum": 1e18}
_NONNEG = {"type": "number", "minimum": 0, "maximum": 1e6}
_DTYPE = {"enum": [d.value for d in DType]}
_INT = {"type": "integer", "minimum": 1, "maximum": 1 << 24}
_SHARING = {"type": "array", "minItems": 1, "items": {
    "type": "array", "prefixItems": [{"type": "number", "minimum": 1, "maximum": 1e4},
                                     {"type": "number", "exclusiveMinimum": 0, "maximum": 1}],
    "minItems": 2, "maxItems": 2}}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["format", "name", "kind", "device", "memory_bytes", "bandwidth_gb_s", "sdpa"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": FORMAT},
        "name": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_.-]*$"},
        "kind": {"enum": ["gpu", "cpu"]},
        "device": {"type": "string"},
        "matches": {"type": "array", "items": {"type": "string"}},
        "source": {"type": "string"},
        "memory_bytes": {"type": "integer", "minimum": 1, "maximum": 1 << 50},
        "bandwidth_gb_s": _POS,
        "matmul_tflops": {"type": "object", "propertyNames": _DTYPE,
                          "additionalProperties": _POS},
        "dtype_aliases": {"type": "object", "propertyNames": _DTYPE,
                          "additionalProperties": _DTYPE},
        "dtype_extrapolations": {"type": "object", "propertyNames": _DTYPE,
                                 "additionalProperties": {
                                     "type": "object", "required": ["from", "factor", "basis"],
                                     "additionalProperties": False,
                                     "properties": {"from": _DTYPE,
                                                    "factor": {"type": "number",
                                                               "exclusiveMinimum": 0,
                                                               "maximum": 1000},
                                                    "basis": {"type": "string",
                                                              "minLength": 1}}}},
        "call_host_us": _NONNEG,
        "unpacked_job_host_us": {"type": "array", "items": {
            "type": "array", "prefixItems": [_POS, _NONNEG], "minItems": 2, "maxItems": 2}},
        "actor_call_us": _NONNEG,
        "task_us": {"type": "number", "minimum": 0, "maximum": 1e9},
        "sharing": _SHARING,
        "node_sharing": _SHARING,
        "decode_mask_call_us": _NONNEG,
        "decode_mask_score_ns": _NONNEG,
        "decode_step_us": _NONNEG,
        "decode_element_ns": _NONNEG,
        "decode_dtype": _DTYPE,
        "worker_job_us": _NONNEG,
        "worker_scale": {"type": "object", "propertyNames": {"enum": list(SCALE_KINDS)},
                         "additionalProperties": {"type": "array", "minItems": 1, "items": {
                             "type": "array", "prefixItems": [
                                 _POS, {"type": "number", "exclusiveMinimum": 0,
                                        "maximum": 1000}],
                             "minItems": 2, "maxItems": 2}}},
        "batch_call_us": _NONNEG,
        "worker_batch_us": _NONNEG,
        "telemetry_us": _NONNEG,
        "decision_us": _NONNEG,
        "backward_factor": {"type": "number", "minimum": 0, "maximum": 100},
        "sdpa": {"type": "array", "minItems": 1, "items": {
            "type": "object",
            "required": ["backend", "dtype", "head_dim", "causal", "batch", "heads", "q_len",
                         "kv_len", "tflops"],
            "additionalProperties": False,
            "properties": {
                "backend": {"enum": list(BACKENDS)}, "dtype": _DTYPE, "causal": {"type": "boolean"},
                "head_dim": _INT, "batch": _INT, "heads": _INT, "q_len": _INT, "kv_len": _INT,
                "tflops": {"type": "number", "exclusiveMinimum": 0, "maximum": 1e5},
            }}},
        "reference": {"type": "object"},
    },
}
OPTIONAL = tuple(k for k in SCHEMA["properties"] if k not in SCHEMA["required"])


def _non_finite(data: Any) -> tuple[str, ...] | None:
    """Key path of a NaN or infinity: JSON Schema's bounds do not catch NaN."""
    stack: list[tuple[tuple[str, ...], Any]] = [((), data)]
    while stack:  # iterative: a deeply nested "reference" must not overflow the stack
        keys, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return keys
        if isinstance(value, dict):
            stack += [((*keys, str(k)), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [((*keys, str(i)), v) for i, v in enumerate(value)]
    return None


def schema_message(error: Any) -> str:
    """A jsonschema error's message, which reprs the whole failing value, only when
    that is short; else the value clipped and the rule it breaks (cluster files too)."""
    message = str(error.message)
    if len(message) <= 2 * MAX_ECHO:
        return message
    return (f"{clip(error.instance)} fails the schema's {error.validator} rule "
            f"({clip(error.validator_value)})")


def _field(key: str) -> str:
    return key if len(key) <= MAX_ECHO else clip(key)


def check_profile_json(data: Any, path: str | Path | None = None) -> None:
    """Raise InputError naming the key path at fault unless ``data`` is a valid profile."""
    import jsonschema  # deferred: only profile loading needs it

    bad = _non_finite(data)
    if bad is not None:
        raise InputError("expected a finite number, got NaN or infinity", path=path,
                         field=_field(".".join(bad) or "(top level)"))
    validator = jsonschema.Draft202012Validator(SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise InputError(schema_message(error), path=path, field=_field(key))
    measured = {p["dtype"] for p in data["sdpa"]}
    for alias, target in data.get("dtype_aliases", {}).items():
        if target not in measured:
            raise InputError(f"{alias} is aliased to {target}, which has no points",
                             path=path, field=f"dtype_aliases.{alias}")
    for guess, rule in data.get("dtype_extrapolations", {}).items():
        if rule["from"] not in measured:
            raise InputError(f"{guess} is extrapolated from {rule['from']}, which has no points",
                             path=path, field=f"dtype_extrapolations.{guess}.from")
        if guess in measured or guess in data.get("dtype_aliases", {}):
            raise InputError(f"{guess} has points or an alias already; drop its extrapolation",
                             path=path, field=f"dtype_extrapolations.{guess}")
    for kind, curve in data.get("worker_scale", {}).items():
        xs = sorted(float(x) for x, _ in curve)
        if len(set(xs)) != len(xs):
            raise InputError("two points at the same device seconds", path=path,
                             field=f"worker_scale.{kind}")


def micros(seconds: float) -> float:
    """The microseconds a profile file holds for ``seconds`` read from it (``x * 1e-6``
    undone to the digits written: 15 significant ones)."""
    return float(f"{seconds * 1e6:.15g}")


def nanos(seconds: float) -> float:
    return float(f"{seconds * 1e9:.15g}")


def counts_json(curve: Sequence[tuple[float, float]]) -> list[list[float]]:
    """A ``(count, value)`` curve (workers, sequence length) as written: whole counts as
    integers."""
    return [[int(k) if float(k).is_integer() else k, v] for k, v in curve]


def scale_json(scale: Mapping[str, Sequence[tuple[float, float]]]) -> dict[str, list[list[float]]]:
    return {kind: [[x, r] for x, r in curve] for kind, curve in scale.items()}


def profile_to_dict(profile: DeviceProfile, reference: Mapping[str, Any] | None = None,
                    omit: Collection[str] = ()) -> dict[str, Any]:
    """``profile`` as its JSON form: what :func:`scheduler.profiles.profile_from_dict` reads
    back to an equal profile. ``omit``: optional keys to leave out (figures not measured,
    whose defaults the reader fills in); ``reference``: the raw figures kept beside them."""
    p = profile
    data: dict[str, Any] = {
        "format": FORMAT, "name": p.name, "kind": p.kind, "device": p.device,
        "matches": list(p.matches), "source": p.source, "memory_bytes": p.memory_bytes,
        "bandwidth_gb_s": float(f"{p.bandwidth_bytes_s / 1e9:.15g}"),
        "matmul_tflops": {d.value: r for d, r in p.matmul_tflops.items()},
        "dtype_aliases": {d.value: t.value for d, t in p.dtype_aliases.items()},
        "dtype_extrapolations": {d.value: {"from": e.source.value, "factor": e.factor,
                                           "basis": e.basis}
                                 for d, e in p.dtype_extrapolations.items()},
        "call_host_us": micros(p.call_host_s),
        "unpacked_job_host_us": counts_json([(s, micros(t)) for s, t in p.unpacked_job_host_s]),
        "decode_step_us": micros(p.decode_step_s),
        "decode_element_ns": nanos(p.decode_element_s),
        "decode_dtype": p.decode_dtype.value if p.decode_dtype is not None else None,
        "decode_mask_call_us": micros(p.decode_mask_call_s),
        "decode_mask_score_ns": nanos(p.decode_mask_score_s),
        "sharing": counts_json(p.sharing), "backward_factor": p.backward_factor,
        "sdpa": [{"backend": s.backend, "dtype": s.dtype.value, "head_dim": s.head_dim,
                  "causal": s.causal, "batch": s.batch, "heads": s.heads, "q_len": s.q_len,
                  "kv_len": s.kv_len, "tflops": s.tflops} for s in p.sdpa],
        "reference": dict(reference) if reference is not None else None,
        "decision_us": micros(p.decision_s), "worker_job_us": micros(p.worker_job_s),
        "worker_scale": scale_json(p.worker_scale),
        "actor_call_us": micros(p.actor_call_s), "task_us": micros(p.task_s),
        "batch_call_us": micros(p.batch_call_s), "telemetry_us": micros(p.telemetry_s),
        "node_sharing": counts_json(p.node_sharing),
        "worker_batch_us": micros(p.worker_batch_s),
    }
    unknown = set(omit) - set(OPTIONAL)
    if unknown:
        raise ValueError(f"only optional keys can be left out, not {sorted(unknown)}")
    return {k: v for k, v in data.items() if v is not None and k not in omit}
