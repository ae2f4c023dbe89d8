"""Which tokens AdaSPEC keeps: per-token Δ = KL(p‖q_draft) − KL(p‖q_ref) on training batches, split into
the tokens the selection keeps and those it drops, for one or more drafts (say the initial draft, what the
first step selects from, and the trained AdaSPEC draft); `benchmarks/delta_distribution.py` is the
command line.

The selection is `distill.selection.delta_selection`, the one training runs, over batches and groups shaped
as the authors' protocol trains (40 sequences, the quantile per group of 5). Beside Δ, each token records
whether the draft's argmax equals the target's (a greedy acceptance), so `summarize` says how often the kept
and the dropped tokens are already right.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from adaspec import data
from adaspec.distill.losses import forward_kl
from adaspec.distill.selection import delta_selection

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def response_logits(model: PreTrainedModel, batch: data.Batch) -> torch.Tensor:
    """float32 logits at the positions that score the next token (aligned with `data.response_mask`)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()


def token_deltas(
    p: torch.Tensor, r: torch.Tensor, q: torch.Tensor, labels: torch.Tensor, k: float, group: int | None
) -> dict[str, torch.Tensor]:
    """Per response token of one batch, from the target's (p), reference's (r) and draft's (q) logits: Δ,
    whether the selection keeps it, whether the draft's greedy token is the target's."""
    mask = data.response_mask(labels)
    draft_div, ref_div = forward_kl(p, q), forward_kl(p, r)
    kept = delta_selection(draft_div, ref_div, mask, k, group=group)
    return {
        "delta": (draft_div - ref_div)[mask],
        "kept": kept[mask].bool(),
        "accepted": (q.argmax(-1) == p.argmax(-1))[mask],
    }


def describe(values: torch.Tensor) -> dict[str, Any]:
    v = values.double()
    if v.numel() == 0:
        return {"n": 0}
    return {
        "n": int(v.numel()),
        "mean": float(v.mean()),
        "quantiles": {str(q): float(torch.quantile(v, q)) for q in QUANTILES},
    }


def summarize(tokens: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Δ of the kept and the dropped tokens, and the greedy acceptance of each."""
    out: dict[str, Any] = {}
    for name, which in (("kept", tokens["kept"]), ("dropped", ~tokens["kept"])):
        out[name] = {
            **describe(tokens["delta"][which]),
            "accepted": float(tokens["accepted"][which].float().mean()) if which.any() else None,
        }
    out["kept_fraction"] = float(tokens["kept"].float().mean())
    return out


def measure(
    target: PreTrainedModel,
    ref: PreTrainedModel,
    drafts: dict[str, PreTrainedModel],
    items: list[data.Item],
    pad: int,
    batch_size: int,
    k: float,
    group: int | None,
) -> dict[str, dict[str, torch.Tensor]]:
    per_draft: dict[str, list[dict[str, torch.Tensor]]] = {n: [] for n in drafts}
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = data.collate(items[start : start + batch_size], pad)
            p, r = response_logits(target, batch), response_logits(ref, batch)  # once for every draft
            for name, draft in drafts.items():
                per_draft[name].append(token_deltas(p, r, response_logits(draft, batch), batch["labels"], k, group))
    return {n: {key: torch.cat([b[key] for b in parts]) for key in parts[0]} for n, parts in per_draft.items()}
