"""What `train-head` reads off the frozen target per batch: its next-token distribution at every position and
its hidden states of the head's layers, from a live forward or from `adaspec cache --hidden-layers`.

Live: one forward with hooks on those layers (`decoding.target.features`), logits over the output
vocabulary. Cached (`--teacher-cache DIR`): the hidden states as stored (fp16, returned as float32) and the
target's top-K log-probabilities per response token (`distill.teacher.TopK`, scored by
`losses.sparse_divergence` on K + 1 buckets as `distill --teacher-cache` does; exact at K = V); no target
forward runs. Both are laid out alike: teacher [B, T, ...] (position t predicts token t + 1; a cache holds
response positions only, which are the only ones a head's loss reads) and hidden [layers, B, T, H].
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from adaspec.data import Batch, Item
from adaspec.distill.cache_store import TeacherCache
from adaspec.distill.teacher import TopK
from adaspec.models.target import config_dims, features


class TargetSignal:
    """`signal(batch, layers) -> (teacher, hidden)`: logits [B, T, V] or TopK [B, T, K], and the hidden
    states [len(layers), B, T, H] of `layers` (decoding.target ids), live or from a cache."""

    def __init__(self, target: PreTrainedModel, vocab: int, cache: TeacherCache | None = None):
        self.target, self.vocab, self.cache = target, vocab, cache

    def __call__(self, batch: Batch, layers: tuple[int, ...]) -> tuple[Tensor | TopK, Tensor]:
        if self.cache is None:
            with torch.no_grad():
                logits, hidden = features(self.target, batch, layers)
            return logits[..., : self.vocab], hidden
        index, width = batch["index"].tolist(), batch["input_ids"].shape[1]
        device = batch["input_ids"].device
        rows = self.cache.batch(index, width, device)
        # the rows cover shifted positions 0..T-2; position T-1 predicts past the batch and is never scored
        ids, lps = (torch.nn.functional.pad(rows[name], (0, 0, 0, 1)) for name in ("topk_ids", "topk_logprobs"))
        return TopK(ids, lps), self.cache.hidden(index, width, layers, device)


def open_head_cache(
    path: str,
    target_path: str,
    target: PreTrainedModel,
    items: list[Item],
    layers: tuple[int, ...],
    temperature: float | None,
    vocab: int,
) -> TeacherCache:
    """The teacher cache at `path` for a head reading `layers` of this target over `items`, or a one-line
    refusal (another target, tokenizer or data; no hidden states, a missing layer, another hidden size or
    vocabulary; another temperature, unless `temperature` is None: a loss that reads no distribution)."""
    return TeacherCache.open(
        path,
        target_path=target_path,
        ref_path=None,
        items=items,
        divergence=None,
        temperature=temperature,
        vocab=vocab,
        hidden_layers=layers,
        hidden_size=config_dims(target.config)[1],
    )
