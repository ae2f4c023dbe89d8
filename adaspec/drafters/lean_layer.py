"""The heads' Llama-style layer (EagleLayer, DecoderBlock, DFlash's Qwen3-style DFlashLayer) on a lean decode
path.

The nn.Modules stay the one definition: training runs them, and tests hold this view to their outputs
(tests/drafters/test_lean_layer.py). At decode time a head runs one layer over one to a few rows per call,
where every op is mostly call overhead (adaspec.models.lean measures the same for the target), and the
modules' per-call work was most of a head's step: rotary angles recomputed from scratch twice per call, four
float32 round trips per RMSNorm, separate q/k/v and gate/up matmuls, and a KV cache grown by `torch.cat`
(a copy of the whole cache per draft token). This view reads the same weights, fused once when it is
built ([q|k|v] and [gate|up] one matrix each, stored [in, out]), looks rotary angles up in a table, and
keeps keys and values in a preallocated buffer, so cropping is setting a length. Cache, tables, norm,
rotation and attention are the target's lean path's own (adaspec.models.lean: cache, rotary, ops).

The weights are copied when the view is built; drafters rebuild it at `prefill` when the module's
weights have changed since (`weight_versions`), so a head trained further is decoded as it is now.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adaspec.models.lean.cache import KVCache
from adaspec.models.lean.ops import attend, rotate
from adaspec.models.lean.ops import rms_norm as _rms_norm
from adaspec.models.lean.rotary import inv_freq, rotary_tables

if TYPE_CHECKING:
    from adaspec.drafters.common import GatedMLP, RMSNorm


class Projections(Protocol):
    """What a layer's attention module gives the view: its q/k/v/o projections (adaspec.drafters.block.Attention,
    EagleAttention, DFlashAttention)."""

    q_proj: nn.Linear
    k_proj: nn.Linear
    v_proj: nn.Linear
    o_proj: nn.Linear


def weight_versions(module: nn.Module) -> tuple[int, ...]:
    """Every in-place update of a weight (an optimizer step, load_state_dict) bumps its version counter:
    a view built at other versions is stale."""
    return tuple(p._version for p in module.parameters())


def rms_norm(x: Tensor, norm: RMSNorm) -> Tensor:
    """adaspec.drafters.common.RMSNorm `norm` applied to x, on the lean maths (float32 for half inputs)."""
    return _rms_norm(x, norm.weight, norm.eps)


def _t(linear: nn.Linear) -> Tensor:
    return linear.weight.detach().t().contiguous()


class LeanLayer:
    """One Llama decoder layer, its attention input given pre-normed, with its own KV cache of `length`
    rows: `run(x, residual)` returns residual + attn(x), then + mlp(norm(.)), as the modules do.
    `qk_norms` (Qwen3's per-head q_norm and k_norm, applied before the rotation) when the attention has them."""

    def __init__(
        self,
        attn: Projections,
        post_norm: RMSNorm,
        mlp: GatedMLP,
        heads: int,
        kv_heads: int,
        head_dim: int,
        theta: float,
        capacity: int = 256,
        qk_norms: tuple[RMSNorm, RMSNorm] | None = None,
    ):
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.qk_norms = qk_norms
        self.w_qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach().t().contiguous()
        self.w_o = _t(attn.o_proj)
        self.post_norm = post_norm
        self.w_gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).detach().t().contiguous()
        self.w_down = _t(mlp.down_proj)
        self.inter = mlp.gate_proj.weight.shape[0]
        w = self.w_o
        self.inv_freq = inv_freq(theta, head_dim, w.device)  # the angles of adaspec.drafters.common.apply_rope
        self.length = 0
        self.cache = KVCache(1, kv_heads, head_dim, w.dtype, w.device)
        self._reserve(capacity)

    def _reserve(self, rows: int) -> None:
        cap = self.cache.capacity
        if rows <= cap:
            return
        new = max(rows, 2 * cap)
        self.cache.grow(new, self.length)
        self.k, self.v = self.cache.keys[0], self.cache.values[0]  # [kv_heads, capacity, hd]
        self.cos, self.sin, self.perm = rotary_tables(
            self.inv_freq, 1.0, new, self.head_dim, self.k.dtype, self.k.device
        )

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)

    def keep(self, start: int, rows: list[int]) -> None:
        """Keep the first `start` rows, then `rows` (in that order); drop the rest."""
        self.cache.keep(start, torch.tensor(rows, dtype=torch.long, device=self.k.device))
        self.length = start + len(rows)

    def _store(self, kv: Tensor, s: int, e: int, cos: Tensor, sin: Tensor) -> None:
        """Cache rows s..e-1 from kv [T, 2 * kv_heads * d], the projected keys then values."""
        t, n = kv.shape[0], self.kv_heads * self.head_dim
        k = kv[:, :n].view(t, self.kv_heads, self.head_dim)
        if self.qk_norms is not None:
            k = rms_norm(k, self.qk_norms[1])
        self.k[:, s:e] = rotate(k, self.perm, cos, sin).transpose(0, 1)
        self.v[:, s:e] = kv[:, n:].view(t, self.kv_heads, self.head_dim).transpose(0, 1)

    def append(self, x: Tensor) -> None:
        """Cache the keys and values of rows x [T, in] after the cached rows, with no query: DFlash's context,
        which its layers attend as keys and values only."""
        s, e = self.length, self.length + x.shape[0]
        self._reserve(e)
        self._store(x @ self.w_qkv[:, self.heads * self.head_dim :], s, e, self.cos[s:e, None], self.sin[s:e, None])
        self.length = e

    def run(
        self,
        x: Tensor,
        residual: Tensor,
        positions: Tensor | None = None,
        visible: Tensor | None = None,
        causal: bool = True,
    ) -> Tensor:
        """x [T, in] (the attention input, normed), residual [T, H], appended after the cached rows.

        positions [T]: rotary positions (default: the rows' own, length..length+T-1); visible
        [T, length + T] bool: which rows each query sees (default: causal over rows, or every row when not
        `causal`: DFlash's block)."""
        t, s = x.shape[0], self.length
        e = s + t
        self._reserve(e)
        h, d = self.heads, self.head_dim
        qkv = x @ self.w_qkv
        if positions is None:
            cos, sin = self.cos[s:e, None], self.sin[s:e, None]
        else:
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        q = qkv[:, : h * d].view(t, h, d)
        if self.qk_norms is not None:
            q = rms_norm(q, self.qk_norms[0])
        q = rotate(q, self.perm, cos, sin)
        self._store(qkv[:, h * d :], s, e, cos, sin)
        if visible is not None:
            mask = visible.to(x.device)
        elif t > 1 and causal:
            mask = torch.arange(e, device=x.device)[None, :] <= torch.arange(s, e, device=x.device)[:, None]
        else:
            mask = None  # one query after every cached row, or a non-causal block, sees them all
        a = attend(q[:, :, None], self.cache.keys4[0], self.cache.values4[0], e, mask, False, None, h != self.kv_heads)
        self.length = e
        out = torch.addmm(residual, a, self.w_o)
        gate, up = (rms_norm(out, self.post_norm) @ self.w_gate_up).split(self.inter, dim=-1)
        return torch.addmm(out, F.silu(gate) * up, self.w_down)
