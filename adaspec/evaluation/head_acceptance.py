"""Acceptance of feature heads (EAGLE, MTP depths, Medusa heads), teacher-forced on the target's greedy
continuations, without running the speculative loop.

Every head is read in one convention, the multi-token heads': depth k at position i (the target's features
of position i) proposes token i+k+1. A decoding step after seq[:n] starts at i = n-2 (the features the last
verification produced) and its depth-1 proposal is the token at n. On a greedy continuation the target's
next token is the data token, and a chained head (MTP, EAGLE) feeds its own proposals, which equal the data
tokens as long as they are accepted: so a step accepts exactly the leading depths k whose argmax at i
equals token i+k+1. Every continuation position is treated as a step start (the usual teacher-forced
estimate). A family gives its heads in this convention as its `teacher_forced` forward
(adaspec.drafters.family; EAGLE's unroll step j is its depth j+1, adaspec.drafters.eagle.training).

`head_acceptance` gives the accepted length of γ = D steps; `analytic_alpha` the analytic α of a head, as
adaspec.decoding.acceptance gives it for a draft LM: its depth-1 proposal (what every step drafts first,
and all it drafts at γ = 1) against the target's distribution for the same token.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from transformers import PreTrainedModel

from adaspec.decoding.acceptance import Continuations, agreement_and_overlap
from adaspec.drafters import drafter_family
from adaspec.drafters.family import HeadForward
from adaspec.models.target import FINAL, features


def _right_pad(seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def leading_correct(depth_logits: list[Tensor], ids: Tensor, lengths: list[int], prompt_lengths: list[int]) -> Tensor:
    """Accepted length (0..D) of a step at every judged position, 1-D over the batch's step starts: positions
    i >= prompt_length - 2 whose D depths all predict tokens inside the sequence (i + D + 1 < length)."""
    d = len(depth_logits)
    out = []
    for b, (length, plen) in enumerate(zip(lengths, prompt_lengths)):
        first, last = max(plen - 2, 0), length - d - 2
        if last < first:
            continue
        positions = torch.arange(first, last + 1, device=ids.device)
        ok = torch.stack(
            [depth_logits[k - 1][b, positions].argmax(-1) == ids[b, positions + k + 1] for k in range(1, d + 1)]
        )
        out.append(ok.long().cumprod(0).sum(0))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _batches(
    target: PreTrainedModel, data: Continuations, layers: tuple[int, ...], batch_size: int
) -> Iterator[tuple[Tensor, Tensor, Tensor, list[int], list[int]]]:
    """(target logits [B, T, V], the layers concatenated [B, T, layers * H], ids, lengths, prompt lengths) of
    right-padded batches of the continuations, one target forward each."""
    device = next(target.parameters()).device
    for s in range(0, len(data.sequences), batch_size):
        seqs, plens = data.sequences[s : s + batch_size], data.prompt_lengths[s : s + batch_size]
        ids, mask = (x.to(device) for x in _right_pad(seqs))
        logits, hidden = features(target, {"input_ids": ids, "attention_mask": mask}, layers)
        yield logits, torch.cat(list(hidden), dim=-1), ids, [len(x) for x in seqs], list(plens)


@torch.inference_mode()
def head_acceptance(
    forward: HeadForward,
    target: PreTrainedModel,
    data: Continuations,
    depth: int,
    batch_size: int = 16,
    layers: tuple[int, ...] = (FINAL,),
) -> dict[str, float]:
    """accept_length: mean tokens a greedy step at γ = D accepts; alpha_depth{k}: acceptance of depth k
    given depths < k accepted (the per-position acceptance of SpecStats); n_steps judged."""
    lengths_all: list[Tensor] = []
    for _, hidden, ids, lengths, plens in _batches(target, data, layers, batch_size):
        lengths_all.append(leading_correct(forward(hidden, ids), ids, lengths, plens).cpu())
    accepted = torch.cat(lengths_all) if lengths_all else torch.zeros(0, dtype=torch.long)
    n = accepted.numel()
    out = {"accept_length": float(accepted.float().mean()) if n else float("nan"), "n_steps": float(n)}
    for k in range(1, depth + 1):
        reached = int((accepted >= k - 1).sum())
        out[f"alpha_depth{k}"] = int((accepted >= k).sum()) / reached if reached else float("nan")
    return out


def drafter_forward(drafter: object, depth: int = 1) -> tuple[tuple[int, ...], HeadForward] | None:
    """(target layers read, teacher-forced forward of `depth` depths) of a head drafter whose family has one
    (its `teacher_forced`); None for any other drafter (a draft LM is scored by adaspec.decoding.acceptance)."""
    family = drafter_family(drafter)
    if family is None or family.teacher_forced is None:
        return None
    return drafter.hidden_layers, family.teacher_forced(drafter, depth)  # type: ignore[attr-defined]


@torch.inference_mode()
def analytic_alpha(
    drafter: object, target: PreTrainedModel, data: Continuations, batch_size: int = 16, temperature: float = 1.0
) -> dict[str, float] | None:
    """A head's analytic α over the continuation positions of `data` (None when `drafter` is no head).

    Token j of a continuation is scored by the head's depth-1 proposal at position j-2 against the target's
    logits at j-1 (the distribution the target verifies it with): alpha_greedy (top-1 agreement),
    alpha_sampling (mean Σ min(p, q) at `temperature`) and n_tokens, every continuation token with a target
    feature before its previous token (all of them once a prompt has two tokens; decoding drafts nothing
    earlier either)."""
    found = drafter_forward(drafter, 1)
    if found is None:
        return None
    layers, forward = found
    agree = overlap = 0.0
    n = 0
    for logits, hidden, ids, lengths, plens in _batches(target, data, layers, batch_size):
        q_all = forward(hidden, ids)[0]
        width = min(q_all.shape[1], logits.shape[1] - 1)
        i = torch.arange(width, device=ids.device)
        score = (i[None] >= torch.tensor([p - 2 for p in plens], device=ids.device)[:, None]) & (
            i[None] <= torch.tensor([n_ - 3 for n_ in lengths], device=ids.device)[:, None]
        )
        if not score.any():
            continue
        q_logits = q_all[:, :width][score].float()
        p_logits = logits[:, 1 : width + 1, : q_logits.shape[-1]][score].float()
        a, o = agreement_and_overlap(p_logits, q_logits, temperature)
        agree, overlap, n = agree + a, overlap + o, n + int(score.sum())
    if n == 0:
        return {"alpha_greedy": float("nan"), "alpha_sampling": float("nan"), "n_tokens": 0}
    return {"alpha_greedy": agree / n, "alpha_sampling": overlap / n, "n_tokens": n}
