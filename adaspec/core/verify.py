"""The acceptance rule of speculative decoding, as one pure function (Leviathan et al. 2023; Chen et al. 2023).

A chain of γ proposals x_1..x_γ is a token tree of width one: node i's parent is node i − 1 and the root
is the last accepted token. The rule walks the chain from the root and stops at the first rejected node;
the tree rule (adaspec.core.tree) generalises the walk to several children per node.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def greedy_accepted(proposals: Sequence[int], target_argmax: Sequence[int]) -> int:
    """How many proposals greedy verification keeps: the length of their common prefix with the target's
    argmax tokens (target_argmax[i] follows proposal i - 1; row 0 follows the root). `verify_chain` on the
    one-hot rows gives the same count; this is its host-side form for a loop that reads both lists anyway."""
    for i, token in enumerate(proposals):
        if token != target_argmax[i]:
            return i
    return len(proposals)


def verify_chain(
    target_probs: Tensor, proposals: Tensor, draft_probs: Tensor | None = None, uniforms: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(accepted, next_probs): how many proposals the target keeps and the distribution of the token after them.

    target_probs [γ+1, V]: row i is the target's distribution for the token after proposal i (row 0 after
    the root), temperature and top-p applied (one-hot rows when greedy). proposals [γ] long. draft_probs
    [γ, V] and uniforms [γ] (U[0, 1)) are None for greedy verification. `accepted` is a 0-d long tensor
    k in [0, γ] and `next_probs` [V] the distribution to draw the correction token (k < γ) or the bonus
    token (k = γ) from. Everything stays on the device: the caller's single host sync reads k.
    """
    gamma = proposals.shape[0]
    idx = proposals.view(-1, 1)
    p_x = target_probs[:gamma].gather(1, idx).view(-1)
    if draft_probs is None:
        # Greedy: accept while the proposal is the target's argmax; then the target's argmax (a one-hot row)
        # is the correction at the first mismatch, or the bonus token after all γ.
        ok = proposals == target_probs[:gamma].argmax(-1)
        accepted = ok.long().cumprod(0).sum()
        return accepted, target_probs.index_select(0, accepted.view(1))[0]
    assert uniforms is not None, "sampled verification draws one uniform per proposal"
    # Sampling: accept x_i with probability min(1, p_i(x_i) / q_i(x_i)), i.e. iff u_i * q_i(x_i) < p_i(x_i);
    # stop at the first rejection.
    ok = uniforms * draft_probs.gather(1, idx).view(-1) < p_x
    accepted = ok.long().cumprod(0).sum()
    # On the first rejection (position i) resample from norm(max(0, p_i − q_i)); after all γ accepted, the
    # bonus token comes from p_γ (its q row is zero). A zero residual (p = q) falls back to p itself.
    q_padded = torch.cat([draft_probs, draft_probs.new_zeros(1, draft_probs.shape[-1])])
    residual = (target_probs - q_padded).clamp_min(0).index_select(0, accepted.view(1))[0]
    mass = residual.sum()
    row = target_probs.index_select(0, accepted.view(1))[0]
    return accepted, torch.where(mass > 0, residual / mass, row)
