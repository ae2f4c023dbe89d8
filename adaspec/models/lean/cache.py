"""The lean forwards' KV cache: one preallocated buffer [layers, 2, kv_heads, capacity, head_dim], grown by
doubling, with per-layer views made once per growth so a forward writes a layer's new keys and values with one
`copy_` and hands SDPA views, no `torch.cat` and no per-call cache objects. Rows past what the owner has
cached are stale and simply overwritten: cropping is the owner setting its length."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Keys and values of `layers` layers; the owner keeps the count of rows in use (`filled` below)."""

    __slots__ = (
        "layers",
        "kv_heads",
        "head_dim",
        "dtype",
        "device",
        "capacity",
        "data",
        "kv",
        "keys",
        "values",
        "keys4",
        "values4",
    )

    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.layers, self.kv_heads, self.head_dim, self.dtype, self.device = layers, kv_heads, head_dim, dtype, device
        self.capacity = 0

    def grow(self, capacity: int, filled: int) -> None:
        """Reallocate at `capacity` rows, keeping the first `filled`."""
        # uninitialised: attention reads rows :e only, all written by then (zeroing cost a memset per sequence)
        data = torch.empty(self.layers, 2, self.kv_heads, capacity, self.head_dim, dtype=self.dtype, device=self.device)
        if self.capacity and filled:
            data[:, :, :, :filled] = self.data[:, :, :, :filled]
        self.data, self.capacity = data, capacity
        self.kv = [data[i] for i in range(self.layers)]  # [2, kv_heads, capacity, hd]: one copy_ per layer
        self.keys = [kv[0] for kv in self.kv]
        self.values = [kv[1] for kv in self.kv]
        self.keys4 = [k[None] for k in self.keys]  # [1, kv_heads, capacity, hd]: SDPA's batch of one
        self.values4 = [v[None] for v in self.values]

    def keep(self, start: int, rows: Tensor) -> None:
        """Move cache rows `rows` (absolute, in order) to start, start+1, ... in every layer."""
        self.data[:, :, :, start : start + rows.shape[0]] = self.data.index_select(3, rows)
