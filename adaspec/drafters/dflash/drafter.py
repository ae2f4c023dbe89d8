"""The DFlash head as a drafter of the speculative-decoding engine (adaspec.decoding.drafter.Drafter).

State, with seq[:n] accepted: each layer's keys and values of the context, built from the target's real
features of positions 0..n-2 as they arrive (`prefill`, `accept`); the block's own rows are cropped off
after each step, since every step recomputes them. A step runs ONE forward of the block
[seq[n-1], MASK × γ] at positions n-1..n-1+γ, γ + 1 rows as vLLM runs it for num_speculative_tokens = γ,
so the two engines draft the same tokens; slot j's distribution is q_j, from which proposal j is taken
(argmax, or one sample per slot), so the engine's usual verification applies unchanged. Trees: slot d's
top-k are the children of every depth d-1 node (`per_depth_expand`), as for MTP.

Decoding runs the head on `LeanDFlash`, its view on the lean decode path (adaspec.drafters.lean_layer, as
EAGLE and MTP heads decode): on this CPU a step's γ + 1 rows cost mostly per-op overhead, which the modules'
unfused projections, recomputed rotary angles and per-layer `torch.cat` of the whole context multiplied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor
from transformers import PreTrainedModel

from adaspec.core.sampling import Sampling
from adaspec.core.tree import Tree
from adaspec.core.tree_drafting import per_depth_expand
from adaspec.core.tree_shape import TreeShape
from adaspec.drafters.dflash.model import DFlashHead, DFlashLayer
from adaspec.drafters.lean_layer import LeanLayer, rms_norm, weight_versions
from adaspec.drafters.target_parts import TargetParts, target_parts
from adaspec.errors import AdaspecError
from adaspec.models import output_vocab_size


class LeanDFlash:
    """`DFlashHead`'s decode (context rows, then one non-causal block) on the lean path: one `LeanLayer` per
    draft layer, whose KV cache holds the context rows 0..length-1, the block appended after them and
    cropped off again."""

    def __init__(self, head: DFlashHead, parts: TargetParts):
        cfg = head.config
        self.head, self.parts, self.mask_id = head, parts, cfg.mask_token_id
        self.w_fc = head.fc.weight.detach().t().contiguous()
        self.mask = head.mask_embedding.detach()[None]
        self.layers = [
            LeanLayer(
                layer.self_attn,
                layer.post_attention_layernorm,
                layer.mlp,
                cfg.num_heads,
                cfg.num_kv_heads,
                cfg.head_dim,
                cfg.rope_theta,
                qk_norms=(layer.self_attn.q_norm, layer.self_attn.k_norm),
            )
            for layer in cast("Sequence[DFlashLayer]", head.layers)
        ]
        self.length = 0

    def crop(self, length: int) -> None:
        self.length = length
        for layer in self.layers:
            layer.crop(length)

    def append(self, features: Tensor) -> None:
        """The context rows of target features [m, layers * H] (`DFlashHead.context`) after the cached ones."""
        ctx = rms_norm(features.to(self.w_fc.dtype) @ self.w_fc, self.head.hidden_norm)
        for layer in self.layers:
            layer.append(ctx)
        self.length += features.shape[0]

    def block(self, last: Tensor, gamma: int) -> Tensor:
        """The normed outputs of slots 1..γ of the block [last, MASK × γ] at positions length..length+γ, [γ, H]."""
        # `DFlashHead.embed`: the mask embedding stands for the mask id wherever it occurs, the last token too
        first = self.mask if int(last) == self.mask_id else self.parts.embed(last[None]).to(self.mask.dtype)
        x = torch.cat([first, self.mask.expand(gamma, -1)])
        for layer, module in zip(self.layers, cast("Sequence[DFlashLayer]", self.head.layers)):
            x = layer.run(rms_norm(x, module.input_layernorm), x, causal=False)
            layer.crop(self.length)
        return rms_norm(x[1:], self.head.norm)


class DFlashDrafter:
    def __init__(self, head: DFlashHead, target: PreTrainedModel, vocab: int | None = None):
        self.head = head.eval()
        self.parts = target_parts(target, vocab)
        if self.parts.vocab != head.config.vocab_size:
            raise AdaspecError(
                f"the DFlash head was trained for a {head.config.vocab_size}-token vocabulary, "
                f"the target has {self.parts.vocab}"
            )
        self.hidden_layers: tuple[int, ...] = head.config.hidden_layers
        self.max_gamma: int | None = head.config.max_gamma
        self.versions: tuple[int, ...] | None = None
        self._reset()

    @classmethod
    def load(cls, path: str, target: PreTrainedModel, vocab: int | None = None) -> DFlashDrafter:
        """The drafter of a head saved by `train-head --kind dflash`, on the target's device and dtype."""
        p = next(target.parameters())
        head = DFlashHead.from_pretrained(path).to(device=p.device, dtype=p.dtype)
        return cls(head, target, vocab or output_vocab_size(target))

    def _reset(self) -> None:
        if self.versions != weight_versions(self.head):  # built at first, and again after training
            self.versions = weight_versions(self.head)
            self.lean = LeanDFlash(self.head, self.parts)
        self.lean.crop(0)

    def _append(self, hidden: Tensor | None) -> None:
        """Context keys and values of the target features [layers, m, H] of the next m positions."""
        if hidden is None or hidden.shape[1] == 0:
            return
        m = hidden.shape[1]
        self.lean.append(hidden.to(self.lean.w_fc.device).permute(1, 0, 2).reshape(m, -1))

    @torch.no_grad()
    def prefill(self, prompt: Tensor, hidden: Tensor | None) -> None:
        self._reset()
        self._append(hidden)

    @torch.no_grad()
    def accept(self, n: int, hidden: Tensor | None) -> None:
        self._append(hidden)
        if self.lean.length != n - 1:
            raise AdaspecError(f"DFlash drafter holds the context of {self.lean.length} positions, expected {n - 1}")

    @torch.no_grad()
    def block_logits(self, seq: Tensor, n: int, gamma: int) -> Tensor:
        """The logits of block slots 1..γ after seq[:n], [γ, V] (float32): slot j's for the token at n-1+j."""
        if not 1 <= gamma <= self.head.config.max_gamma:
            raise AdaspecError(
                f"this DFlash head drafts blocks of {self.head.config.block_size}: at most "
                f"{self.head.config.max_gamma} tokens per step, got gamma {gamma}"
            )
        hidden = self.lean.block(seq[n - 1].to(self.lean.w_fc.device), gamma)
        return self.parts.logits_of_normed(hidden).float()

    @torch.no_grad()
    def propose(self, seq: Tensor, n: int, gamma: int, sampling: Sampling) -> tuple[Tensor, Tensor | None]:
        if n == 1:  # no target feature exists before the first verification: the target takes the step
            return (
                torch.empty(0, dtype=torch.long, device=seq.device),
                None if sampling.greedy else torch.zeros(0, self.parts.vocab, device=seq.device),
            )
        logits = self.block_logits(seq, n, gamma)
        if sampling.greedy:
            return logits.argmax(-1).to(seq.device), None
        q = sampling.probs(logits)
        return sampling.draw(q)[:, 0].to(seq.device), q

    @torch.no_grad()
    def propose_tree(self, seq: Tensor, n: int, shape: TreeShape, sampling: Sampling) -> tuple[Tree, None]:
        if n == 1:
            empty = torch.empty(0, dtype=torch.long, device=seq.device)
            return Tree(empty, empty, empty), None
        logits = self.block_logits(seq, n, shape.depth)
        return shape.build(per_depth_expand(list(logits), sampling)), None

    @torch.no_grad()
    def accept_tree(self, n: int, path: Tensor, hidden: Tensor | None) -> None:
        self.accept(n, hidden)
