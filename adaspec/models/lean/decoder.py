"""What a family file (llama.py, gpt_neox.py, gpt2.py) hands `LeanLM`: the model's weights around its layers,
its typed per-layer weights, and the few family-specific choices.

A layer runs as `layer.forward(lm, i, x, cos, sin, s, e, mask, causal)`: x [T, H] -> [T, H], with the layer's
new keys and values written to rows s:e of `lm.cache` layer i; cos/sin are the rows `rotary_rows` laid out for
these positions (None without rotary), `lm._perm` the rotation's gather, mask/causal/`lm._gqa` what
`adaspec.models.lean.ops.attend` takes. Layer dataclasses have slots: a field read costs what a tuple index did;
cache rows are taken with `narrow` (cheaper than multi-axis slicing, per call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.activations import GELUActivation, SiLUActivation

from adaspec.models.lean.ops import rms_norm


def hf_activation(module: torch.nn.Module) -> Callable[[Tensor], Tensor]:
    """The function behind a transformers activation module; the module itself when no plain equivalent is known."""
    if isinstance(module, GELUActivation):
        return module.act
    if isinstance(module, (SiLUActivation, torch.nn.SiLU)):
        return F.silu
    return module


@dataclass(slots=True, eq=False)
class RMSNormWeights:
    weight: Tensor
    eps: float

    def __call__(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


@dataclass(slots=True, eq=False)
class LayerNormWeights:
    weight: Tensor
    bias: Tensor | None
    eps: float

    def __call__(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


def per_head_rows(cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotary rows [capacity, 1, hd]: one position's cos/sin broadcast over the heads of [T, heads, hd]."""
    return cos[:, None], sin[:, None]


@dataclass(slots=True, eq=False)
class Decoder:
    heads: int
    kv_heads: int
    head_dim: int
    embed: Tensor
    layers: Sequence  # the family's layer dataclass, one per decoder layer
    final_norm: Callable[[Tensor], Tensor]
    # rotary models: transformers' rotary module (its inv_freq / attention_scaling) and how a layer wants its rows
    rotary: torch.nn.Module | None = None
    rotary_rows: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] = per_head_rows
    # learned positions [n, H] (GPT-2), added to the embeddings; n caps the sequence
    positions: Tensor | None = None
