"""A reduced draft vocabulary for feature heads: the N most frequent response tokens of the training data.

Maps as the EAGLE-3 reference and SpecForge write them (specforge/data/preprocessing.py
`process_token_dict_to_mappings`): the draft ids are the chosen target ids in increasing order;
`d2t[d]` is the OFFSET target_id - draft_id (so target_id = d + d2t[d]); `t2d` is a bool mask over the target
vocabulary. Proposals are always target ids; a draft distribution has q = 0 outside the draft vocabulary.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Sequence

import torch
from torch import Tensor

from adaspec.errors import AdaspecError


def frequent_tokens(token_lists: Iterable[Sequence[int]], size: int, vocab_size: int) -> Tensor:
    """The `size` most frequent ids in `token_lists` (e.g. response tokens), sorted increasing.

    Ties go to the smaller id; when fewer than `size` distinct ids occur, the smallest unseen ids fill up
    (as SpecForge does), so the result always has exactly `size` ids.
    """
    if not 0 < size <= vocab_size:
        raise AdaspecError(f"draft vocabulary size must be in 1..{vocab_size}, got {size}")
    counts: Counter[int] = Counter()
    for ids in token_lists:
        counts.update(int(i) for i in ids)
    bad = [i for i in counts if not 0 <= i < vocab_size]
    if bad:
        raise AdaspecError(f"token id {min(bad)} is outside the {vocab_size}-token target vocabulary")
    ranked = sorted(counts, key=lambda i: (-counts[i], i))[:size]
    chosen = set(ranked)
    for i in range(vocab_size):
        if len(chosen) >= size:
            break
        chosen.add(i)
    return torch.tensor(sorted(chosen), dtype=torch.long)


def vocab_maps(token_ids: Tensor, vocab_size: int) -> tuple[Tensor, Tensor]:
    """(d2t offsets [N] long, t2d mask [vocab_size] bool) for the draft vocabulary `token_ids` (increasing)."""
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten().cpu()
    if ids.numel() == 0:
        raise AdaspecError("the draft vocabulary is empty")
    if bool((ids[1:] <= ids[:-1]).any()):
        raise AdaspecError("draft vocabulary ids must be strictly increasing (sorted, no duplicates)")
    if int(ids[0]) < 0 or int(ids[-1]) >= vocab_size:
        raise AdaspecError(f"draft vocabulary ids must lie in 0..{vocab_size - 1}")
    d2t = ids - torch.arange(ids.numel())
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[ids] = True
    return d2t, t2d


def draft_ids(d2t: Tensor) -> Tensor:
    """The target id of every draft id: arange(N) + d2t."""
    return torch.arange(d2t.numel(), device=d2t.device) + d2t


def to_target_space(draft_values: Tensor, d2t: Tensor, vocab_size: int) -> Tensor:
    """Scatter [..., N] values over the draft vocabulary into [..., vocab_size] (zeros elsewhere): draft
    probabilities become target-space distributions with q = 0 outside the draft vocabulary."""
    out = draft_values.new_zeros(*draft_values.shape[:-1], vocab_size)
    return out.index_copy_(-1, draft_ids(d2t), draft_values)


def restrict_to_draft(target_values: Tensor, d2t: Tensor) -> Tensor:
    """[..., vocab_size] target-space values (e.g. the target's logits) -> [..., N] on the draft vocabulary."""
    return target_values.index_select(-1, draft_ids(d2t))
