"""The target's frozen pieces a multi-token head reuses: token embedding, final norm, output head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from torch import Tensor, nn
from transformers import PreTrainedModel

from adaspec.models import output_vocab_size
from adaspec.models.target import final_norm, fit_vocab


@dataclass(frozen=True)
class TargetParts:
    """The target's token embedding, final norm and output head (shared views, never copied)."""

    embed: nn.Embedding
    norm: nn.Module
    head: nn.Module
    vocab: int

    def logits(self, h: Tensor) -> Tensor:
        """The target's own output distribution read off a hidden state (final norm, head, vocab fit)."""
        return self.logits_of_normed(self.norm(h.to(next(self.norm.parameters()).dtype)))

    def logits_of_normed(self, h: Tensor) -> Tensor:
        """The target's head (vocab fit) on an already normed state, in the head's dtype."""
        return fit_vocab(self.head(h.to(next(self.head.parameters()).dtype)), self.vocab)


def target_parts(model: PreTrainedModel, vocab: int | None = None) -> TargetParts:
    vocab = output_vocab_size(model) if vocab is None else vocab
    embed = cast(nn.Embedding, model.get_input_embeddings())  # transformers types it as any nn.Module
    return TargetParts(embed, final_norm(model), model.get_output_embeddings(), vocab)
