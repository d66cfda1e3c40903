"""Attention kernels: one job's shape, or many packed into one call, on one device.

Every path goes through ``torch.nn.functional.scaled_dot_product_attention``
with an explicitly chosen backend, so a run can record which kernel ran. The
plain formula ``softmax(QKᵀ/√d)V`` (:func:`reference_attention`) is the oracle
every path is tested against.

Causal masks are aligned bottom-right (query ``i`` of ``q`` sees keys up to
``kv − q + i``): for square attention that is the usual triangle, and a
decode query sees the whole cache. This is what the cost model prices.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from scheduler.packing import RULES, PackRule, rule_for

__all__ = [  # RULES and PackRule live in scheduler.packing; callers and docs say kernels.RULES
    "BACKENDS", "DTYPES", "METHODS", "NESTED_PREFERENCE", "PREFERENCE", "RULES", "PackChoice",
    "PackRule", "Packed", "attention", "causal_mask", "choose_packing", "decode", "decode_many",
    "nested_attention", "nested_unsupported", "pack", "packed_attention", "padding_waste",
    "reference_attention", "unpack",
]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
# Fastest first, per device type, from the H100 profile and measurements here.
PREFERENCE = {"cuda": ("cudnn", "flash", "efficient", "math"), "cpu": ("flash", "math")}
CHECK_EVERY = 64  # decode steps between calls of decode_many's ``between``
# Jagged (nested) inputs: torch 2.13 runs them on CPU with the math kernel only.
NESTED_PREFERENCE = {"cuda": ("cudnn", "flash", "efficient", "math"), "cpu": ("math",)}


def causal_mask(q_len: int, kv_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean mask, True where query ``i`` may see key ``j`` (bottom-right aligned)."""
    i = torch.arange(q_len, device=device).unsqueeze(1)
    j = torch.arange(kv_len, device=device).unsqueeze(0)
    return j <= i + (kv_len - q_len)


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(QKᵀ/√d)V`` written out in fp32; K/V may have fewer (grouped) heads."""
    group = q.shape[1] // k.shape[1]
    kf = k.float().repeat_interleave(group, dim=1)
    vf = v.float().repeat_interleave(group, dim=1)
    scores = q.float() @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = mask
    if causal:
        tri = causal_mask(q.shape[-2], k.shape[-2], q.device)
        allowed = tri if allowed is None else allowed & tri
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ vf).to(q.dtype)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
          mask: torch.Tensor | None) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    if mask is None and causal and q.shape[-2] != k.shape[-2]:
        mask = causal_mask(q.shape[-2], k.shape[-2], q.device)
        causal = False
    elif mask is not None and causal:
        mask = mask & causal_mask(q.shape[-2], k.shape[-2], q.device)
        causal = False
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          enable_gqa=group > 1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
              mask: torch.Tensor | None = None, backend: str | None = None
              ) -> tuple[torch.Tensor, str]:
    """SDPA on the fastest backend that accepts these inputs; returns (out, backend).

    With ``backend`` given, only that one is tried (and its error raised).
    """
    names = (backend,) if backend else PREFERENCE.get(q.device.type, ("math",))
    last: Exception | None = None
    for name in names:
        try:
            with sdpa_kernel(BACKENDS[name]):
                return _sdpa(q, k, v, causal, mask), name
        except RuntimeError as e:  # "no available kernel" for this shape/dtype/mask
            last = e
    raise RuntimeError(f"no SDPA backend ran these inputs: {last}")


# -- packing jobs of different lengths ----------------------------------------------------
#
# Four ways to run several shapes (same heads, head size, dtype, causality):
#   dense   all entries share one shape: concatenate, one plain call;
#   split   one call per distinct shape (same-shape entries concatenated);
#   padded  one call over left-padded tensors with a mask hiding the padding;
#   nested  one call over jagged nested tensors (torch.nested, layout=torch.jagged).
# choose_packing() picks one by the device's rule in scheduler.packing.RULES
# (there, because the rule also says how many calls the cost model prices);
# bench/pack_methods.py measures all four, and docs/benchmarks.md has the
# figures behind the rules' thresholds.

METHODS = ("dense", "split", "padded", "nested")


@dataclass(frozen=True)
class PackChoice:
    """A packing method and why it was picked (the reason goes into logs and tests)."""

    method: str
    reason: str


def padding_waste(q_lens: Sequence[int], kv_lens: Sequence[int],
                  batches: Sequence[int] | None = None) -> float:
    """Share of a padded call's score matrix that is padding (0 when all shapes match)."""
    rows = batches or [1] * len(q_lens)
    real = sum(b * q * k for b, q, k in zip(rows, q_lens, kv_lens, strict=True))
    return 1.0 - real / (sum(rows) * max(q_lens) * max(kv_lens))


def nested_unsupported(device_type: str, causal: bool, q_lens: Sequence[int],
                       kv_lens: Sequence[int]) -> str | None:
    """Why jagged SDPA cannot run these shapes correctly here, or None if it can.

    A causal mask is a no-op when every job has one query (it sees the whole
    cache, bottom-right aligned). Otherwise: torch 2.13's CPU nested SDPA has
    no causal kernel (and takes no mask), and on CUDA the varlen kernels align
    a causal triangle differently (flash bottom-right, efficient top-left), so
    only square causal attention, where both agree, is safe.
    """
    if not causal or all(q == 1 for q in q_lens):
        return None
    if device_type != "cuda":
        return f"no causal nested SDPA on {device_type} in torch {torch.__version__}"
    if any(q != k for q, k in zip(q_lens, kv_lens, strict=True)):
        return "causal nested SDPA with q_len != kv_len: kernels disagree on alignment"
    return None


def choose_packing(q_lens: Sequence[int], kv_lens: Sequence[int], causal: bool,
                   device_type: str, batches: Sequence[int] | None = None,
                   heads: int = 1, head_dim: int = 1) -> PackChoice:
    """Pick dense, nested, padded or split for one batch by the device's :data:`RULES`."""
    shapes = set(zip(q_lens, kv_lens, strict=True))
    if len(shapes) == 1:
        return PackChoice("dense", "one shape: a plain batched call")
    rule = rule_for(device_type)
    if rule.nested:
        why = nested_unsupported(device_type, causal, q_lens, kv_lens)
        if why is None:
            return PackChoice("nested", f"{device_type}: jagged tensors pack without padding")
    waste = padding_waste(q_lens, kv_lens, batches)
    rows = batches or [1] * len(q_lens)
    per_call = 4.0 * heads * head_dim * sum(
        b * q * k for b, q, k in zip(rows, q_lens, kv_lens, strict=True)) / len(shapes)
    if waste <= rule.max_pad_waste and per_call <= rule.launch_bound_flops:
        return PackChoice("padded", f"{device_type}: padding wastes {waste:.0%} of the scores "
                                    f"and separate calls would be launch-bound")
    return PackChoice("split", f"{device_type}: one call per shape ({len(shapes)} shapes; "
                               f"padding would waste {waste:.0%})")


@dataclass(frozen=True)
class Packed:
    """Entries padded to common lengths, with a mask that hides the padding."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor  # (rows, 1, max_q, max_kv), True = attend
    q_lens: tuple[int, ...]
    batches: tuple[int, ...]


def pack(qs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
         causal: bool) -> Packed:
    """Pad entries of one head count/size/dtype and stack them along the batch axis.

    Queries are padded at the front and keys at the front too, so each job's
    real queries and keys stay bottom-right aligned and the causal triangle
    of every job falls out of one mask.
    """
    max_q = max(q.shape[-2] for q in qs)
    max_kv = max(k.shape[-2] for k in ks)
    device = qs[0].device
    masks = []
    for q, k in zip(qs, ks, strict=True):
        lq, lk = q.shape[-2], k.shape[-2]
        m = torch.zeros(max_q, max_kv, dtype=torch.bool, device=device)
        block = causal_mask(lq, lk, device) if causal else torch.ones(lq, lk, dtype=torch.bool,
                                                                      device=device)
        m[max_q - lq:, max_kv - lk:] = block
        m[: max_q - lq, max_kv - 1] = True  # padding queries see one key: no NaN rows
        masks.append(m.expand(q.shape[0], max_q, max_kv))

    def left_pad(x: torch.Tensor, length: int) -> torch.Tensor:
        return F.pad(x, (0, 0, length - x.shape[-2], 0))

    return Packed(torch.cat([left_pad(q, max_q) for q in qs]),
                  torch.cat([left_pad(k, max_kv) for k in ks]),
                  torch.cat([left_pad(v, max_kv) for v in vs]),
                  torch.cat(masks).unsqueeze(1), tuple(q.shape[-2] for q in qs),
                  tuple(q.shape[0] for q in qs))


def unpack(out: torch.Tensor, packed: Packed) -> list[torch.Tensor]:
    """Each entry's real rows of a packed output."""
    max_q = out.shape[-2]
    parts = torch.split(out, list(packed.batches))
    return [part[:, :, max_q - lq:] for part, lq in zip(parts, packed.q_lens, strict=True)]


def _jagged(xs: Sequence[torch.Tensor], heads: int) -> torch.Tensor:
    """(B, heads, j, d) jagged tensor of every row of every entry; K/V heads repeated.

    Nested matmul does not broadcast grouped K/V heads, so they are repeated.
    """
    rows = [x.repeat_interleave(heads // x.shape[1], dim=1) if x.shape[1] != heads else x
            for x in xs]
    seqs = [r.transpose(0, 1) for x in rows for r in x.unbind(0)]  # (L, heads, d) each
    return torch.nested.as_nested_tensor(seqs, layout=torch.jagged).transpose(1, 2)


def nested_attention(qs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor],
                     vs: Sequence[torch.Tensor], causal: bool, backend: str | None = None
                     ) -> tuple[list[torch.Tensor], str]:
    """All entries in one jagged SDPA call; raises RuntimeError where unsupported.

    Returns each entry's output (same shape as its query) and the backend
    that ran: backends are enabled one at a time, in :data:`NESTED_PREFERENCE`
    order, because nested SDPA would otherwise pick silently.
    """
    lens = [q.shape[-2] for q in qs]
    why = nested_unsupported(qs[0].device.type, causal, lens, [k.shape[-2] for k in ks])
    if why:
        raise RuntimeError(why)
    heads = qs[0].shape[1]
    square_causal = causal and any(n > 1 for n in lens)
    q, k, v = _jagged(qs, heads), _jagged(ks, heads), _jagged(vs, heads)
    out, used = None, ""
    last: Exception | None = None
    with _quiet_nested_sdpa():
        for name in (backend,) if backend else NESTED_PREFERENCE.get(q.device.type, ("math",)):
            try:
                with sdpa_kernel(BACKENDS[name]):
                    out, used = F.scaled_dot_product_attention(q, k, v,
                                                               is_causal=square_causal), name
                break
            except torch.cuda.OutOfMemoryError:
                raise  # the worker reports it; another kernel would not fit either
            except RuntimeError as e:  # "no viable backend" for these nested inputs
                last = e
    if out is None:
        raise RuntimeError(f"no nested SDPA backend ran these inputs: {last}")
    values = out.transpose(1, 2).values()  # (Σ rows·L, heads, d)
    parts = torch.split(values, [x.shape[0] * n for x, n in zip(qs, lens, strict=True)])
    outs = [part.view(x.shape[0], n, heads, -1).transpose(1, 2)
            for part, x, n in zip(parts, qs, lens, strict=True)]
    return outs, used


@contextmanager
def _quiet_nested_sdpa() -> Iterator[None]:
    """Silence torch's notes on refused backends and on its own internal strided
    nested tensors (the CPU math path builds them): neither is ours to act on."""
    logger = logging.getLogger("torch.nested._internal.sdpa")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors")
            yield
    finally:
        logger.setLevel(level)


def _split(qs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
           causal: bool, backend: str | None) -> tuple[list[torch.Tensor], str]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (q, k) in enumerate(zip(qs, ks, strict=True)):
        groups.setdefault((q.shape[-2], k.shape[-2]), []).append(i)
    outs: list[torch.Tensor] = list(qs)
    used = ""

    def joined(xs: Sequence[torch.Tensor], idx: list[int]) -> torch.Tensor:
        return xs[idx[0]] if len(idx) == 1 else torch.cat([xs[i] for i in idx])  # cat copies

    for idx in groups.values():
        out, used = attention(joined(qs, idx), joined(ks, idx), joined(vs, idx), causal,
                              backend=backend)
        for i, part in zip(idx, torch.split(out, [qs[i].shape[0] for i in idx]), strict=True):
            outs[i] = part
    return outs, used


def packed_attention(qs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor],
                     vs: Sequence[torch.Tensor], causal: bool, backend: str | None = None,
                     method: str | None = None) -> tuple[list[torch.Tensor], str]:
    """Several entries (jobs or same-shape groups, any batch each) as few calls as pays.

    Same results as one call per entry. ``method`` forces one of
    :data:`METHODS`; by default :func:`choose_packing` picks. Returns the
    outputs and ``"<backend>+<method>"``; when nested cannot run these inputs
    it falls back to padding and says so: ``"flash+padded (nested: <why>)"``.
    """
    q_lens = [q.shape[-2] for q in qs]
    kv_lens = [k.shape[-2] for k in ks]
    one_shape = len(set(zip(q_lens, kv_lens, strict=True))) == 1
    if method is None:
        method = choose_packing(q_lens, kv_lens, causal, qs[0].device.type,
                                [q.shape[0] for q in qs], qs[0].shape[1],
                                qs[0].shape[-1]).method
    if method not in METHODS:
        raise ValueError(f"unknown packing method {method!r}; expected one of {METHODS}")
    note = ""
    if method == "nested":
        try:
            outs, used = nested_attention(qs, ks, vs, causal, backend)
            return outs, f"{used}+nested"
        except torch.cuda.OutOfMemoryError:
            raise
        except RuntimeError as e:  # unsupported here: padding gives the same result
            method, note = "padded", f" (nested: {str(e).splitlines()[0]})"
    if method == "padded" and not one_shape:
        p = pack(qs, ks, vs, causal)
        out, used = attention(p.q, p.k, p.v, False, p.mask, backend)
        return unpack(out, p), f"{used}+padded{note}"
    outs, used = _split(qs, ks, vs, causal, backend)
    return outs, f"{used}+{'dense' if one_shape else method}{note}"


def decode(q_steps: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_len: int,
           backend: str | None = None) -> tuple[torch.Tensor, str]:
    """Decode ``steps`` tokens: step ``s`` attends to the first ``kv_len + s`` cached keys.

    ``q_steps`` is (batch, heads, steps, d); the caches hold ``kv_len + steps - 1``
    positions. Returns (batch, heads, steps, d), one call per step: one request
    of :func:`decode_many`, every row alike.
    """
    rows, steps = q_steps.shape[0], q_steps.shape[-2]
    return decode_many(q_steps, k_cache, v_cache, [kv_len] * rows, [steps] * rows, backend)


def decode_many(q_steps: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                kv_lens: Sequence[int], steps: Sequence[int], backend: str | None = None,
                between: Callable[[], None] | None = None) -> tuple[torch.Tensor, str]:
    """Decode many requests together: step ``s`` of every request still running is one call.

    Row ``r`` (one sequence of one request) decodes ``steps[r]`` tokens; its
    step ``s`` attends to the first ``kv_lens[r] + s`` positions of its cache.
    Rows must be ordered by ``steps``, longest first, so the rows still
    running at any step are a prefix (a slice, never a copy). Caches are
    right-padded to a common length and a mask hides each row's padding.
    This is what makes decode pay off on a worker: one launch per step for
    the whole batch instead of one per request, the launch count the cost
    model prices. Returns (rows, heads, max steps, d); positions past a row's
    steps are zero. ``between`` is called every ``CHECK_EVERY`` steps (a worker
    stopping a cancelled batch raises from it).
    """
    rows = q_steps.shape[0]
    if len(kv_lens) != rows or len(steps) != rows:
        raise ValueError("kv_lens and steps need one entry per row")
    if any(a < b for a, b in itertools.pairwise(steps)):
        raise ValueError("rows must be ordered by steps, longest first")
    device = q_steps.device
    out = torch.zeros_like(q_steps)
    # offset[r, p] = p − kv_lens[r]: at step s, row r sees position p iff offset < s.
    offset = (torch.arange(k_cache.shape[-2], device=device).unsqueeze(0)
              - torch.tensor(kv_lens, device=device).unsqueeze(1))[:, None, None, :]
    uniform = len(set(kv_lens)) == 1
    longest = list(itertools.accumulate(kv_lens, max))  # longest cache among the first rows
    active, used = rows, ""
    with ExitStack() as stack:
        for s in range(max(steps, default=0)):
            while active and steps[active - 1] <= s:
                active -= 1
            if between is not None and s % CHECK_EVERY == CHECK_EVERY - 1:
                between()
            length = longest[active - 1] + s
            mask = None if uniform else offset[:active, :, :, :length] < s
            q = q_steps[:active, :, s:s + 1]
            k, v = k_cache[:active, :, :length], v_cache[:active, :, :length]
            if s == 0:  # the first step finds the backend; the others run in its context
                o, used = attention(q, k, v, False, mask, backend)
                stack.enter_context(sdpa_kernel(BACKENDS[used]))
            else:
                o = _sdpa(q, k, v, False, mask)
            out[:active, :, s:s + 1] = o
    return out, used
