"""The target's frozen pieces a multi-token head reuses (embedding, final norm, output head) and one batched
forward that returns the features the heads read when decoding."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn
from transformers import PreTrainedModel

from adaspec.decoding.target import final_norm, fit_vocab
from adaspec.models import output_vocab_size


@dataclass(frozen=True)
class TargetParts:
    """The target's token embedding, final norm and output head (shared views, never copied)."""

    embed: nn.Module
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
    return TargetParts(model.get_input_embeddings(), final_norm(model), model.get_output_embeddings(), vocab)


def final_features(model: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor | None = None
                   ) -> tuple[Tensor, Tensor]:
    """One target forward over a batch: (final normed hidden states [B, T, H], logits [B, T, V_own]),
    the features the heads read at decoding time (hooked, not every layer's output_hidden_states)."""
    captured: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, out: Tensor | tuple) -> None:
        captured.append(out[0] if isinstance(out, tuple) else out)

    handle = final_norm(model).register_forward_hook(hook)
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        handle.remove()
    return captured[-1], logits
