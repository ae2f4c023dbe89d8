"""EAGLE feature heads (Li et al. 2024, EAGLE; 2025, EAGLE-3): one Llama-style decoder layer on top of the
target's own hidden states that proposes the next tokens.

EAGLE-3 (the default, SafeAILab/EAGLE eagle/model/cnets.py `Model`, SpecForge
specforge/modeling/draft/llama3_eagle.py `LlamaForCausalLMEagle3`): the target's hidden states of three
layers (low / middle / high) are concatenated and projected by `fc` (3H_target -> H, no bias). The layer
(`midlayer`) reads [input_layernorm(embedding of the next token), hidden_norm(hidden)] (2H -> q/k/v), with
the residual stream carrying the un-normed hidden; then the final `norm` and `lm_head` over the draft
vocabulary. Later draft steps feed the layer's own output (before `norm`, as the reference and vLLM's
`hidden_prenorm` do) in place of the projected target feature.

EAGLE-1/2 (SafeAILab/EAGLE eagle/model/cnets1.py): the feature is the target's final normed hidden state
(what its lm_head sees: the reference takes `base_model.model(...)[0]`, after the final norm), fused with
the embedding by `fc` (2H -> H; the reference has a bias, vLLM and adaspec by default none); `layers.0` is
a Llama decoder layer without input_layernorm (the reference drops it for layer 0); no final norm, and the
logits come from a frozen copy of the target's lm_head, so the head's output regresses onto the target's next feature.

Pairing (both variants, as the references): head position t reads the target feature of position t and
the embedding of token t+1, and predicts token t+2. Its own KV cache covers its own positions.

Layer ids follow adaspec.models.target: i = output of decoder layer i, -1 = final normed state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from adaspec.drafters.common import GatedMLP, RMSNorm, apply_rope
from adaspec.drafters.eagle.draft_vocab import vocab_maps
from adaspec.drafters.head_checkpoint import SavedHead, config_from_entry
from adaspec.errors import AdaspecError
from adaspec.models.target import FINAL, config_dims, default_aux_layers

VARIANTS = ("eagle3", "eagle1")
CHECKPOINT_KEY = "adaspec_eagle_head"  # config.json of a head checkpoint (the export formats are adaspec.export)

Attend = Callable[[Tensor, Tensor, Tensor], Tensor]  # (q, k, v) [B, heads, T, d] -> output [B, heads, T, d]


def aux_layers_problem(cfg: EagleConfig) -> str | None:
    """Why vLLM and SGLang cannot capture an EAGLE-3 head's aux layers, or None."""
    layers, last = cfg.hidden_layers, cfg.target_num_layers - 1
    if last in layers:
        return (
            f"aux layer {last} is the target's last decoder layer, whose output vLLM and SGLang cannot "
            f"capture: use layers 0..{last - 1}"
        )
    if len(set(layers)) != len(layers):
        return (
            f"aux layers {list(layers)} repeat a layer, which vLLM and SGLang capture only once: a "
            f"{cfg.target_num_layers}-layer target is too shallow to export an EAGLE-3 head"
        )
    return None


@dataclass
class EagleConfig:
    hidden_size: int
    target_hidden_size: int
    vocab_size: int  # the target's (output) vocabulary
    draft_vocab_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    target_num_layers: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    aux_layers: tuple[int, ...] | None = None  # None: default_aux_layers (eagle3), (FINAL,) (eagle1)
    variant: str = "eagle3"
    # EAGLE-1 only (EAGLE-3's fc never has one). The reference has one, vLLM's EagleLlamaForCausalLM does not:
    # off, so a trained head is served by vLLM as trained
    fc_bias: bool = False
    head_dim: int | None = None  # None: hidden_size // num_heads
    extra: dict[str, Any] = field(default_factory=dict)  # target token ids (bos/eos/pad) kept for export

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise AdaspecError(f"unknown EAGLE variant {self.variant!r}; choose one of: {', '.join(VARIANTS)}")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise AdaspecError(f"head hidden size {self.hidden_size} is not divisible by {self.num_heads} heads")
            self.head_dim = self.hidden_size // self.num_heads
        if self.num_heads % self.num_kv_heads:
            raise AdaspecError(f"{self.num_heads} attention heads are not a multiple of {self.num_kv_heads} KV heads")
        if not 0 < self.draft_vocab_size <= self.vocab_size:
            raise AdaspecError(
                f"draft vocabulary size {self.draft_vocab_size} must be in 1..{self.vocab_size} "
                "(the target's vocabulary)"
            )
        if self.variant == "eagle1":
            if self.aux_layers not in (None, (FINAL,), [FINAL]):
                raise AdaspecError("the EAGLE-1 head reads only the target's final normed state (layer -1)")
            self.aux_layers = (FINAL,)
            if self.hidden_size != self.target_hidden_size:
                raise AdaspecError(
                    f"an EAGLE-1 head regresses the target's features, so its hidden size "
                    f"({self.hidden_size}) must equal the target's ({self.target_hidden_size})"
                )
            if self.draft_vocab_size != self.vocab_size:
                raise AdaspecError("an EAGLE-1 head uses the target's lm_head: it cannot have a reduced vocabulary")
            return
        layers = default_aux_layers(self.target_num_layers) if self.aux_layers is None else tuple(self.aux_layers)
        if len(layers) != 3:
            raise AdaspecError(f"an EAGLE-3 head fuses exactly 3 target layers, got {list(layers)}")
        bad = [i for i in layers if not 0 <= i < self.target_num_layers]
        if bad:
            raise AdaspecError(
                f"aux layers {bad} are out of range for a {self.target_num_layers}-layer target "
                f"(use 0..{self.target_num_layers - 1})"
            )
        self.aux_layers = tuple(int(i) for i in layers)

    @property
    def hidden_layers(self) -> tuple[int, ...]:
        """The target layers the head reads, in the order they are concatenated."""
        return tuple(self.aux_layers or ())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["aux_layers"] = list(self.hidden_layers)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str = "an EAGLE head") -> EagleConfig:
        data = dict(data)
        if data.get("aux_layers") is not None:
            data["aux_layers"] = tuple(data["aux_layers"])
        return config_from_entry(cls, data, path)

    @classmethod
    def for_target(cls, target: PreTrainedModel, variant: str = "eagle3", **overrides: Any) -> EagleConfig:
        """A head config shaped like the target's own layers (the references' choice); any field can be overridden."""
        c = target.config
        layers, hidden = config_dims(c)
        heads = int(getattr(c, "num_attention_heads", None) or c.n_head)
        inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
        rope = getattr(c, "rope_parameters", None) or {}
        theta = rope.get("rope_theta") if isinstance(rope, dict) else None
        ctx = getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or 2048
        extra = {
            k: getattr(c, k)
            for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if isinstance(getattr(c, k, None), int)
        }
        values: dict[str, Any] = dict(
            hidden_size=hidden,
            target_hidden_size=hidden,
            vocab_size=int(target.get_output_embeddings().weight.shape[0]),
            num_heads=heads,
            num_kv_heads=int(getattr(c, "num_key_value_heads", None) or heads),
            intermediate_size=int(inter),
            target_num_layers=layers,
            rms_norm_eps=float(getattr(c, "rms_norm_eps", 1e-6)),
            rope_theta=float(theta or getattr(c, "rope_theta", None) or 10000.0),
            max_position_embeddings=int(ctx),
            variant=variant,
            extra=extra,
        )
        values.update(overrides)
        values.setdefault("draft_vocab_size", values["vocab_size"])
        if "hidden_size" in overrides and "num_heads" not in overrides and values["hidden_size"] % heads:
            raise AdaspecError(
                f"head hidden size {values['hidden_size']} is not divisible by the target's "
                f"{heads} heads: pass num_heads"
            )
        return cls(**values)


# ---- the layer ----


class EagleAttention(nn.Module):
    def __init__(self, in_size: int, cfg: EagleConfig):
        super().__init__()
        hd = cfg.head_dim
        assert hd is not None  # EagleConfig.__post_init__ sets it
        self.heads, self.kv_heads, self.head_dim, self.theta = cfg.num_heads, cfg.num_kv_heads, hd, cfg.rope_theta
        self.q_proj = nn.Linear(in_size, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(in_size, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(in_size, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, positions: Tensor, attend: Attend) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, positions, self.theta), apply_rope(k, positions, self.theta)
        out = attend(q, k, v)  # keys and values stay un-repeated here; `attend` expands them (GQA)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class EagleLayer(nn.Module):
    """One Llama decoder layer; `fused` (EAGLE-3) reads [input_layernorm(emb), hidden_norm(h)] (2H wide)."""

    def __init__(self, cfg: EagleConfig, fused: bool):
        super().__init__()
        self.fused = fused
        h = cfg.hidden_size
        if fused:
            self.input_layernorm = RMSNorm(h, cfg.rms_norm_eps)
            self.hidden_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.self_attn = EagleAttention(2 * h if fused else h, cfg)
        self.post_attention_layernorm = RMSNorm(h, cfg.rms_norm_eps)
        self.mlp = GatedMLP(h, cfg.intermediate_size)

    def forward(self, emb: Tensor, h: Tensor, positions: Tensor, attend: Attend) -> Tensor:
        x = torch.cat([self.input_layernorm(emb), self.hidden_norm(h)], dim=-1) if self.fused else h
        h = h + self.self_attn(x, positions, attend)
        return h + self.mlp(self.post_attention_layernorm(h))


# ---- the head ----


class EagleHead(SavedHead, nn.Module):
    """The EAGLE head's weights and its pure forward pieces (the drafter and the TTT unroll drive them)."""

    CHECKPOINT_KEY = CHECKPOINT_KEY
    CHECKPOINT_WHAT = "an adaspec EAGLE head checkpoint"
    CHECKPOINT_CONFIG = EagleConfig
    d2t: Tensor  # buffers (registered in __init__)
    t2d: Tensor

    def __init__(self, cfg: EagleConfig):
        super().__init__()
        self.config = cfg
        h = cfg.hidden_size
        # A frozen copy of the target's input embeddings (from_target fills it); trained only when the head
        # is narrower than the target, where the references cannot share it either
        self.embed_tokens = nn.Embedding(cfg.vocab_size, h)
        self.embed_tokens.weight.requires_grad_(h != cfg.target_hidden_size)
        if cfg.variant == "eagle3":
            self.fc = nn.Linear(len(cfg.hidden_layers) * cfg.target_hidden_size, h, bias=False)
            self.midlayer = EagleLayer(cfg, fused=True)
            self.norm = RMSNorm(h, cfg.rms_norm_eps)
            self.lm_head = nn.Linear(h, cfg.draft_vocab_size, bias=False)
        else:
            self.fc = nn.Linear(2 * h, h, bias=cfg.fc_bias)
            self.layers = nn.ModuleList([EagleLayer(cfg, fused=False)])
            self.lm_head = nn.Linear(h, cfg.vocab_size, bias=False)  # the target's, frozen
            self.lm_head.weight.requires_grad_(False)
        # draft id d -> target id d + d2t[d]; t2d[v]: target id v is in the draft vocabulary (full by default)
        self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(cfg.vocab_size, dtype=torch.bool))

    @classmethod
    def from_target(
        cls, target: PreTrainedModel, cfg: EagleConfig | None = None, seed: int = 0, draft_tokens: Tensor | None = None
    ) -> EagleHead:
        """A fresh head for `target`: random layer weights (seeded), the target's embeddings copied in (and,
        for EAGLE-1, its lm_head); `draft_tokens` (sorted target ids) sets a reduced draft vocabulary."""
        cfg = cfg or EagleConfig.for_target(target)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = cls(cfg)
        emb = cast(Tensor, target.get_input_embeddings().weight)
        if emb.shape[0] < cfg.vocab_size:
            raise AdaspecError(
                f"the target's embedding has {emb.shape[0]} rows, fewer than its "
                f"{cfg.vocab_size}-token output vocabulary"
            )
        with torch.no_grad():
            if emb.shape[1] == cfg.hidden_size:
                head.embed_tokens.weight.copy_(emb[: cfg.vocab_size])
            if cfg.variant == "eagle1":
                head.lm_head.weight.copy_(target.get_output_embeddings().weight[: cfg.vocab_size])
        if draft_tokens is not None:
            head.set_draft_vocab(draft_tokens)
        return head.to(emb.device)

    @property
    def layer(self) -> EagleLayer:
        return self.midlayer if self.config.variant == "eagle3" else cast(EagleLayer, self.layers[0])

    def set_draft_vocab(self, token_ids: Tensor) -> None:
        """Use the given target ids (strictly increasing) as the draft vocabulary, in that order."""
        d2t, t2d = vocab_maps(token_ids, self.config.vocab_size)
        if d2t.numel() != self.config.draft_vocab_size:
            raise AdaspecError(
                f"{d2t.numel()} draft tokens given for a head with a {self.config.draft_vocab_size}-"
                "token draft vocabulary"
            )
        self.d2t.copy_(d2t)
        self.t2d.copy_(t2d)

    def draft_to_target(self, draft_ids: Tensor) -> Tensor:
        return draft_ids + self.d2t[draft_ids]

    def project(self, features: Tensor) -> Tensor:
        """Target features [..., layers * H_target] -> the hidden the layer reads (EAGLE-3: fc; EAGLE-1: the
        raw feature, which `step` fuses with the embedding)."""
        features = features.to(self.fc.weight.dtype)
        return self.fc(features) if self.config.variant == "eagle3" else features

    def step(self, tokens: Tensor, hidden: Tensor, positions: Tensor, attend: Attend) -> Tensor:
        """One pass of the layer: tokens [B, T] (the token after each hidden's position), hidden [B, T, H]
        (projected target features or the head's own outputs). Returns the output hidden [B, T, H]."""
        emb = self.embed_tokens(tokens).to(hidden.dtype)
        if self.config.variant == "eagle1":
            hidden = self.fc(torch.cat([emb, hidden], dim=-1))
        return self.layer(emb, hidden, positions, attend)

    def logits(self, hidden: Tensor) -> Tensor:
        """Logits over the draft vocabulary from the layer's output."""
        return self.lm_head(self.norm(hidden) if self.config.variant == "eagle3" else hidden)

    def forward(self, target_hidden: Tensor, input_ids: Tensor, steps: int, attention_mask: Tensor | None = None):
        """The training forward: adaspec.drafters.eagle.training.unroll (a module call, so DDP wraps it)."""
        from adaspec.drafters.eagle.training import unroll  # eagle_ttt builds on this module

        return unroll(self, target_hidden, input_ids, steps, attention_mask)
