"""A reduced draft vocabulary for feature heads: the N most frequent response tokens of the training data.

Maps as the EAGLE-3 reference and SpecForge write them (specforge/data/preprocessing.py
`process_token_dict_to_mappings`): the draft ids are the chosen target ids in increasing order;
`d2t[d]` is the OFFSET target_id - draft_id (so target_id = d + d2t[d]); `t2d` is a bool mask over the target
vocabulary. Proposals are always target ids; a draft distribution has q = 0 outside the draft vocabulary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

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


def restrict_topk_to_draft(ids: Tensor, logprobs: Tensor, t2d: Tensor, floor: float = 1e-8) -> tuple[Tensor, Tensor]:
    """A cached top-K teacher (target ids [..., K], log-probabilities [..., K]) as a distribution over the
    draft vocabulary `t2d` (bool mask over target ids, N of them set): the sparse counterpart of
    `restrict_to_draft` followed by a softmax.

    Returns draft ids [..., K'], with N (a sink one past the draft vocabulary) for the ids outside it, and
    log-probabilities renormalised by the mass left once the top-K mass outside the draft vocabulary is
    removed (floored at `floor`), -inf at the sink. The tail (1 - the top-K mass) is unknown; it is taken to
    lie inside the draft vocabulary, so with K = V this is exactly the target's distribution renormalised
    over the draft vocabulary (SpecForge's `target_p`). K' = min(K, N + 1): the ids inside come first
    (in their order), so only sink entries are dropped."""
    t2d = t2d.to(ids.device)
    n = int(t2d.sum())
    inside = t2d[ids]
    order = torch.sort((~inside).to(torch.uint8), dim=-1, stable=True).indices[..., : min(ids.shape[-1], n + 1)]
    outside_mass = torch.where(inside, 0.0, logprobs.exp()).sum(-1, keepdim=True)
    kept = (1.0 - outside_mass).clamp(min=floor).log()
    ids, logprobs, inside = ids.gather(-1, order), logprobs.gather(-1, order), inside.gather(-1, order)
    draft = torch.where(inside, torch.cumsum(t2d.long(), 0)[ids] - 1, n)
    return draft, torch.where(inside, logprobs - kept, -torch.inf)
