"""AdaSPEC token selection (Hu et al., NeurIPS 2025, arXiv 2510.19779) and the selective loss.

A reference model (the draft's initialisation, distilled from the target with plain KD) tells which
tokens the draft can still learn: per response token, Delta = L_draft - L_ref, where L is the per-token
divergence to the target (forward KL by default). AdaSPEC trains the draft only on the fraction k of
response tokens with the largest Delta and leaves hard tokens (where even the distilled reference stays
far from the target) out, so the draft's small capacity goes to tokens it can get accepted.

Modes: "top" (AdaSPEC), "bottom" (lowest-Delta fraction k, ablation), "random" (fraction k uniformly,
ablation), "all" (every response token, i.e. DistillSpec / plain KD; k is ignored).

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

from adaspec.errors import AdaspecError

MODES = ("top", "bottom", "random", "all")
NORMALIZE = ("response", "kept")


def check_k(k: float) -> None:
    """Raise AdaspecError unless 0 < k <= 1 (the fraction of response tokens AdaSPEC keeps)."""
    if not (isinstance(k, numbers.Real) and not isinstance(k, bool) and 0.0 < k <= 1.0):
        raise AdaspecError(f"k must be in (0, 1], got {k}")


def num_kept(k: float, n: int) -> int:
    """Tokens kept out of n: round(k * n), halves up, clamped to [1, n] (0 when n == 0)."""
    if n <= 0:
        return 0
    return min(max(math.floor(k * n + 0.5), 1), n)


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
    return order[:m] if mode == "top" else order[n - m:]


def select_tokens(delta: Tensor, mask: Tensor, k: float, mode: str = "top", per_sequence: bool = False,
                  generator: torch.Generator | None = None, group: int | None = None) -> Tensor:
    """Boolean tensor shaped like `mask`, True on the response tokens kept for the loss.

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
    selected = torch.zeros_like(flat_mask)
    for start in range(0, n_rows, size):
        rows = slice(start, start + size)
        positions = flat_mask[rows].reshape(-1).nonzero().squeeze(1)
        keep = _pick(flat_delta[rows].reshape(-1)[positions], k, mode, generator)
        chosen = torch.zeros(flat_mask[rows].numel(), dtype=torch.bool, device=mask.device)
        chosen[positions[keep]] = True
        selected[rows] = chosen.view(-1, flat_mask.shape[1])
    return selected.view(mask.shape)


def reduce_loss(per_token: Tensor, mask: Tensor, selected: Tensor, normalize: str = "response",
                num_items: float | Tensor | None = None, num_selected: float | Tensor | None = None) -> Tensor:
    """Scalar loss from per-token values: sum over selected tokens divided by the number of response
    tokens ("response", the official AdaSPEC normalisation) or by the number kept ("kept"). With no
    response tokens it is 0, still connected to the graph. Values at unselected positions never reach the
    result (NaN/inf there are harmless).

    `num_items` replaces the "response" denominator, e.g. by the response-token count of a whole
    gradient-accumulation step (the Trainer's `num_items_in_batch` in the official code); `num_selected`
    likewise replaces the "kept" one (the kept count of a global batch split over processes)."""
    if normalize not in NORMALIZE:
        raise AdaspecError(f"unknown normalisation {normalize!r}; choose one of: {', '.join(NORMALIZE)}")
    if not per_token.shape == mask.shape == selected.shape:
        raise AdaspecError(f"per-token values {tuple(per_token.shape)}, mask {tuple(mask.shape)} and "
                           f"selection {tuple(selected.shape)} differ in shape")
    mask = mask.bool()
    selected = selected.bool() & mask
    total = torch.where(selected, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
    given = num_items if normalize == "response" else num_selected
    if given is not None:
        count = torch.as_tensor(given, device=per_token.device).clamp(min=1)
    else:
        count = (mask if normalize == "response" else selected).sum().clamp(min=1)
    return total.sum() / count


def delta_selection(draft_div: Tensor, ref_div: Tensor | None, mask: Tensor, k: float, mode: str = "top",
                    per_sequence: bool = False, generator: torch.Generator | None = None,
                    group: int | None = None) -> Tensor:
    """The response tokens AdaSPEC trains on: `select_tokens` by Delta = draft_div - ref_div (no gradient),
    `group` as there. `ref_div` may be None only for mode "all" (plain KD / DistillSpec), which keeps every
    response token."""
    _check_mode(mode)
    if mode == "all":
        delta = torch.zeros_like(draft_div, dtype=torch.float32)
    else:
        check_k(k)
        if ref_div is None:
            raise AdaspecError(f"selection mode {mode!r} needs the reference model's per-token divergence")
        if ref_div.shape != draft_div.shape:
            raise AdaspecError(f"draft {tuple(draft_div.shape)} and reference {tuple(ref_div.shape)} "
                               f"divergences differ in shape")
        with torch.no_grad():
            delta = draft_div.detach().float() - ref_div.detach().float()
    return select_tokens(delta, mask, k, mode, per_sequence, generator, group)


def adaspec_loss(draft_div: Tensor, ref_div: Tensor | None, mask: Tensor, k: float, mode: str = "top",
                 per_sequence: bool = False, normalize: str = "response",
                 generator: torch.Generator | None = None,
                 num_items: int | Tensor | None = None, group: int | None = None) -> tuple[Tensor, Tensor]:
    """(loss, selected): the selective distillation loss on the draft's per-token divergence.

    Delta = draft_div - ref_div is computed without gradient; the loss is `reduce_loss(draft_div, ...)`
    over the selected tokens (`num_items` as there, `group` as in `select_tokens`). `ref_div` may be None
    only for mode "all" (plain KD / DistillSpec).
    """
    selected = delta_selection(draft_div, ref_div, mask, k, mode, per_sequence, generator, group)
    return reduce_loss(draft_div, mask, selected, normalize, num_items), selected
