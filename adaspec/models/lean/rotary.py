"""Rotary position tables, computed once per capacity, as transformers' Llama / GPT-NeoX rotary embeddings and the
heads' `adaspec.drafters.common.apply_rope` compute the angles (float32, each frequency twice)."""

from __future__ import annotations

import torch
from torch import Tensor


def inv_freq(theta: float, head_dim: int, device: torch.device | str | None = None) -> Tensor:
    """The default rope's inverse frequencies over `head_dim` rotary dims: theta^(-2i/head_dim), float32."""
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)


def rope_angles(positions: Tensor, inv_freq: Tensor) -> Tensor:
    """Float32 positions [..., T] -> angles [..., T, 2 * len(inv_freq)] (each frequency's angle twice)."""
    angles = positions[..., None] * inv_freq
    return torch.cat([angles, angles], dim=-1)


def rotary_tables(
    inv_freq: Tensor, scaling: float, capacity: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """cos, sin [capacity, head_dim] and perm [head_dim] for `adaspec.models.lean.ops.rotate` at positions
    0..capacity-1: cos/sin as transformers computes them (float32 times `scaling`, cast to `dtype`), widened to
    the head dim so partial rotary needs no split: rotate_half becomes the gather `perm` with its sign folded
    into sin, and dims past the rotary ones get cos 1, sin 0 (x*1 + y*0 == x exactly)."""
    emb = rope_angles(
        torch.arange(capacity, device=device, dtype=torch.float32), inv_freq.to(device=device, dtype=torch.float32)
    )
    cos, sin = (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)
    rot, half = emb.shape[-1], emb.shape[-1] // 2
    wide_cos = torch.ones(capacity, head_dim, dtype=dtype, device=device)
    wide_sin = torch.zeros(capacity, head_dim, dtype=dtype, device=device)
    wide_cos[:, :rot] = cos
    wide_sin[:, :half] = -sin[:, :half]
    wide_sin[:, half:rot] = sin[:, half:]
    perm = torch.cat([torch.arange(half, rot), torch.arange(half), torch.arange(rot, head_dim)]).to(device)
    return wide_cos, wide_sin, perm
