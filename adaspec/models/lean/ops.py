"""The maths every lean forward shares (the target's `LeanLM`, the draft's folded layer, the heads' `LeanLayer`)
and the heads' training modules reuse: RMSNorm, the table-driven rotary rotation, attention over a cache.

Plain functions over tensors, no modules or per-call allocations beyond the ops themselves: on the models these
paths serve a forward is mostly per-op overhead, so each helper is the fewest ops that give the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rms_norm(x: Tensor, weight: Tensor, eps: float, compute: torch.dtype | None = None) -> Tensor:
    """Llama's RMSNorm as transformers writes it: x normalised in `compute` (default float32), cast back to x's
    dtype, times `weight`. F.rms_norm's CPU kernel measured several times slower on one row; `x.float()` (no copy
    for float32 x) costs a third of `x.to(torch.float32)`, hence the default's own branch."""
    h = x.float() if compute is None else x.to(compute)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotate(x: Tensor, perm: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """`x*cos + rotate_half(x)*sin` over the last dim with `adaspec.models.lean.rotary.rotary_tables`' tables:
    rotate_half is the gather `perm`, its sign folded into `sin`; one fused multiply-add."""
    return torch.addcmul(x * cos, x.index_select(-1, perm), sin)


def attend(
    q: Tensor, keys: Tensor, values: Tensor, e: int, mask: Tensor | None, causal: bool, scale: float | None, gqa: bool
) -> Tensor:
    """SDPA of q [T, heads, 1, hd] over cache rows :e of keys/values [1, kv_heads, capacity, hd] -> [T, heads * hd].

    4-D inputs: with 3-D ones SDPA takes its slower math path on the CPU instead of the flash kernel. q comes
    with a unit axis so that one query with no mask is SDPA's batch of one as it is, and more take one transpose
    (on these sizes each view op costs about what a small kernel does)."""
    T = q.shape[0]
    keys, values = keys.narrow(2, 0, e), values.narrow(2, 0, e)  # narrow: ~0.6 µs less than [:, :, :e] per call
    if T == 1 and mask is None:
        return F.scaled_dot_product_attention(q, keys, values, scale=scale, enable_gqa=gqa).reshape(1, -1)
    out = F.scaled_dot_product_attention(
        q.transpose(0, 2), keys, values, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=gqa
    )
    return out.transpose(1, 2).reshape(T, -1)
