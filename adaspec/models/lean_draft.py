"""A faster one-token decode step for small GPT-NeoX draft models.

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

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from adaspec.models.lean import LeanLM
from adaspec.models.target import fit_vocab


def _or_zeros(bias: Tensor | None, n: int, like: Tensor) -> Tensor:
    return like.new_zeros(n) if bias is None else bias


class DraftLeanLM(LeanLM):
    """`LeanLM` with the folded layer (see the module docstring) where the model's layers allow it."""

    def __init__(self, model, vocab: int, name: str = "draft", hidden_layers: Sequence[int] = (),
                 max_length: int | None = None):
        super().__init__(model, vocab, name, hidden_layers, max_length)
        self._folded = self._fold() if self._foldable() else None
        if self._folded is not None:
            self._block = self._folded_block

    def _foldable(self) -> bool:
        return self.family == "gpt_neox" and all(layer[16] and layer[2] == layer[10] for layer in self._layers)

    @torch.no_grad()
    def _fold(self) -> list[tuple]:
        folded = []
        for (n1, b1, eps, wqkv, bqkv, wo, bo, scale, n2, b2, _, wi, bi, wd, bd, act, _) in self._layers:
            h = n1.shape[0]
            w_in = torch.cat([wqkv * n1, wi * n2])  # LN(x) @ W.T == norm(x) @ (W * n).T + W @ b
            b_in = torch.cat([_or_zeros(bqkv, wqkv.shape[0], n1) + wqkv @ _or_zeros(b1, h, n1),
                              _or_zeros(bi, wi.shape[0], n1) + wi @ _or_zeros(b2, h, n1)])
            w_out = torch.cat([wo, wd], dim=1)  # dense(a) + mlp_out(m) == [a | m] @ [Wo | Wd].T
            b_out = _or_zeros(bo, h, n1) + _or_zeros(bd, h, n1)
            # addmm over [in, out] copies: the matmul reads them without a transpose
            folded.append((w_in.t().contiguous(), b_in, w_out.t().contiguous(), b_out, eps, scale,
                           wqkv.shape[0], act))
        return folded

    def _folded_block(self, layer: int, x: Tensor, cos: Tensor, sin: Tensor, s: int, e: int,
                      mask: Tensor | None, causal: bool) -> Tensor:
        w_in, b_in, w_out, b_out, eps, scale, split, act = self._folded[layer]
        T, width = x.shape
        y = torch.addmm(b_in, F.layer_norm(x, (width,), None, None, eps), w_in)
        qkv = self._rotate(y[:, :split].view(T, self.heads, 3, self.head_dim), cos, sin)
        self._kv[layer][:, :, s:e].copy_(qkv[:, :, 1:].permute(2, 1, 0, 3))
        a = self._attend(layer, qkv[:, :, 0], s, e, mask, causal, scale)
        return torch.addmm(b_out, torch.cat([a, act(y[:, split:])], dim=1), w_out) + x

    def _forward(self, tokens: Tensor, keep: int, positions: Tensor | None, tree_mask: Tensor | None
                 ) -> tuple[Tensor, Tensor | None]:
        """A draft's usual call, one token after a chain, in straight-line code (on a model this small the
        generic path's Python costs as much as its ops); everything else goes through LeanLM."""
        if (self._folded is None or tokens.shape[0] != 1 or positions is not None or tree_mask is not None
                or self.hidden_layers):
            return super()._forward(tokens, keep, positions, tree_mask)
        if tokens.device != self.device:
            tokens = tokens.to(self.device)
        s = self.seen
        e = s + 1
        self._reserve(e)
        x = F.embedding(tokens, self._embed)
        width, heads, hd, perm = x.shape[1], self.heads, self.head_dim, self._perm
        cos, sin = self._cos_rows[s], self._sin_rows[s]  # [1, 3, hd]: q and k rotated, v kept
        for kv, keys, values, (w_in, b_in, w_out, b_out, eps, scale, split, act) in zip(
                self._kv, self._keys4, self._values4, self._folded):
            y = torch.addmm(b_in, F.layer_norm(x, (width,), None, None, eps), w_in)
            qkv = y[:, :split].view(heads, 3, hd)
            qkv = torch.addcmul(qkv * cos, qkv.index_select(-1, perm), sin)
            kv[:, :, s].copy_(qkv[:, 1:].transpose(0, 1))
            a = F.scaled_dot_product_attention(qkv[None, :, 0:1], keys[:, :, :e], values[:, :, :e], scale=scale)
            x = torch.addmm(b_out, torch.cat([a.view(1, width), act(y[:, split:])], dim=1), w_out) + x
        self.seen = e
        weight, bias = self._head
        logits = F.linear(self._final_norm(x), weight, bias)
        if logits.dtype != torch.float32:
            logits = logits.float()
        if self.own_vocab != self.vocab:
            logits = fit_vocab(logits, self.vocab)
        return logits, None
