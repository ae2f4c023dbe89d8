"""Training losses of multi-token heads (MTP depths, Medusa heads), per depth, and their teacher-forced forward.

Head/depth k at position i predicts token i+k+1 (k = 1 for the token after the target's own next one):
step k of adaspec.distill.steps, whose step 0 is the target's own next token. Its teacher is the target's
own distribution at position i+k, which predicts the same token (self-distillation), or the data token
itself (cross-entropy). Masks follow the project's label convention: a token with label -100 (prompt,
padding) is never a training target. Training weighs the depths by `depth_weights` and places each depth's
values at the token it predicts (adaspec.distill.steps.place_by_predicted_token), where the training loop's
reduction over the response tokens counts them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from adaspec.data import response_mask
from adaspec.distill.steps import step_divergences, step_masks
from adaspec.distill.teacher import TopK
from adaspec.drafters.family import HeadForward
from adaspec.errors import AdaspecError


def depth_token_losses(
    depth_logits: list[Tensor],
    target_logits: Tensor | TopK,
    labels: Tensor,
    kind: str = "fkl",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> list[tuple[Tensor, Tensor]]:
    """Per-token loss and mask of every depth, [B, T-k-1] each.

    Depth k at position i is judged on token i+k+1, which must be a training token (labels != -100, the
    project's convention for prompt and padding). kind "ce": cross-entropy on that data token; otherwise a
    divergence of adaspec.distill.losses (fkl, rkl, tvd, jsd) against the target's own distribution at
    position i+k, which predicts the same token (self-distillation); `temperature` and `beta` (JSD) as
    there. `target_logits` may be the target's cached top-K (`distill.teacher.TopK`).
    """
    # depth k is step k at the same position; dropping step 0 from the frame = starting it one position on
    masks = step_masks(response_mask(labels)[:, 1:], len(depth_logits))
    if kind != "ce":
        return list(zip(step_divergences(kind, target_logits[:, 1:], depth_logits, temperature, beta), masks))
    t = labels.shape[1]
    out = []
    for k, (logits, mask) in enumerate(zip(depth_logits, masks), start=1):
        loss = nn.functional.cross_entropy(
            logits[:, : t - k - 1].float().transpose(1, 2), labels[:, k + 1 :].clamp_min(0), reduction="none"
        )
        out.append((loss, mask))
    return out


def depth_weights(depth: int, weights: list[float] | None = None, lam: float = 1.0) -> list[float]:
    """The weight of every depth: `weights` as given, else λ / D each (DeepSeek-V3: λ on the mean)."""
    if weights is None:
        return [lam / depth] * depth
    if len(weights) != depth:
        raise AdaspecError(f"{len(weights)} depth weights for {depth} depths")
    return list(weights)


def teacher_forced(drafter: Any, depth: int) -> HeadForward:
    """The first `depth` depths of an MTP or Medusa drafter's heads on the target's features, as training runs
    them (`heads(parts, hidden, ids)`): the family's `teacher_forced` (adaspec.drafters.family)."""
    heads, parts = drafter.heads, drafter.parts
    return lambda hidden, ids: heads(parts, hidden, ids)[:depth]
