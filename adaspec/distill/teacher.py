"""The teacher signal of distillation: per-token divergences of a drafter from the target, and of the
reference model, computed from live frozen models or read from an offline cache (`adaspec cache`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from adaspec.data import Batch
from adaspec.distill import losses
from adaspec.distill.cache_store import TeacherCache


@dataclass(frozen=True)
class TopK:
    """A cached teacher in place of the target's logits [..., V]: its top-K ids [..., K] and log-probabilities
    [..., K] at the distillation temperature (the rest is a tail bucket, `losses.sparse_divergence`).
    Indexing the leading dims indexes both, as for logits. With `sink`, id V (one past the drafter's
    vocabulary) marks entries with no drafter token (log-probability -inf): `divergence` scores the
    drafter with an extra column of probability 0 there."""

    ids: Tensor
    logprobs: Tensor
    sink: bool = False

    def __getitem__(self, key: Any) -> TopK:
        return TopK(self.ids[key], self.logprobs[key], self.sink)

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape


def divergence(
    kind: str, teacher: Tensor | TopK, q_logits: Tensor, temperature: float = 1.0, beta: float = 0.5
) -> Tensor:
    """Per-token divergence `kind` of the drafter's logits from a teacher given as logits (exact,
    `losses.per_token_divergence`) or as a cached `TopK` (`losses.sparse_divergence`)."""
    if isinstance(teacher, Tensor):
        return losses.per_token_divergence(kind, teacher, q_logits, temperature=temperature, beta=beta)
    if teacher.sink:
        q_logits = torch.nn.functional.pad(q_logits, (0, 1), value=-math.inf)
    return losses.sparse_divergence(kind, teacher.ids, teacher.logprobs, q_logits, temperature=temperature, beta=beta)


def shifted_logits(model: torch.nn.Module, batch: Batch, vocab: int) -> Tensor:
    """[B, T-1, vocab] logits aligned with `data.response_mask`: position t scores token t+1."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :vocab]


class Teacher:
    """Divergences L(p_target ‖ q) per shifted position; with a cache no target/reference forward runs.

    `delta_divergence` (default: `divergence`) is the quantity AdaSPEC's Δ is measured in, for the draft and
    the reference alike; the draft trains on `divergence`."""

    def __init__(
        self,
        divergence: str,
        temperature: float,
        beta: float,
        vocab: int,
        target: torch.nn.Module | None = None,
        ref: torch.nn.Module | None = None,
        cache: TeacherCache | None = None,
        delta_divergence: str | None = None,
    ):
        if (target is None) == (cache is None):
            raise ValueError("a teacher needs exactly one of a live target and a cache")
        self.divergence, self.temperature, self.beta, self.vocab = divergence, temperature, beta, vocab
        self.delta_divergence = delta_divergence or divergence
        self.target, self.ref, self.cache = target, ref, cache

    def divergences(
        self, q_logits: Tensor, batch: Batch, with_ref: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(the training loss L(p‖q) [B, T-1] with gradient to q_logits, and with `with_ref` the draft's and
        the reference's divergence in the Δ quantity, without gradient; else None, None)."""
        same = self.delta_divergence == self.divergence
        if self.cache is not None:
            c = self.cache.batch(batch["index"].tolist(), batch["input_ids"].shape[1], q_logits.device)

            def sparse(kind: str, logits: Tensor) -> Tensor:
                return losses.sparse_divergence(
                    kind, c["topk_ids"], c["topk_logprobs"], logits, temperature=self.temperature, beta=self.beta
                )

            div = sparse(self.divergence, q_logits)
            if not with_ref:
                return div, None, None
            with torch.no_grad():
                draft_delta = div.detach() if same else sparse(self.delta_divergence, q_logits.detach())
            return div, draft_delta, c.get("ref_div")
        with torch.no_grad():
            p_logits = shifted_logits(self.target, batch, self.vocab)

        def dense(kind: str, logits: Tensor) -> Tensor:
            return losses.per_token_divergence(kind, p_logits, logits, temperature=self.temperature, beta=self.beta)

        div = dense(self.divergence, q_logits)
        if not with_ref:
            return div, None, None
        with torch.no_grad():
            draft_delta = div.detach() if same else dense(self.delta_divergence, q_logits.detach())
            ref_div = dense(self.delta_divergence, shifted_logits(self.ref, batch, self.vocab))
        return div, draft_delta, ref_div
