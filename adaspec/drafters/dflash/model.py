"""DFlash (arXiv 2602.06036): a block drafter that proposes every token of a speculative step in ONE forward.

The draft is a few Qwen3-style decoder layers (q/k norms, SiLU-gated MLP) sharing the target's token
embedding and LM head (frozen, never owned). A step after seq[:n] feeds the block
[seq[n-1], MASK, ..., MASK] at positions n-1 .. n-1+γ; attention inside the block is bidirectional, and
every layer also attends the CONTEXT: the target's hidden states of positions 0..n-2 at the layers
`target_layers`, concatenated, projected by `fc` and normed by `hidden_norm`, then turned into that layer's
keys and values by its own k/v projections (with k_norm and RoPE at the context positions). Block slot j
(1..γ) outputs, through `norm` and the target's head, the distribution of the token at position n-1+j.

This is vLLM 0.32.0's `DFlashQwen3ForCausalLM` (vllm/model_executor/models/qwen3_dflash.py: context K/V
precomputed from `hidden_norm(fc(aux))` into each layer's cache, queries only the block, non-causal) and the
z-lab reference (`Qwen3DFlashAttention`: k = cat(k_proj(target_hidden), k_proj(block))). The masked slots
are embedded as `mask_embedding`, a trained vector standing for id `mask_token_id` (vLLM swaps it in for
every input equal to that id, from a `mask_embedding.pt` beside the weights), so no vocabulary entry of the
target is retrained.

Layer ids follow adaspec.models.target: i = the output of decoder layer i (vLLM's target_layer_ids).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from adaspec.drafters.common import GatedMLP, RMSNorm, apply_rope, repeat_kv
from adaspec.drafters.head_checkpoint import SavedHead, config_from_entry
from adaspec.drafters.target_parts import TargetParts
from adaspec.errors import AdaspecError
from adaspec.models.target import config_dims

CHECKPOINT_KEY = "adaspec_dflash_head"
# bounds on sizes a user types, checked before anything is allocated
MAX_BLOCK_SIZE = 65  # γ <= adaspec.core.tree_shape.MAX_TREE_DEPTH
MAX_DRAFT_LAYERS = 32


def default_target_layers(num_target_layers: int, num_draft_layers: int) -> tuple[int, ...]:
    """The reference's choice (z-lab dflash `build_target_layer_ids`, also vLLM speculators'): the middle
    layer for a one-layer draft, else one layer per draft layer spread over 1..L-3; clamped to the target's
    layers and deduplicated for shallow targets."""
    if num_target_layers < 1:
        raise AdaspecError(f"the target has {num_target_layers} decoder layers; a DFlash head needs one")
    if num_draft_layers == 1:
        ids = [num_target_layers // 2]
    else:
        start, end = 1, num_target_layers - 3
        ids = [round(start + i * (end - start) / (num_draft_layers - 1)) for i in range(num_draft_layers)]
    return tuple(sorted({min(max(i, 0), num_target_layers - 1) for i in ids}))


@dataclass
class DFlashConfig:
    hidden_size: int  # the target's: the embedding and LM head are shared
    vocab_size: int  # the target's output vocabulary
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    target_num_layers: int
    block_size: int = 4  # B = γ + 1: the last accepted token and γ masked slots
    num_layers: int = 1
    target_layers: tuple[int, ...] | None = None  # None: default_target_layers
    mask_token_id: int | None = None  # None: the last id of the vocabulary
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    extra: dict[str, Any] = field(default_factory=dict)  # target token ids (bos/eos/pad) kept for export

    def __post_init__(self) -> None:
        if not 2 <= self.block_size <= MAX_BLOCK_SIZE:
            raise AdaspecError(f"the DFlash block size must be in 2..{MAX_BLOCK_SIZE} (γ + 1), got {self.block_size}")
        if not 1 <= self.num_layers <= MAX_DRAFT_LAYERS:
            raise AdaspecError(f"a DFlash head has 1..{MAX_DRAFT_LAYERS} layers, got {self.num_layers}")
        if self.num_heads % self.num_kv_heads:
            raise AdaspecError(f"{self.num_heads} attention heads are not a multiple of {self.num_kv_heads} KV heads")
        layers = (
            default_target_layers(self.target_num_layers, self.num_layers)
            if self.target_layers is None
            else tuple(int(i) for i in self.target_layers)
        )
        bad = [i for i in layers if not 0 <= i < self.target_num_layers]
        if not layers or bad:
            raise AdaspecError(
                f"target layers {list(layers)} are out of range for a {self.target_num_layers}-layer "
                f"target (use 0..{self.target_num_layers - 1})"
            )
        if list(layers) != sorted(set(layers)):  # vLLM captures them in layer order, each once
            raise AdaspecError(f"target layers must be strictly increasing, got {list(layers)}")
        self.target_layers = layers
        self.mask_token_id = self.vocab_size - 1 if self.mask_token_id is None else int(self.mask_token_id)
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise AdaspecError(f"the mask token id must be in 0..{self.vocab_size - 1}, got {self.mask_token_id}")

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        return tuple(self.target_layers or ())

    @property
    def max_gamma(self) -> int:
        return self.block_size - 1

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_layers"] = list(self.hidden_layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "a DFlash head") -> DFlashConfig:
        return config_from_entry(cls, dict(data), path)

    @classmethod
    def for_target(cls, target: PreTrainedModel, **overrides: Any) -> DFlashConfig:
        """A head whose layers are shaped like the target's (its width is the target's by construction)."""
        c = target.config
        layers, hidden = config_dims(c)
        heads = int(getattr(c, "num_attention_heads", None) or c.n_head)
        inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
        rope = getattr(c, "rope_parameters", None) or {}
        theta = rope.get("rope_theta") if isinstance(rope, dict) else None
        ctx = getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or 2048
        values: dict[str, Any] = dict(
            hidden_size=hidden,
            vocab_size=int(target.get_output_embeddings().weight.shape[0]),
            num_heads=heads,
            num_kv_heads=int(getattr(c, "num_key_value_heads", None) or heads),
            head_dim=hidden // heads,
            intermediate_size=int(inter),
            target_num_layers=layers,
            rms_norm_eps=float(getattr(c, "rms_norm_eps", None) or 1e-6),
            rope_theta=float(theta or getattr(c, "rope_theta", None) or 10000.0),
            max_position_embeddings=int(ctx),
            extra={
                k: getattr(c, k)
                for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                if isinstance(getattr(c, k, None), int)
            },
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class DFlashAttention(nn.Module):
    def __init__(self, cfg: DFlashConfig):
        super().__init__()
        h, d = cfg.hidden_size, cfg.head_dim
        self.heads, self.kv_heads, self.head_dim, self.theta = cfg.num_heads, cfg.num_kv_heads, d, cfg.rope_theta
        self.q_proj = nn.Linear(h, cfg.num_heads * d, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * d, h, bias=False)
        self.q_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(d, cfg.rms_norm_eps)

    def keys_values(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, T, H] -> keys (k_norm, RoPE at `positions`) and values, [B, kv_heads, T, d] each."""
        b, t, _ = x.shape
        k = self.k_norm(self.k_proj(x).view(b, t, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(k, positions, self.theta), v

    def forward(self, x: Tensor, positions: Tensor, ctx_k: Tensor, ctx_v: Tensor, mask: Tensor | None) -> Tensor:
        """Block rows x [B, Q, H] at `positions` attend the context keys/values [B, kv_heads, C, d] and every
        block row; `mask` [B, 1, Q, C + Q] (None: all of them)."""
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.heads, self.head_dim)).transpose(1, 2)
        q = apply_rope(q, positions, self.theta)
        k, v = self.keys_values(x, positions)
        groups = self.heads // self.kv_heads
        k, v = repeat_kv(torch.cat([ctx_k, k], dim=2), groups), repeat_kv(torch.cat([ctx_v, v], dim=2), groups)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class DFlashLayer(nn.Module):
    def __init__(self, cfg: DFlashConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = DFlashAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor, positions: Tensor, ctx_k: Tensor, ctx_v: Tensor, mask: Tensor | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), positions, ctx_k, ctx_v, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class DFlashHead(SavedHead, nn.Module):
    """The draft's own weights (the target's embedding and head are passed in as TargetParts, never owned)."""

    CHECKPOINT_KEY = CHECKPOINT_KEY
    CHECKPOINT_WHAT = "an adaspec DFlash head checkpoint"
    CHECKPOINT_CONFIG = DFlashConfig

    def __init__(self, cfg: DFlashConfig):
        super().__init__()
        self.config = cfg
        self.fc = nn.Linear(len(cfg.hidden_layers) * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.layers = nn.ModuleList(DFlashLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mask_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))

    @classmethod
    def from_target(cls, target: PreTrainedModel, cfg: DFlashConfig | None = None, seed: int = 0) -> DFlashHead:
        """Fresh layers (seeded); the mask embedding starts as the target's embedding of the mask id."""
        cfg = cfg or DFlashConfig.for_target(target)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = cls(cfg)
        emb = cast(Tensor, target.get_input_embeddings().weight)
        if emb.shape[1] != cfg.hidden_size:
            raise AdaspecError(f"the target's embedding is {emb.shape[1]} wide, the DFlash head {cfg.hidden_size}")
        with torch.no_grad():
            head.mask_embedding.copy_(emb[cfg.mask_token_id])
        return head.to(emb.device)

    def context(self, features: Tensor) -> Tensor:
        """Target features [..., layers * H] (the target layers concatenated in order) -> the context rows."""
        return self.hidden_norm(self.fc(features.to(self.fc.weight.dtype)))

    def embed(self, parts: TargetParts, ids: Tensor) -> Tensor:
        """The target's embedding, with the mask embedding wherever the id is the mask id (as vLLM does)."""
        emb = parts.embed(ids).to(self.mask_embedding.dtype)
        return torch.where((ids == self.config.mask_token_id)[..., None], self.mask_embedding, emb)

    def block_ids(self, last: Tensor, width: int) -> Tensor:
        """[..., width] block inputs: the last accepted token, then mask ids."""
        ids = last[..., None].expand(*last.shape, width).clone()
        ids[..., 1:] = self.config.mask_token_id
        return ids

    def forward(
        self,
        parts: TargetParts,
        features: Tensor,
        input_ids: Tensor,
        anchors: Tensor,
        attention_mask: Tensor | None = None,
    ) -> Tensor:
        """The training forward: for every anchor a (anchors [B, K], 1 <= a < T) the block
        [x_a, MASK, ...] at positions a..a+B-1 sees the context rows of positions < a (real tokens only)
        and its own block. features [B, T, layers * H], input_ids [B, T]. Returns the logits of slots
        1..B-1, [B, K, B-1, V]: slot j of anchor a predicts token a + j."""
        b, t = input_ids.shape
        k, width = anchors.shape[1], self.config.block_size
        ctx = self.context(features)
        positions = (anchors[:, :, None] + torch.arange(width, device=anchors.device)).reshape(b, k * width)
        x = self.embed(parts, self.block_ids(input_ids.gather(1, anchors), width).reshape(b, k * width))
        seen = torch.arange(t, device=anchors.device) < anchors[:, :, None]  # [B, K, T]
        if attention_mask is not None:
            seen = seen & attention_mask.bool()[:, None, :]
        own = (
            torch.eye(k, dtype=torch.bool, device=anchors.device)
            .repeat_interleave(width, 0)
            .repeat_interleave(width, 1)
        )
        mask = torch.cat([seen.repeat_interleave(width, 1), own.expand(b, -1, -1)], dim=-1)[:, None]
        ctx_positions = torch.arange(t, device=anchors.device)
        for layer in cast("Sequence[DFlashLayer]", self.layers):
            ctx_k, ctx_v = layer.self_attn.keys_values(ctx, ctx_positions)
            x = layer(x, positions, ctx_k, ctx_v, mask)
        logits = parts.logits_of_normed(self.norm(x))
        return logits.view(b, k, width, -1)[:, :, 1:]
