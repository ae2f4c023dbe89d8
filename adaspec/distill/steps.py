"""Distillation of multi-step heads (EAGLE's training-time test, MTP depths, Medusa heads) with the same
divergences and AdaSPEC selection as a draft model.

Step j's logits at position t predict token t + 1 + j (step 0 is the next token). Its teacher is the
target's own distribution for that token, the target's logits at position t + j, and it is scored where
that token is a response token: `data.response_mask(labels)[:, t + j]`. Each step keeps its own top-k by
Δ_j = L(head, step j) − L(reference head, step j), so selection is per depth as the issue asks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adaspec.distill.selection import delta_selection
from adaspec.distill.teacher import TopK, divergence


def step_divergences(
    kind: str, target_logits: Tensor | TopK, step_logits: list[Tensor], temperature: float = 1.0, beta: float = 0.5
) -> list[Tensor]:
    """Per step j: the divergence [B, T-1-j] of step j's predictions from the target's (see the module doc).

    target_logits [B, T, V] are the target's logits at every position (or its cached top-K there,
    `teacher.TopK`); step_logits[j] [B, T', V] with T' >= T - 1 - j (extra trailing positions are ignored)."""
    t = target_logits.shape[1]
    out = []
    for j, q in enumerate(step_logits):
        width = t - 1 - j
        if width <= 0:
            break
        out.append(divergence(kind, target_logits[:, j : j + width], q[:, :width], temperature=temperature, beta=beta))
    return out


def step_masks(response: Tensor, steps: int) -> list[Tensor]:
    """Per step j: where step j is scored, [B, T-1-j], from the response mask [B, T-1]."""
    return [response[:, j:] for j in range(min(steps, response.shape[1]))]


def place_by_predicted_token(values: list[Tensor], weights: list[float], width: int, first: int = 0) -> Tensor:
    """Σ_j w_j · values[j] shifted right by first + j, into [B, width] (what falls past `width` is dropped).

    Step j's value at position t belongs to the token step j predicts, which the training loop's layout
    (position p scores token p + 1) holds at p = t + j: placed there, the loop's reduction over the
    response mask keeps every scored prediction. `first` is 1 for frames that start at depth 1 (MTP)."""
    out = values[0].new_zeros(values[0].shape[0], width)
    for j, (v, w) in enumerate(zip(values, weights)):
        shift = first + j
        n = min(v.shape[1], width - shift)
        if n > 0:
            out[:, shift : shift + n] = out[:, shift : shift + n] + w * v[:, :n]
    return out


def multi_step_loss(
    divs: list[Tensor],
    response: Tensor,
    weights: list[float],
    k: float = 1.0,
    mode: str = "all",
    ref_divs: list[Tensor] | None = None,
    per_sequence: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """(per-token loss [B, T-1], kept mask per step): Σ_j w_j · L_j over step j's kept tokens, each placed at
    the shifted position of the token it predicts (t + j: where `response` marks that token), so the
    training loop's `reduce_loss` over the response mask keeps every scored prediction and divides the
    weighted sum by the number of response tokens, as for a draft model."""
    kept, contributions = [], []
    for j, (div, mask) in enumerate(zip(divs, step_masks(response, len(divs)))):
        ref = ref_divs[j] if ref_divs is not None else None
        sel = delta_selection(div, ref, mask, k, mode, per_sequence, generator)
        kept.append(sel)
        contributions.append(torch.where(sel, div, torch.zeros((), dtype=div.dtype, device=div.device)))
    return place_by_predicted_token(contributions, weights, response.shape[1]), kept
