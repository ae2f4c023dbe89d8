"""Llama on the lean path: RMSNorm in float32 then cast, separate q/k/v projections (grouped-query attention,
optional biases), q and k rotated by one op on their concatenation, SiLU-gated MLP."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import LlamaForCausalLM

from adaspec.models.lean.decoder import Decoder, RMSNormWeights, hf_activation
from adaspec.models.lean.ops import attend, rms_norm, rotate

if TYPE_CHECKING:
    from adaspec.models.lean.lm import LeanLM


@dataclass(slots=True, eq=False)
class LlamaLayer:
    """References to one decoder layer's parameters (not copies: training is seen at once)."""

    input_norm: Tensor
    input_eps: float
    q: Tensor
    q_bias: Tensor | None
    k: Tensor
    k_bias: Tensor | None
    v: Tensor
    v_bias: Tensor | None
    o: Tensor
    o_bias: Tensor | None
    scale: float
    post_norm: Tensor
    post_eps: float
    gate: Tensor
    gate_bias: Tensor | None
    up: Tensor
    up_bias: Tensor | None
    down: Tensor
    down_bias: Tensor | None
    act: Callable[[Tensor], Tensor]

    def forward(
        self, lm: LeanLM, i: int, x: Tensor, cos: Tensor, sin: Tensor, s: int, e: int, mask: Tensor | None, causal: bool
    ) -> Tensor:
        T, heads = x.shape[0], lm.heads
        h = rms_norm(x, self.input_norm, self.input_eps)
        q = F.linear(h, self.q, self.q_bias).view(T, heads, lm.head_dim)
        k = F.linear(h, self.k, self.k_bias).view(T, lm.kv_heads, lm.head_dim)
        v = F.linear(h, self.v, self.v_bias).view(T, lm.kv_heads, lm.head_dim)
        qk = rotate(torch.cat((q, k), dim=1), lm._perm, cos, sin)
        cache = lm.cache
        kv = cache.kv[i].narrow(2, s, e - s)
        kv[0].copy_(qk[:, heads:].transpose(0, 1))
        kv[1].copy_(v.transpose(0, 1))
        a = attend(qk[:, :heads, None], cache.keys4[i], cache.values4[i], e, mask, causal, self.scale, lm._gqa)
        x = x + F.linear(a, self.o, self.o_bias)
        h = rms_norm(x, self.post_norm, self.post_eps)
        return x + F.linear(
            self.act(F.linear(h, self.gate, self.gate_bias)) * F.linear(h, self.up, self.up_bias),
            self.down,
            self.down_bias,
        )


def decoder(model: LlamaForCausalLM) -> Decoder:
    inner, config = model.model, model.config
    heads = config.num_attention_heads
    layers = []
    for layer in inner.layers[: config.num_hidden_layers]:
        attn, mlp = layer.self_attn, layer.mlp
        layers.append(
            LlamaLayer(
                input_norm=layer.input_layernorm.weight,
                input_eps=layer.input_layernorm.variance_epsilon,
                q=attn.q_proj.weight,
                q_bias=attn.q_proj.bias,
                k=attn.k_proj.weight,
                k_bias=attn.k_proj.bias,
                v=attn.v_proj.weight,
                v_bias=attn.v_proj.bias,
                o=attn.o_proj.weight,
                o_bias=attn.o_proj.bias,
                scale=attn.scaling,
                post_norm=layer.post_attention_layernorm.weight,
                post_eps=layer.post_attention_layernorm.variance_epsilon,
                gate=mlp.gate_proj.weight,
                gate_bias=mlp.gate_proj.bias,
                up=mlp.up_proj.weight,
                up_bias=mlp.up_proj.bias,
                down=mlp.down_proj.weight,
                down_bias=mlp.down_proj.bias,
                act=hf_activation(mlp.act_fn),
            )
        )
    return Decoder(
        heads=heads,
        kv_heads=config.num_key_value_heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        embed=inner.embed_tokens.weight,
        layers=layers,
        final_norm=RMSNormWeights(inner.norm.weight, inner.norm.variance_epsilon),
        rotary=inner.rotary_emb,
    )
