"""GPT-NeoX on the lean path: LayerNorms, one [q|k|v] projection laid out per head (transformers:
view(T, heads, 3 * hd).chunk(3, -1)), partial rotary, parallel or sequential residual."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import GPTNeoXForCausalLM

from adaspec.models.lean.decoder import Decoder, LayerNormWeights, hf_activation
from adaspec.models.lean.ops import attend, rotate

if TYPE_CHECKING:
    from adaspec.models.lean.lm import LeanLM


@dataclass(slots=True, eq=False)
class NeoxLayer:
    """References to one decoder layer's parameters (not copies: training is seen at once)."""

    input_norm: Tensor
    input_norm_bias: Tensor | None
    input_eps: float
    qkv: Tensor
    qkv_bias: Tensor | None
    dense: Tensor
    dense_bias: Tensor | None
    scale: float
    post_norm: Tensor
    post_norm_bias: Tensor | None
    post_eps: float
    mlp_in: Tensor
    mlp_in_bias: Tensor | None
    mlp_out: Tensor
    mlp_out_bias: Tensor | None
    act: Callable[[Tensor], Tensor]
    parallel: bool  # use_parallel_residual: attention and MLP both read the layer's input

    def forward(
        self, lm: LeanLM, i: int, x: Tensor, cos: Tensor, sin: Tensor, s: int, e: int, mask: Tensor | None, causal: bool
    ) -> Tensor:
        T, H = x.shape
        # the [q|k|v] rows of `rotary_rows` rotate q and k and leave v as it is: one rotation for all three
        qkv = rotate(
            F.linear(
                F.layer_norm(x, (H,), self.input_norm, self.input_norm_bias, self.input_eps), self.qkv, self.qkv_bias
            ).view(T, lm.heads, 3, lm.head_dim),
            lm._perm,
            cos,
            sin,
        )
        cache = lm.cache
        cache.kv[i].narrow(2, s, e - s).copy_(qkv[:, :, 1:].permute(2, 1, 0, 3))
        a = F.linear(
            attend(qkv[:, :, 0:1], cache.keys4[i], cache.values4[i], e, mask, causal, self.scale, lm._gqa),
            self.dense,
            self.dense_bias,
        )
        if self.parallel:
            return self.mlp(F.layer_norm(x, (H,), self.post_norm, self.post_norm_bias, self.post_eps)) + a + x
        a = a + x
        return self.mlp(F.layer_norm(a, (H,), self.post_norm, self.post_norm_bias, self.post_eps)) + a

    def mlp(self, h: Tensor) -> Tensor:
        return F.linear(self.act(F.linear(h, self.mlp_in, self.mlp_in_bias)), self.mlp_out, self.mlp_out_bias)


def qkv_rows(cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotary rows [capacity, 1, 3, hd] for the per-head [q | k | v]: v gets cos 1, sin 0."""
    one, zero = torch.ones_like(cos), torch.zeros_like(sin)
    return torch.stack([cos, cos, one], dim=1)[:, None], torch.stack([sin, sin, zero], dim=1)[:, None]


def decoder(model: GPTNeoXForCausalLM) -> Decoder:
    inner, config = model.gpt_neox, model.config
    layers = []
    for layer in inner.layers:
        attn, mlp, n1, n2 = layer.attention, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm
        layers.append(
            NeoxLayer(
                input_norm=n1.weight,
                input_norm_bias=n1.bias,
                input_eps=n1.eps,
                qkv=attn.query_key_value.weight,
                qkv_bias=attn.query_key_value.bias,
                dense=attn.dense.weight,
                dense_bias=attn.dense.bias,
                scale=attn.scaling,
                post_norm=n2.weight,
                post_norm_bias=n2.bias,
                post_eps=n2.eps,
                mlp_in=mlp.dense_h_to_4h.weight,
                mlp_in_bias=mlp.dense_h_to_4h.bias,
                mlp_out=mlp.dense_4h_to_h.weight,
                mlp_out_bias=mlp.dense_4h_to_h.bias,
                act=hf_activation(mlp.act),
                parallel=layer.use_parallel_residual,
            )
        )
    norm = inner.final_layer_norm
    heads = config.num_attention_heads
    return Decoder(
        heads=heads,
        kv_heads=heads,
        head_dim=config.hidden_size // heads,
        embed=inner.embed_in.weight,
        layers=layers,
        final_norm=LayerNormWeights(norm.weight, norm.bias, norm.eps),
        rotary=inner.rotary_emb,
        rotary_rows=qkv_rows,
    )
