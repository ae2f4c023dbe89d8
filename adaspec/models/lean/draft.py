"""A faster layer for small GPT-NeoX draft models.

Speculative decoding is lossless whatever numbers the draft computes (the acceptance rule sees the draft's own
probabilities), so a draft's forward need not follow transformers op for op; on a small model every op is mostly
call overhead. In GPT-NeoX's parallel-residual layer both LayerNorms read the same input, so their affines fold
into one [q k v | mlp-in] matrix applied after a plain normalisation, and the attention and MLP output
projections, whose sum the layer returns, become one [dense | mlp-out] matrix: a layer is one normalisation,
two matmuls, the rotation, one cache write and SDPA. Same function as the HF layer up to float rounding (tested
at the lean path's tolerance).

The folded matrices are copies made when the model is wrapped: `speculative_generate` wraps a draft model per
call, so changed weights are seen at the next call. Other families and sequential residuals run `LeanLM`'s
own layers; everything around the layers (cache, masks, trees, head) is `LeanLM`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from adaspec.models.lean.gpt_neox import NeoxLayer
from adaspec.models.lean.lm import LeanLM
from adaspec.models.lean.ops import attend, rotate


def _or_zeros(bias: Tensor | None, n: int, like: Tensor) -> Tensor:
    return like.new_zeros(n) if bias is None else bias


@dataclass(slots=True, eq=False)
class FoldedNeoxLayer:
    """A parallel-residual GPT-NeoX layer with its LayerNorm affines folded into the matmuls (module docstring);
    the matrices stored [in, out] so addmm reads them without a transpose."""

    w_in: Tensor  # [H, 3H + I]: [q k v | mlp-in]
    b_in: Tensor
    w_out: Tensor  # [H + I, H]: [dense | mlp-out]
    b_out: Tensor
    eps: float
    scale: float
    split: int  # columns of w_in that are [q k v]
    act: Callable[[Tensor], Tensor]

    @classmethod
    @torch.no_grad()
    def fold(cls, layer: NeoxLayer) -> FoldedNeoxLayer:
        n1, n2, wqkv, wi = layer.input_norm, layer.post_norm, layer.qkv, layer.mlp_in
        h = n1.shape[0]
        w_in = torch.cat([wqkv * n1, wi * n2])  # LN(x) @ W.T == norm(x) @ (W * n).T + W @ b
        b_in = torch.cat(
            [
                _or_zeros(layer.qkv_bias, wqkv.shape[0], n1) + wqkv @ _or_zeros(layer.input_norm_bias, h, n1),
                _or_zeros(layer.mlp_in_bias, wi.shape[0], n1) + wi @ _or_zeros(layer.post_norm_bias, h, n1),
            ]
        )
        w_out = torch.cat([layer.dense, layer.mlp_out], dim=1)  # dense(a) + mlp_out(m) == [a | m] @ [Wo | Wd].T
        b_out = _or_zeros(layer.dense_bias, h, n1) + _or_zeros(layer.mlp_out_bias, h, n1)
        return cls(
            w_in.t().contiguous(),
            b_in,
            w_out.t().contiguous(),
            b_out,
            layer.input_eps,
            layer.scale,
            wqkv.shape[0],
            layer.act,
        )

    def forward(
        self, lm: LeanLM, i: int, x: Tensor, cos: Tensor, sin: Tensor, s: int, e: int, mask: Tensor | None, causal: bool
    ) -> Tensor:
        T, width = x.shape
        y = torch.addmm(self.b_in, F.layer_norm(x, (width,), None, None, self.eps), self.w_in)
        qkv = rotate(y[:, : self.split].view(T, lm.heads, 3, lm.head_dim), lm._perm, cos, sin)
        cache = lm.cache
        cache.kv[i].narrow(2, s, e - s).copy_(qkv[:, :, 1:].permute(2, 1, 0, 3))
        a = attend(qkv[:, :, 0:1], cache.keys4[i], cache.values4[i], e, mask, causal, self.scale, lm._gqa)
        return torch.addmm(self.b_out, torch.cat([a, self.act(y[:, self.split :])], dim=1), self.w_out) + x


class DraftLeanLM(LeanLM):
    """`LeanLM` running `FoldedNeoxLayer`s where the model's layers allow it (parallel residual, one eps)."""

    def __init__(
        self, model, vocab: int, name: str = "draft", hidden_layers: Sequence[int] = (), max_length: int | None = None
    ):
        super().__init__(model, vocab, name, hidden_layers, max_length)
        foldable = self.family == "gpt_neox" and all(
            layer.parallel and layer.input_eps == layer.post_eps for layer in self._layers
        )
        self._folded = [FoldedNeoxLayer.fold(layer) for layer in self._layers] if foldable else None
        if self._folded is not None:
            self._layers = self._folded
