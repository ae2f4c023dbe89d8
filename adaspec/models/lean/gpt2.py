"""GPT-2 on the lean path: learned positions, LayerNorms, Conv1D weights kept [in, out] (torch.addmm(bias, x,
weight) is exactly its forward), one [q|k|v] projection laid out [3, heads, hd]."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import GPT2LMHeadModel

from adaspec.models.lean.decoder import Decoder, LayerNormWeights, hf_activation
from adaspec.models.lean.ops import attend

if TYPE_CHECKING:
    from adaspec.models.lean.lm import LeanLM


@dataclass(slots=True, eq=False)
class GPT2Layer:
    """References to one block's parameters (not copies: training is seen at once)."""

    input_norm: Tensor
    input_norm_bias: Tensor
    input_eps: float
    qkv: Tensor
    qkv_bias: Tensor
    proj: Tensor
    proj_bias: Tensor
    scale: float
    post_norm: Tensor
    post_norm_bias: Tensor
    post_eps: float
    mlp_in: Tensor
    mlp_in_bias: Tensor
    mlp_out: Tensor
    mlp_out_bias: Tensor
    act: Callable[[Tensor], Tensor]

    def forward(
        self, lm: LeanLM, i: int, x: Tensor, cos: None, sin: None, s: int, e: int, mask: Tensor | None, causal: bool
    ) -> Tensor:
        T, H = x.shape
        qkv = torch.addmm(
            self.qkv_bias, F.layer_norm(x, (H,), self.input_norm, self.input_norm_bias, self.input_eps), self.qkv
        ).view(T, 3, lm.heads, lm.head_dim)
        cache = lm.cache
        cache.kv[i].narrow(2, s, e - s).copy_(qkv[:, 1:].permute(1, 2, 0, 3))
        a = attend(qkv[:, 0, :, None], cache.keys4[i], cache.values4[i], e, mask, causal, self.scale, lm._gqa)
        x = torch.addmm(self.proj_bias, a, self.proj) + x
        h = torch.addmm(
            self.mlp_in_bias, F.layer_norm(x, (H,), self.post_norm, self.post_norm_bias, self.post_eps), self.mlp_in
        )
        return x + torch.addmm(self.mlp_out_bias, self.act(h), self.mlp_out)


def decoder(model: GPT2LMHeadModel) -> Decoder:
    inner, config = model.transformer, model.config
    layers = []
    for block in inner.h:
        attn, mlp = block.attn, block.mlp
        layers.append(
            GPT2Layer(
                input_norm=block.ln_1.weight,
                input_norm_bias=block.ln_1.bias,
                input_eps=block.ln_1.eps,
                qkv=attn.c_attn.weight,
                qkv_bias=attn.c_attn.bias,
                proj=attn.c_proj.weight,
                proj_bias=attn.c_proj.bias,
                scale=attn.scaling,
                post_norm=block.ln_2.weight,
                post_norm_bias=block.ln_2.bias,
                post_eps=block.ln_2.eps,
                mlp_in=mlp.c_fc.weight,
                mlp_in_bias=mlp.c_fc.bias,
                mlp_out=mlp.c_proj.weight,
                mlp_out_bias=mlp.c_proj.bias,
                act=hf_activation(mlp.act),
            )
        )
    heads = config.num_attention_heads
    return Decoder(
        heads=heads,
        kv_heads=heads,
        head_dim=config.hidden_size // heads,
        embed=inner.wte.weight,
        layers=layers,
        final_norm=LayerNormWeights(inner.ln_f.weight, inner.ln_f.bias, inner.ln_f.eps),
        positions=inner.wpe.weight,
    )
