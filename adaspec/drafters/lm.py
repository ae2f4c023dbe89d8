"""A separate small causal LM as the drafter (DistillSpec / AdaSPEC draft models)."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from adaspec.decoding.sampling import logits_to_probs, sample
from adaspec.decoding.target import CachedLM


class LMDrafter:
    """Drafts autoregressively from its own KV cache.

    Cache invariant: the draft holds a prefix seq[:k] of the accepted tokens, k < n; it catches up on
    seq[k:n] (the correction or bonus token, and after a fully accepted step the last proposal it never
    fed) in its first forward of the next step, so nothing accepted is recomputed.
    """

    hidden_layers: tuple[int, ...] = ()
    max_gamma: int | None = None

    def __init__(self, model: PreTrainedModel, vocab: int):
        self.model, self.vocab = model, vocab
        self.lm = CachedLM(model, vocab, "draft")

    def prefill(self, prompt: Tensor, hidden: Tensor | None) -> None:
        self.lm = CachedLM(self.model, self.vocab, "draft")
        if prompt.numel() > 1:  # the prompt's last token is fed by the first proposal step
            self.lm.forward(prompt[:-1])

    def propose(self, seq: Tensor, n: int, gamma: int, temperature: float, top_p: float,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
        feed = seq[self.lm.seen:n]
        proposals, draft_probs = [], []
        for _ in range(gamma):
            logits = self.lm.forward(feed)[0][0]
            if temperature == 0:
                feed = logits.argmax(-1, keepdim=True)
            else:
                q = logits_to_probs(logits, temperature, top_p)
                feed = sample(q, generator)
                draft_probs.append(q)
            proposals.append(feed)
        return torch.cat(proposals), torch.stack(draft_probs) if draft_probs else None

    def accept(self, n: int, hidden: Tensor | None) -> None:
        self.lm.crop(n - 1)
