"""A job's own tensors: Q, K and V in, O out, as safetensors or ``.npy`` bytes.

The layout is SDPA's: Q is ``[batch, heads, q_len, head_dim]``, K and V are
``[batch, kv_heads, kv_len, head_dim]`` (``heads`` a multiple of
``kv_heads``: grouped-query attention), all of one dtype (bf16, fp16 or
fp32). Such a job is one attention call, ``O = softmax(QKᵀ/√d)V`` (causal
unless the job says ``"causal": false``), so it is a ``prefill`` job whose
shape fields are read off the tensors.

Both formats are data only: ``.npy`` is read with pickles refused, and
safetensors cannot hold code. ``.npy`` has no bf16; bf16 travels as
safetensors.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from scheduler.errors import InputError

if TYPE_CHECKING:
    import torch

NAMES = ("q", "k", "v")
BUNDLE = "tensors"  # one safetensors file holding q, k and v
OUTPUT = "o"
NPY_MAGIC = b"\x93NUMPY"
DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
SHAPE_FIELDS = ("batch", "heads", "kv_heads", "q_len", "kv_len", "head_dim", "dtype")


def _decode(data: bytes, field: str) -> dict[str, torch.Tensor]:
    """The tensors in one uploaded part (``.npy``: one, named after the part)."""
    import numpy as np
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    if data.startswith(NPY_MAGIC):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"not a readable .npy array: {e}", field=field) from None
        if array.dtype not in (np.float16, np.float32):
            raise InputError(f".npy arrays must be float16 or float32 (bf16: send safetensors), "
                             f"got {array.dtype}", field=field)
        return {field.rpartition(".")[2]: torch.from_numpy(np.ascontiguousarray(array))}
    try:
        return dict(load(data))
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise InputError(f"neither .npy nor safetensors bytes: {e}", field=field) from None


def read(parts: Mapping[str, bytes]) -> dict[str, torch.Tensor]:
    """Q, K and V from uploaded parts: ``tensors`` (one safetensors file with q, k, v) or
    ``q``, ``k`` and ``v`` (each .npy or safetensors)."""
    if BUNDLE in parts:
        both = [n for n in NAMES if n in parts]
        if both:
            raise InputError("send either one file with q, k and v, or q, k and v apart, "
                             "not both", field=f"{BUNDLE}.{both[0]}")
        found = _decode(parts[BUNDLE], BUNDLE)
        missing = [n for n in NAMES if n not in found]
        if missing:
            raise InputError(f"missing from the file, which holds "
                             f"{', '.join(sorted(found)) or 'no tensors'}; expected q, k and v",
                             field=f"{BUNDLE}.{missing[0]}")
        return {n: found[n] for n in NAMES}
    out: dict[str, torch.Tensor] = {}
    for name in NAMES:
        if name not in parts:
            raise InputError("missing: a job's tensors are q, k and v", field=f"{BUNDLE}.{name}")
        found = _decode(parts[name], f"{BUNDLE}.{name}")
        if len(found) != 1:
            raise InputError(f"expected one tensor, got {len(found)}", field=f"{BUNDLE}.{name}")
        out[name] = next(iter(found.values()))
    return out


def shape_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The job fields the tensors fix; InputError naming the tensor at fault."""
    q, k, v = (tensors[n] for n in NAMES)
    for name, t in zip(NAMES, (q, k, v), strict=True):
        if t.dim() != 4:
            raise InputError(f"expected 4 dimensions [batch, heads, length, head_dim], got "
                             f"shape {list(t.shape)}", field=f"{BUNDLE}.{name}")
        dtype = DTYPE_NAMES.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise InputError(f"expected bf16, fp16 or fp32, got {t.dtype}",
                             field=f"{BUNDLE}.{name}")
        if t.dtype != q.dtype:
            raise InputError(f"{t.dtype} differs from q's {q.dtype}", field=f"{BUNDLE}.{name}")
    if k.shape != v.shape:
        raise InputError(f"shape {list(v.shape)} differs from k's {list(k.shape)}",
                         field=f"{BUNDLE}.v")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3]:
        raise InputError(f"batch and head_dim of k {list(k.shape)} differ from q's "
                         f"{list(q.shape)}", field=f"{BUNDLE}.k")
    return {"batch": q.shape[0], "heads": q.shape[1], "kv_heads": k.shape[1],
            "q_len": q.shape[2], "kv_len": k.shape[2], "head_dim": q.shape[3],
            "dtype": DTYPE_NAMES[str(q.dtype).removeprefix("torch.")]}


def job_record(record: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
               ) -> dict[str, Any]:
    """The job's fields with its shape read off its tensors (a field given must agree)."""
    shape = shape_of(tensors)
    for name, value in shape.items():
        if name in record and record[name] != value:
            raise InputError(f"{record[name]!r} disagrees with the tensors' {value!r}",
                             field=name)
    kind = record.get("kind", "prefill")
    if kind != "prefill":
        raise InputError("a job with tensors is one attention call: kind prefill", field="kind")
    if record.get("layers", 1) != 1 or record.get("steps", 1) != 1:
        raise InputError("a job with tensors is one attention call: 1",
                         field="layers" if record.get("layers", 1) != 1 else "steps")
    return {**record, **shape, "kind": "prefill"}


def encode(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Tensors as safetensors bytes (contiguous, on the CPU)."""
    from safetensors.torch import save

    out, seen = {}, set()
    for name, given in tensors.items():
        t = given.detach().cpu().contiguous()
        where = t.untyped_storage().data_ptr()
        # safetensors refuses tensors sharing memory (``k = v`` in a client's code): copy
        out[name] = t.clone() if where in seen else t
        seen.add(where)
    return bytes(save(out))


def as_npy(data: bytes, name: str = OUTPUT) -> bytes:
    """One tensor of a safetensors file as .npy bytes (fp16/fp32 only: .npy has no bf16)."""
    import numpy as np
    from safetensors.torch import load

    tensor = load(data)[name]
    if str(tensor.dtype) == "torch.bfloat16":
        raise InputError("bf16 has no .npy form; ask for format=safetensors", field="format")
    out = io.BytesIO()
    np.save(out, tensor.numpy(), allow_pickle=False)
    return out.getvalue()
