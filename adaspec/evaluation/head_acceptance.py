"""Greedy acceptance of multi-token heads (MTP depths, Medusa heads), teacher-forced on the target's greedy
continuations, without running the speculative loop.

On a greedy continuation the target's next token is the data token, and the MTP chain feeds its own
proposals, which equal the data tokens as long as they are accepted. So a decoding step starting after
seq[:n] (features of position i = n-2) accepts exactly the leading depths k whose argmax at i equals token
i+k+1. Every continuation position is treated as a step start (the usual teacher-forced estimate).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from transformers import PreTrainedModel

from adaspec.decoding.target import FINAL, features
from adaspec.evaluation.acceptance import Continuations

HeadForward = Callable[[Tensor, Tensor], list[Tensor]]  # (hidden [B,T,H], ids [B,T]) -> per-depth logits


def _right_pad(seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def leading_correct(depth_logits: list[Tensor], ids: Tensor, lengths: list[int], prompt_lengths: list[int]
                    ) -> Tensor:
    """Accepted length (0..D) of a step at every judged position, 1-D over the batch's step starts: positions
    i >= prompt_length - 2 whose D depths all predict tokens inside the sequence (i + D + 1 < length)."""
    d = len(depth_logits)
    out = []
    for b, (length, plen) in enumerate(zip(lengths, prompt_lengths)):
        first, last = max(plen - 2, 0), length - d - 2
        if last < first:
            continue
        positions = torch.arange(first, last + 1, device=ids.device)
        ok = torch.stack([depth_logits[k - 1][b, positions].argmax(-1) == ids[b, positions + k + 1]
                          for k in range(1, d + 1)])
        out.append(ok.long().cumprod(0).sum(0))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


@torch.inference_mode()
def head_acceptance(forward: HeadForward, target: PreTrainedModel, data: Continuations, depth: int,
                    batch_size: int = 16) -> dict[str, float]:
    """accept_length: mean tokens a greedy step at γ = D accepts; alpha_depth{k}: acceptance of depth k
    given depths < k accepted (the per-position acceptance of SpecStats); n_steps judged."""
    device = next(target.parameters()).device
    lengths_all: list[Tensor] = []
    for s in range(0, len(data.sequences), batch_size):
        seqs, plens = data.sequences[s:s + batch_size], data.prompt_lengths[s:s + batch_size]
        ids, mask = _right_pad(seqs)
        ids, mask = ids.to(device), mask.to(device)
        _, hidden = features(target, {"input_ids": ids, "attention_mask": mask}, (FINAL,))
        lengths_all.append(leading_correct(forward(hidden[0], ids), ids, [len(x) for x in seqs], plens).cpu())
    accepted = torch.cat(lengths_all) if lengths_all else torch.zeros(0, dtype=torch.long)
    n = accepted.numel()
    out = {"accept_length": float(accepted.float().mean()) if n else float("nan"), "n_steps": float(n)}
    for k in range(1, depth + 1):
        reached = int((accepted >= k - 1).sum())
        out[f"alpha_depth{k}"] = int((accepted >= k).sum()) / reached if reached else float("nan")
    return out
