"""Training losses of multi-token heads (MTP depths, Medusa heads), per depth.

Head/depth k at position i predicts token i+k+1 (k = 1 for the token after the target's own next one).
Its teacher is the target's own distribution at position i+k, which predicts the same token
(self-distillation), or the data token itself (cross-entropy). Masks follow the project's label
convention: a token with label -100 (prompt, padding) is never a training target.
"""

from __future__ import annotations

from torch import Tensor, nn

from adaspec.distill.losses import per_token_divergence
from adaspec.errors import AdaspecError


def depth_token_losses(depth_logits: list[Tensor], target_logits: Tensor, labels: Tensor, kind: str = "fkl",
                       temperature: float = 1.0) -> list[tuple[Tensor, Tensor]]:
    """Per-token loss and mask of every depth, [B, T-k-1] each.

    Depth k at position i is judged on token i+k+1, which must be a training token (labels != -100, the
    project's convention for prompt and padding). kind "ce": cross-entropy on that data token; otherwise a
    divergence of adaspec.distill.losses (fkl, rkl, tvd, jsd) against the target's own distribution at
    position i+k, which predicts the same token (self-distillation).
    """
    t = labels.shape[1]
    out = []
    for k, logits in enumerate(depth_logits, start=1):
        logits = logits[:, : t - k - 1]
        gold = labels[:, k + 1:]
        mask = gold != -100
        if kind == "ce":
            loss = nn.functional.cross_entropy(logits.float().transpose(1, 2), gold.clamp_min(0),
                                               reduction="none")
        else:
            loss = per_token_divergence(kind, target_logits[:, k: t - 1], logits, temperature)
        out.append((loss, mask))
    return out


def weighted_depth_loss(token_losses: list[tuple[Tensor, Tensor]], weights: list[float] | None = None,
                        lam: float = 1.0) -> tuple[Tensor, list[Tensor]]:
    """Σ_k w_k · (mean over masked tokens of loss_k), and the per-depth means. Default w_k = λ / D:
    DeepSeek-V3's single λ on the mean over depths."""
    d = len(token_losses)
    weights = [lam / d] * d if weights is None else list(weights)
    if len(weights) != d:
        raise AdaspecError(f"{len(weights)} depth weights for {d} MTP depths")
    means = [(loss * mask).sum() / mask.sum().clamp_min(1) for loss, mask in token_losses]
    return sum(w * m for w, m in zip(weights, means)), means  # type: ignore[return-value]
