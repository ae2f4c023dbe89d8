"""AdaSPEC token selection (Hu et al., NeurIPS 2025, arXiv 2510.19779) and the selective loss.

A reference model (the draft's initialisation, distilled from the target with plain KD) tells which
tokens the draft can still learn: per response token, Delta = L_draft - L_ref, where L is the per-token
divergence to the target (forward KL by default). AdaSPEC trains the draft only on the fraction k of
response tokens with the largest Delta and leaves hard tokens (where even the distilled reference stays
far from the target) out, so the draft's small capacity goes to tokens it can get accepted.

The AdaSPEC loss is two calls, as training makes them: `delta_selection` on each micro-batch (in the
recipe's step function), then `reduce_loss` of the draft's per-token divergence over the kept tokens (in
adaspec.training.loop, once the whole global batch's response-token count is known, its denominator).

Modes: "top" (AdaSPEC), "bottom" (lowest-Delta fraction k, ablation), "random" (fraction k uniformly,
ablation), "all" (every response token, i.e. DistillSpec / plain KD; k is ignored), "soft" (a weight per
token from Delta's rank instead of a hard cut, `soft_weights`).

Soft selection: within a group of n response tokens, token i with Delta rank r_i (0 = largest, ties by
position as for "top") has the rank quantile u_i = 1 - (r_i + 0.5) / n and the weight
w_i = sigmoid((u_i - (1 - k)) / tau), rescaled so the weights sum to num_kept(k, n), the count top-k keeps:
the loss then has top-k's scale under either normalisation. tau -> 0 gives top-k's kept set with weight 1.

k schedule (`scheduled_k`): "constant" keeps k; "linear" goes from 1 (every token) at the first optimizer step
down to k at the last, so the draft first learns from everything and narrows to the learnable tokens;
"warmup" keeps every token for the first WARMUP_FRACTION of the steps, then k (a KD phase, then AdaSPEC).
The two ramps are how an untrained draft starts (adaspec.distill.cold_start).

Relation to the official code (github.com/yuezhouhu/adaspec, `CustomTrainer.compute_loss`): it flattens
the micro-batch's response tokens, keeps `delta >= torch.quantile(delta, 1 - k)` and returns
`sum(kept draft KL) / num_items_in_batch` (the response-token count; mean over kept tokens when the
Trainer gives no count). `torch.quantile` interpolates linearly, so with distinct values it keeps
1 + floor(k * (n - 1)) tokens, plus every token tied at the threshold. Here the count is round(k * n)
(half up) clamped to [1, n], taken by a stable sort, so the kept fraction is k within rounding, ties are
broken deterministically (lower position first for "top") and top(k) / bottom(1 - k) are exact
complements whenever k * n is not a half-integer. The two rules differ by at most one token per group
and, without ties, one kept set contains the other. The default grouping (all of the micro-batch's
response tokens together) and normalisation ("response") are the official ones.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from adaspec.distill.settings import SOFT_TEMPERATURE, WARMUP_FRACTION
from adaspec.errors import AdaspecError

MODES = ("top", "bottom", "random", "all", "soft")
NORMALIZE = ("response", "kept")
K_SCHEDULES = ("constant", "linear", "warmup")


def check_k(k: float) -> None:
    """Raise AdaspecError unless 0 < k <= 1 (the fraction of response tokens AdaSPEC keeps)."""
    if not (isinstance(k, numbers.Real) and not isinstance(k, bool) and 0.0 < k <= 1.0):
        raise AdaspecError(f"k must be in (0, 1], got {k}")


def num_kept(k: float, n: int) -> int:
    """Tokens kept out of n: round(k * n), halves up, clamped to [1, n] (0 when n == 0)."""
    if n <= 0:
        return 0
    return min(max(math.floor(k * n + 0.5), 1), n)


def scheduled_k(k: float, schedule: str, step: int, total_steps: int) -> float:
    """The fraction kept at optimizer step `step` (0-based) of `total_steps`: k ("constant"), linearly from
    1 at step 0 to k at step total_steps - 1 ("linear"; steps past the end keep k), or 1 for the first
    WARMUP_FRACTION of the steps and k after ("warmup")."""
    check_k(k)
    if schedule not in K_SCHEDULES:
        raise AdaspecError(f"unknown k schedule {schedule!r}; choose one of: {', '.join(K_SCHEDULES)}")
    if schedule == "warmup":
        return 1.0 if step < WARMUP_FRACTION * total_steps else k
    if schedule == "constant" or total_steps <= 1:
        return k
    done = min(max(step / (total_steps - 1), 0.0), 1.0)
    return 1.0 + (k - 1.0) * done


def soft_weights(values: Tensor, k: float, temperature: float = SOFT_TEMPERATURE) -> Tensor:
    """Float32 weight per entry of the 1-D `values` (Delta) from its rank: sigmoid((u - (1 - k)) / temperature)
    with u the rank quantile (largest value nearest 1, ties by position), scaled to sum to num_kept(k, n)."""
    check_k(k)
    if not temperature > 0:
        raise AdaspecError(f"soft selection temperature must be > 0, got {temperature}")
    n = values.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.float32, device=values.device)
    values = torch.nan_to_num(values.float(), nan=float("-inf"))
    order = torch.sort(values, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=values.device)
    u = 1.0 - (rank.float() + 0.5) / n
    w = torch.sigmoid((u - (1.0 - k)) / temperature)
    return w * (num_kept(k, n) / w.sum())


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise AdaspecError(f"unknown selection mode {mode!r}; choose one of: {', '.join(MODES)}")


def _pick(values: Tensor, k: float, mode: str, generator: torch.Generator | None) -> Tensor:
    """Indices into the 1-D `values` of the tokens to keep."""
    n = values.numel()
    if mode == "all" or n == 0:
        return torch.arange(n, device=values.device)
    m = num_kept(k, n)
    if mode == "random":
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.randperm(n, generator=generator, device=device)[:m].to(values.device)
    # a NaN Delta (inf - inf) must not look like the largest one
    values = torch.nan_to_num(values.float(), nan=float("-inf"))
    # one total order (Delta descending, ties by position) for both ends, so top and bottom complement
    order = torch.sort(values, descending=True, stable=True).indices
    return order[:m] if mode == "top" else order[n - m :]


def select_tokens(
    delta: Tensor,
    mask: Tensor,
    k: float,
    mode: str = "top",
    per_sequence: bool = False,
    generator: torch.Generator | None = None,
    group: int | None = None,
    soft_temperature: float = SOFT_TEMPERATURE,
) -> Tensor:
    """Boolean tensor shaped like `mask`, True on the response tokens kept for the loss; for mode "soft"
    float32 weights instead (`soft_weights` per group, 0 off the response).

    `delta` holds the per-token score (Delta = L_draft - L_ref), `mask` marks response tokens (others
    are never selected). Groups are all of the micro-batch's response tokens, or each run of `group`
    consecutive rows (leading dimension; the last run may be shorter), or each row with `per_sequence=True`
    (= group 1); each group keeps `num_kept(k, n)` of its n response tokens. `group` lets one process mimic
    the official code on several: there each process takes the quantile over its own micro-batch.
    """
    _check_mode(mode)
    if mode != "all":
        check_k(k)
    if delta.shape != mask.shape:
        raise AdaspecError(f"delta {tuple(delta.shape)} and mask {tuple(mask.shape)} differ in shape")
    if group is not None and (per_sequence or group < 1):
        raise AdaspecError(f"selection group must be >= 1 and not combined with per-sequence, got {group}")
    delta = delta.detach()
    mask = mask.bool()
    n_rows = mask.shape[0] if mask.dim() >= 2 else 1
    size = 1 if per_sequence else (group or n_rows)
    flat_mask = mask.reshape(n_rows, -1)
    flat_delta = delta.reshape(n_rows, -1)
    soft = mode == "soft"
    selected = torch.zeros(flat_mask.shape, dtype=torch.float32 if soft else torch.bool, device=mask.device)
    for start in range(0, n_rows, size):
        rows = slice(start, start + size)
        positions = flat_mask[rows].reshape(-1).nonzero().squeeze(1)
        values = flat_delta[rows].reshape(-1)[positions]
        chosen = torch.zeros(flat_mask[rows].numel(), dtype=selected.dtype, device=mask.device)
        if soft:
            chosen[positions] = soft_weights(values, k, soft_temperature)
        else:
            chosen[positions[_pick(values, k, mode, generator)]] = True
        selected[rows] = chosen.view(-1, flat_mask.shape[1])
    return selected.view(mask.shape)


def reduce_loss(
    per_token: Tensor,
    mask: Tensor,
    selected: Tensor,
    normalize: str = "response",
    num_items: float | Tensor | None = None,
    num_selected: float | Tensor | None = None,
) -> Tensor:
    """Scalar loss from per-token values: sum over selected tokens divided by the number of response
    tokens ("response", the official AdaSPEC normalisation) or by the number kept ("kept"). With no
    response tokens it is 0, still connected to the graph. Values at unselected positions never reach the
    result (NaN/inf there are harmless).

    A floating-point `selected` holds weights (soft selection): the sum is weighted, "kept" counts the
    weights' sum, and a token with weight 0 counts as unselected. A boolean one takes the hard path.

    `num_items` replaces the "response" denominator, e.g. by the response-token count of a whole
    gradient-accumulation step (the Trainer's `num_items_in_batch` in the official code); `num_selected`
    likewise replaces the "kept" one (the kept count of a global batch split over processes)."""
    if normalize not in NORMALIZE:
        raise AdaspecError(f"unknown normalisation {normalize!r}; choose one of: {', '.join(NORMALIZE)}")
    if not per_token.shape == mask.shape == selected.shape:
        raise AdaspecError(
            f"per-token values {tuple(per_token.shape)}, mask {tuple(mask.shape)} and "
            f"selection {tuple(selected.shape)} differ in shape"
        )
    mask = mask.bool()
    zero = torch.zeros((), dtype=per_token.dtype, device=per_token.device)
    if selected.is_floating_point():
        weights = torch.where(mask, selected.detach().to(per_token.dtype), zero)
        picked = weights != 0
        total = torch.where(picked, per_token * weights, zero)
        selected = weights
    else:
        selected = selected.bool() & mask
        total = torch.where(selected, per_token, zero)
    given = num_items if normalize == "response" else num_selected
    if given is not None:
        count = torch.as_tensor(given, device=per_token.device).clamp(min=1)
    else:
        count = (mask if normalize == "response" else selected).sum().clamp(min=1)
    return total.sum() / count


def delta_selection(
    draft_div: Tensor,
    ref_div: Tensor | None,
    mask: Tensor,
    k: float,
    mode: str = "top",
    per_sequence: bool = False,
    generator: torch.Generator | None = None,
    group: int | None = None,
    soft_temperature: float = SOFT_TEMPERATURE,
) -> Tensor:
    """The response tokens AdaSPEC trains on: `select_tokens` by Delta = draft_div - ref_div (no gradient),
    `group` and the soft mode's weights as there. The two divergences must be the same quantity (the Delta
    divergence, which may differ from the trained loss). `ref_div` may be None only for mode "all" (plain
    KD / DistillSpec), which keeps every response token."""
    _check_mode(mode)
    if mode == "all":
        delta = torch.zeros_like(draft_div, dtype=torch.float32)
    else:
        check_k(k)
        if ref_div is None:
            raise AdaspecError(f"selection mode {mode!r} needs the reference model's per-token divergence")
        if ref_div.shape != draft_div.shape:
            raise AdaspecError(
                f"draft {tuple(draft_div.shape)} and reference {tuple(ref_div.shape)} divergences differ in shape"
            )
        with torch.no_grad():
            delta = draft_div.detach().float() - ref_div.detach().float()
    return select_tokens(delta, mask, k, mode, per_sequence, generator, group, soft_temperature)
