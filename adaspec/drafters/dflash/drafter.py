"""The DFlash head as a drafter of the speculative-decoding engine (adaspec.drafters.base.Drafter).

State, with seq[:n] accepted: each layer's keys and values of the context, built from the target's real
features of positions 0..n-2 as they arrive (`prefill`, `accept`), in a buffer that only grows: the block's
own rows are never cached, since every step recomputes them. A step runs ONE forward of the block
[seq[n-1], MASK × γ] at positions n-1..n-1+γ, γ + 1 rows as vLLM runs it for num_speculative_tokens = γ,
so the two engines draft the same tokens; slot j's distribution is q_j, from which proposal j is taken
(argmax, or one sample per slot), so the engine's usual verification applies unchanged. Trees: slot d's
top-k are the children of every depth d-1 node (`per_depth_expand`), as for MTP.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from adaspec.decoding.sampling import logits_to_probs, sample
from adaspec.decoding.tree import Tree
from adaspec.decoding.tree_shape import TreeShape
from adaspec.drafters.dflash.model import DFlashHead
from adaspec.drafters.target_parts import target_parts
from adaspec.drafters.tree_drafting import per_depth_expand
from adaspec.errors import AdaspecError
from adaspec.models import output_vocab_size


class _ContextCache:
    """One layer's context keys and values [1, kv_heads, length, d], in a buffer doubled when full."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.length = 0

    def append(self, k: Tensor, v: Tensor) -> None:
        end = self.length + k.shape[2]
        if self.k is None or end > self.k.shape[2]:
            cap = max(end, 2 * (0 if self.k is None else self.k.shape[2]), 64)
            new_k, new_v = k.new_empty(*k.shape[:2], cap, k.shape[3]), v.new_empty(*v.shape[:2], cap, v.shape[3])
            if self.k is not None:
                new_k[:, :, : self.length] = self.k[:, :, : self.length]
                new_v[:, :, : self.length] = self.v[:, :, : self.length]
            self.k, self.v = new_k, new_v
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end

    def view(self) -> tuple[Tensor, Tensor]:
        assert self.k is not None and self.v is not None
        return self.k[:, :, : self.length], self.v[:, :, : self.length]


class DFlashDrafter:
    def __init__(self, head: DFlashHead, target: PreTrainedModel, vocab: int | None = None):
        self.head = head.eval()
        self.parts = target_parts(target, vocab)
        if self.parts.vocab != head.config.vocab_size:
            raise AdaspecError(f"the DFlash head was trained for a {head.config.vocab_size}-token vocabulary, "
                               f"the target has {self.parts.vocab}")
        self.hidden_layers: tuple[int, ...] = head.config.hidden_layers
        self.max_gamma: int | None = head.config.max_gamma
        self._reset()

    @classmethod
    def load(cls, path: str, target: PreTrainedModel, vocab: int | None = None) -> DFlashDrafter:
        """The drafter of a head saved by `train-head --kind dflash`, on the target's device and dtype."""
        p = next(target.parameters())
        head = DFlashHead.from_pretrained(path).to(device=p.device, dtype=p.dtype)
        return cls(head, target, vocab or output_vocab_size(target))

    def _reset(self) -> None:
        self.caches = [_ContextCache() for _ in self.head.layers]

    def _append(self, hidden: Tensor | None) -> None:
        """Context keys and values of the target features [layers, m, H] of the next m positions."""
        if hidden is None or hidden.shape[1] == 0:
            return
        m = hidden.shape[1]
        ctx = self.head.context(hidden.permute(1, 0, 2).reshape(1, m, -1))
        start = self.caches[0].length
        positions = torch.arange(start, start + m, device=ctx.device)
        for layer, cache in zip(self.head.layers, self.caches):
            cache.append(*layer.self_attn.keys_values(ctx, positions))

    @torch.no_grad()
    def prefill(self, prompt: Tensor, hidden: Tensor | None) -> None:
        self._reset()
        self._append(hidden)

    @torch.no_grad()
    def accept(self, n: int, hidden: Tensor | None) -> None:
        self._append(hidden)
        if self.caches[0].length != n - 1:
            raise AdaspecError(f"DFlash drafter holds the context of {self.caches[0].length} positions, "
                               f"expected {n - 1}")

    @torch.no_grad()
    def block_logits(self, seq: Tensor, n: int, gamma: int) -> Tensor:
        """The logits of block slots 1..γ after seq[:n], [γ, V] (float32): slot j's for the token at n-1+j."""
        if not 1 <= gamma <= self.head.config.max_gamma:
            raise AdaspecError(f"this DFlash head drafts blocks of {self.head.config.block_size}: at most "
                               f"{self.head.config.max_gamma} tokens per step, got gamma {gamma}")
        device = self.head.fc.weight.device
        ids = self.head.block_ids(seq[n - 1].to(device), gamma + 1)[None]
        x = self.head.embed(self.parts, ids)
        positions = torch.arange(n - 1, n + gamma, device=device)
        for layer, cache in zip(self.head.layers, self.caches):
            x = layer(x, positions, *cache.view(), None)
        return self.parts.logits_of_normed(self.head.norm(x[0, 1:])).float()

    @torch.no_grad()
    def propose(self, seq: Tensor, n: int, gamma: int, temperature: float, top_p: float,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
        if n == 1:  # no target feature exists before the first verification: the target takes the step
            return (torch.empty(0, dtype=torch.long, device=seq.device),
                    None if temperature == 0 else torch.zeros(0, self.parts.vocab, device=seq.device))
        logits = self.block_logits(seq, n, gamma)
        if temperature == 0:
            return logits.argmax(-1).to(seq.device), None
        q = logits_to_probs(logits, temperature, top_p)
        return sample(q, generator)[:, 0].to(seq.device), q

    @torch.no_grad()
    def propose_tree(self, seq: Tensor, n: int, shape: TreeShape, temperature: float, top_p: float,
                     generator: torch.Generator | None) -> tuple[Tree, None]:
        if n == 1:
            empty = torch.empty(0, dtype=torch.long, device=seq.device)
            return Tree(empty, empty, empty), None
        logits = self.block_logits(seq, n, shape.depth)
        return shape.build(per_depth_expand(list(logits), temperature, top_p)), None

    @torch.no_grad()
    def accept_tree(self, n: int, path: Tensor, hidden: Tensor | None) -> None:
        self.accept(n, hidden)
