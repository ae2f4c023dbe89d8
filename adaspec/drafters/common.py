"""Llama-style building blocks shared by the feature-head drafters (EAGLE, MTP, Medusa).

Written out rather than borrowed from transformers' Llama modules so the heads do not depend on a config
object or on how a transformers release names its internals; the math is the Llama one that vLLM and
SGLang implement, so exported weights mean the same thing there. The maths (the norm, the rotary angles) is the
lean decode path's (adaspec.models.lean), so the modules trained here and the views decoding runs agree by
construction.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adaspec.models.lean.ops import rms_norm
from adaspec.models.lean.rotary import inv_freq, rope_angles


class RMSNorm(nn.Module):
    """Llama's RMSNorm: x / rms(x) * weight, computed in at least float32 and cast back."""

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps, torch.promote_types(x.dtype, torch.float32))


class GatedMLP(nn.Module):
    """Llama's MLP: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def apply_rope(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Llama (NeoX-style, rotate-half) rotary embedding over the full head dim.

    x [B, heads, T, head_dim]; positions [T] or [B, T] (integer positions, may exceed T with a cache).
    """
    angles = rope_angles(positions.to(x.device, torch.float32), inv_freq(theta, x.shape[-1], x.device))
    if angles.dim() == 3:  # per-batch positions: broadcast over heads
        angles = angles[:, None]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """[B, kv_heads, T, d] -> [B, kv_heads * groups, T, d] for grouped-query attention."""
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)
