"""One Llama-style decoder layer with its own KV cache over contiguous positions 0..len-1 (append, crop),
the transformer block of an MTP module.

Parameter names follow transformers' Llama layer (`input_layernorm`, `self_attn.{q,k,v,o}_proj`,
`post_attention_layernorm`, `mlp.{gate,up,down}_proj`), which is also the naming of the dense,
multi-head-attention variant of vLLM's DeepSeek decoder layer, so exports rename nothing inside a block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel

from adaspec.drafters.common import GatedMLP, RMSNorm, apply_rope


@dataclass(frozen=True)
class BlockConfig:
    hidden: int
    heads: int
    intermediate: int
    eps: float = 1e-6
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def block_config(model: PreTrainedModel) -> BlockConfig:
    """A block the target's width: its hidden size, head count, MLP width (4H when unset) and norm eps."""
    c = model.config
    hidden = int(c.hidden_size)
    inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
    eps = getattr(c, "rms_norm_eps", None) or 1e-6
    return BlockConfig(hidden, int(c.num_attention_heads), int(inter), float(eps))


class KVCache:
    """Keys and values of one attention layer for positions 0..len-1, [B, heads, len, head_dim] each."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None or self.v is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def crop(self, length: int) -> None:
        if self.k is not None and self.v is not None and length < len(self):
            self.k, self.v = self.k[:, :, :length], self.v[:, :, :length]


class Attention(nn.Module):
    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x: Tensor, start: int, cache: KVCache | None) -> Tensor:
        """x [B, T, H] at positions start..start+T-1; with a cache, which must hold positions 0..start-1,
        the new keys and values are appended to it."""
        b, t, _ = x.shape
        c = self.cfg

        def heads(y: Tensor) -> Tensor:
            return y.view(b, t, c.heads, c.head_dim).transpose(1, 2)

        positions = torch.arange(start, start + t, device=x.device)
        q = apply_rope(heads(self.q_proj(x)), positions, c.rope_theta)
        k = apply_rope(heads(self.k_proj(x)), positions, c.rope_theta)
        v = heads(self.v_proj(x))
        if cache is not None:
            if len(cache) != start:
                raise ValueError(f"cache holds {len(cache)} positions, the input starts at {start}")
            k, v = cache.extend(k, v)
        elif start != 0:
            raise ValueError("an input after position 0 needs the cache of the positions before it")
        keys = torch.arange(k.shape[2], device=x.device)
        mask = keys[None, :] <= positions[:, None]  # causal over absolute positions
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, c.hidden))


class DecoderBlock(nn.Module):
    """Pre-norm Llama decoder layer: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.mlp = GatedMLP(cfg.hidden, cfg.intermediate)

    def forward(self, x: Tensor, start: int = 0, cache: KVCache | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), start, cache)
        return x + self.mlp(self.post_attention_layernorm(x))
