"""A separate small causal LM as the drafter (DistillSpec / AdaSPEC draft models)."""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from adaspec.decoding.sampling import logits_to_probs, sample
from adaspec.decoding.lean import cached_lm


class LMDrafter:
    """Drafts autoregressively from its own KV cache.

    Runs on the lean decode path where the draft's family supports it (adaspec.decoding.lean).
    Cache invariant: the draft holds a prefix seq[:k] of the accepted tokens, k < n; it catches up on
    seq[k:n] (the correction or bonus token, and after a fully accepted step the last proposal it never
    fed) in its first forward of the next step, so nothing accepted is recomputed.
    """

    hidden_layers: tuple[int, ...] = ()
    max_gamma: int | None = None

    def __init__(self, model: PreTrainedModel, vocab: int, lean: bool | None = None):
        self.model, self.vocab = model, vocab
        self.lm = cached_lm(model, vocab, "draft", lean=lean)

    @classmethod
    def load(cls, path: str, target: PreTrainedModel, vocab: int | None = None) -> "LMDrafter":
        """A draft model directory, checked against the target's tokenizer and sizes (models.check_vocab_compatible)."""
        from adaspec.models import check_vocab_compatible, load_model, output_vocab_size, saved_tokenizer

        draft = load_model(path, device=next(target.parameters()).device)
        target_dir = getattr(target, "name_or_path", None)
        check_vocab_compatible(target, draft, saved_tokenizer(target_dir) if target_dir else None,
                               saved_tokenizer(path))
        return cls(draft, vocab or output_vocab_size(target))

    def prefill(self, prompt: Tensor, hidden: Tensor | None) -> None:
        self.lm.crop(0)  # the same preallocated cache serves every sequence
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
