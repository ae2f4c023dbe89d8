"""One Llama-style decoder layer over positions 0..T-1, the transformer block of an MTP module (decoding
runs it on adaspec.drafters.lean_layer, with a KV cache).

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


class Attention(nn.Module):
    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, T, H] at positions 0..T-1, causal."""
        b, t, _ = x.shape
        c = self.cfg

        def heads(y: Tensor) -> Tensor:
            return y.view(b, t, c.heads, c.head_dim).transpose(1, 2)

        positions = torch.arange(t, device=x.device)
        q = apply_rope(heads(self.q_proj(x)), positions, c.rope_theta)
        k = apply_rope(heads(self.k_proj(x)), positions, c.rope_theta)
        v = heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, c.hidden))


class DecoderBlock(nn.Module):
    """Pre-norm Llama decoder layer: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.mlp = GatedMLP(cfg.hidden, cfg.intermediate)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))
