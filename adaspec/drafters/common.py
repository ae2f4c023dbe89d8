"""Small Llama-style building blocks for feature drafters: RMSNorm and one decoder layer with its own KV
cache over contiguous positions 0..len-1 (append, crop).

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

from adaspec.decoding.target import final_norm, fit_vocab
from adaspec.models import output_vocab_size


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in float32 (as Llama and DeepSeek do)."""

    def __init__(self, size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


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


def _rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


def rotary(x: Tensor, positions: Tensor, theta: float) -> Tensor:
    """Llama's rotary embedding of x [..., T, d] at integer `positions` [T] (non-interleaved halves)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = positions.to(torch.float32)[:, None] * inv[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class KVCache:
    """Keys and values of one attention layer for positions 0..len-1, [B, heads, len, head_dim] each."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)
        return self.k, self.v  # type: ignore[return-value]

    def crop(self, length: int) -> None:
        if self.k is not None and length < len(self):
            self.k, self.v = self.k[:, :, :length], self.v[:, :, :length]  # type: ignore[index]


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
        q = rotary(heads(self.q_proj(x)), positions, c.rope_theta)
        k = rotary(heads(self.k_proj(x)), positions, c.rope_theta)
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


class MLP(nn.Module):
    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.up_proj = nn.Linear(cfg.hidden, cfg.intermediate, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate, cfg.hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderBlock(nn.Module):
    """Pre-norm Llama decoder layer: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden, cfg.eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, start: int = 0, cache: KVCache | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), start, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass(frozen=True)
class TargetParts:
    """The target's frozen modules a feature head reuses: token embedding, final norm, output head."""

    embed: nn.Module
    norm: nn.Module
    head: nn.Module
    vocab: int

    def logits(self, h: Tensor) -> Tensor:
        """The target's own output distribution read off a hidden state (final norm, head, vocab fit)."""
        return self.logits_of_normed(self.norm(h.to(next(self.norm.parameters()).dtype)))

    def logits_of_normed(self, h: Tensor) -> Tensor:
        """The target's head (vocab fit) on an already normed state, in the head's dtype."""
        return fit_vocab(self.head(h.to(next(self.head.parameters()).dtype)), self.vocab)


def target_parts(model: PreTrainedModel, vocab: int | None = None) -> TargetParts:
    """Views of the target's embedding, final norm and head (shared, never copied)."""
    vocab = output_vocab_size(model) if vocab is None else vocab
    return TargetParts(model.get_input_embeddings(), final_norm(model), model.get_output_embeddings(), vocab)


def block_config(model: PreTrainedModel) -> BlockConfig:
    """A drafter block the target's width: its hidden size, head count, MLP width (4H when unset) and eps."""
    c = model.config
    hidden = int(c.hidden_size)
    heads = int(c.num_attention_heads)
    inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
    eps = getattr(c, "rms_norm_eps", None) or 1e-6
    return BlockConfig(hidden=hidden, heads=heads, intermediate=int(inter), eps=float(eps))


def final_features(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
    """One target forward over a batch: (final normed hidden states [B, T, H], logits [B, T, V_own]),
    the features the heads read at decoding time (hooked, not every layer's output_hidden_states)."""
    captured: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, out: Tensor | tuple) -> None:
        captured.append(out[0] if isinstance(out, tuple) else out)

    handle = final_norm(model).register_forward_hook(hook)
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        handle.remove()
    return captured[-1], logits
