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

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
# Fastest first, per device type, from the H100 profile and measurements here.
PREFERENCE = {"cuda": ("cudnn", "flash", "efficient", "math"), "cpu": ("flash", "math")}


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


@dataclass(frozen=True)
class Packed:
    """Jobs padded to common lengths, with a mask that hides the padding."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor  # (jobs, 1, max_q, max_kv), True = attend
    q_lens: tuple[int, ...]


def pack(qs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor], vs: Sequence[torch.Tensor],
         causal: bool) -> Packed:
    """Pad jobs of one head count/size/dtype along the batch axis (each job batch 1).

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
        masks.append(m)

    def left_pad(x: torch.Tensor, length: int) -> torch.Tensor:
        return F.pad(x, (0, 0, length - x.shape[-2], 0))

    return Packed(torch.cat([left_pad(q, max_q) for q in qs]),
                  torch.cat([left_pad(k, max_kv) for k in ks]),
                  torch.cat([left_pad(v, max_kv) for v in vs]),
                  torch.stack(masks).unsqueeze(1), tuple(q.shape[-2] for q in qs))


def unpack(out: torch.Tensor, packed: Packed) -> list[torch.Tensor]:
    """Each job's real rows of a packed output."""
    max_q = out.shape[-2]
    return [out[i:i + 1, :, max_q - lq:] for i, lq in enumerate(packed.q_lens)]


def packed_attention(qs: Sequence[torch.Tensor], ks: Sequence[torch.Tensor],
                     vs: Sequence[torch.Tensor], causal: bool, backend: str | None = None
                     ) -> tuple[list[torch.Tensor], str]:
    """Several jobs in one SDPA call; same results as one call each."""
    if all(q.shape == qs[0].shape for q in qs) and all(k.shape == ks[0].shape for k in ks):
        out, used = attention(torch.cat(list(qs)), torch.cat(list(ks)), torch.cat(list(vs)),
                              causal, backend=backend)  # no padding needed
        return list(torch.split(out, 1)), used
    p = pack(qs, ks, vs, causal)
    out, used = attention(p.q, p.k, p.v, False, p.mask, backend)
    return unpack(out, p), used


def decode(q_steps: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, kv_len: int,
           backend: str | None = None) -> tuple[torch.Tensor, str]:
    """Decode ``steps`` tokens: step ``s`` attends to the first ``kv_len + s`` cached keys.

    ``q_steps`` is (batch, heads, steps, d); the caches hold ``kv_len + steps - 1``
    positions. Returns (batch, heads, steps, d), one call per step.
    """
    outs, used = [], ""
    for s in range(q_steps.shape[-2]):
        q = q_steps[:, :, s:s + 1]
        out, used = attention(q, k_cache[:, :, :kv_len + s], v_cache[:, :, :kv_len + s],
                              causal=False, backend=backend)
        outs.append(out)
    return torch.cat(outs, dim=-2), used
