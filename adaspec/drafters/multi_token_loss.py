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
                       temperature: float = 1.0, beta: float = 0.5) -> list[tuple[Tensor, Tensor]]:
    """Per-token loss and mask of every depth, [B, T-k-1] each.

    Depth k at position i is judged on token i+k+1, which must be a training token (labels != -100, the
    project's convention for prompt and padding). kind "ce": cross-entropy on that data token; otherwise a
    divergence of adaspec.distill.losses (fkl, rkl, tvd, jsd) against the target's own distribution at
    position i+k, which predicts the same token (self-distillation); `temperature` and `beta` (JSD) as
    there.
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
            loss = per_token_divergence(kind, target_logits[:, k: t - 1], logits, temperature, beta)
        out.append((loss, mask))
    return out


def spread_over_positions(token_losses: list[Tensor], weights: list[float]) -> Tensor:
    """Σ_k w_k · loss_k placed at the position that scores the same token in the training loop's layout
    ([B, T-1], position p scores token p+1, adaspec.data.response_mask): depth k's entry i goes to p = i+k."""
    first = token_losses[0]
    out = first.new_zeros(first.shape[0], first.shape[1] + 1)
    for k, (loss, w) in enumerate(zip(token_losses, weights), start=1):
        out[:, k:] = out[:, k:] + w * loss
    return out


def depth_weights(depth: int, weights: list[float] | None = None, lam: float = 1.0) -> list[float]:
    """The weight of every depth: `weights` as given, else λ / D each (DeepSeek-V3: λ on the mean)."""
    if weights is None:
        return [lam / depth] * depth
    if len(weights) != depth:
        raise AdaspecError(f"{len(weights)} depth weights for {depth} depths")
    return list(weights)


def weighted_depth_loss(token_losses: list[tuple[Tensor, Tensor]], weights: list[float] | None = None,
                        lam: float = 1.0) -> tuple[Tensor, list[Tensor]]:
    """Σ_k w_k · (mean over masked tokens of loss_k), and the per-depth means. Default w_k = λ / D:
    DeepSeek-V3's single λ on the mean over depths."""
    weights = depth_weights(len(token_losses), weights, lam)
    means = [(loss * mask).sum() / mask.sum().clamp_min(1) for loss, mask in token_losses]
    return sum(w * m for w, m in zip(weights, means)), means  # type: ignore[return-value]
