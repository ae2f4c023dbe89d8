"""Which tokens AdaSPEC keeps: per-token Δ = KL(p‖q_draft) − KL(p‖q_ref) on training batches, split into
the tokens the selection keeps and those it drops, for one or more drafts (say the initial draft, what the
first step selects from, and the trained AdaSPEC draft).

    python -m adaspec.evaluation.delta_distribution --target DIR --ref DIR --draft init=DIR adaspec=DIR \
        --task gsm8k [--examples 200] [--batch-size 40] [--group 5] [--k 0.4] --out results/.../delta.json

The selection is `distill.selection.delta_selection`, the one training runs, over batches and groups shaped
as the authors' protocol trains (40 sequences, the quantile per group of 5). Beside Δ, each token records
whether the draft's argmax equals the target's (a greedy acceptance), so the JSON says how often the kept
and the dropped tokens are already right. Writes the JSON and, with matplotlib, a histogram beside it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from adaspec import data
from adaspec.distill.losses import forward_kl
from adaspec.distill.selection import delta_selection
from adaspec.errors import AdaspecError
from adaspec.evaluation.drafters import load_named_drafters
from adaspec.io import atomic_write_json
from adaspec.models import load_model, load_tokenizer

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def response_logits(model: PreTrainedModel, batch: dict) -> torch.Tensor:
    """float32 logits at the positions that score the next token (aligned with `data.response_mask`)."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()


def token_deltas(p: torch.Tensor, r: torch.Tensor, q: torch.Tensor, labels: torch.Tensor, k: float,
                 group: int | None) -> dict[str, torch.Tensor]:
    """Per response token of one batch, from the target's (p), reference's (r) and draft's (q) logits: Δ,
    whether the selection keeps it, whether the draft's greedy token is the target's."""
    mask = data.response_mask(labels)
    draft_div, ref_div = forward_kl(p, q), forward_kl(p, r)
    kept = delta_selection(draft_div, ref_div, mask, k, group=group)
    return {"delta": (draft_div - ref_div)[mask], "kept": kept[mask].bool(),
            "accepted": (q.argmax(-1) == p.argmax(-1))[mask]}


def describe(values: torch.Tensor) -> dict[str, Any]:
    v = values.double()
    if v.numel() == 0:
        return {"n": 0}
    return {"n": int(v.numel()), "mean": float(v.mean()),
            "quantiles": {str(q): float(torch.quantile(v, q)) for q in QUANTILES}}


def summarize(tokens: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Δ of the kept and the dropped tokens, and the greedy acceptance of each."""
    out: dict[str, Any] = {}
    for name, which in (("kept", tokens["kept"]), ("dropped", ~tokens["kept"])):
        out[name] = {**describe(tokens["delta"][which]),
                     "accepted": float(tokens["accepted"][which].float().mean()) if which.any() else None}
    out["kept_fraction"] = float(tokens["kept"].float().mean())
    return out


def measure(target: PreTrainedModel, ref: PreTrainedModel, drafts: dict[str, PreTrainedModel], items: list[dict],
            pad: int, batch_size: int, k: float, group: int | None) -> dict[str, dict[str, torch.Tensor]]:
    per_draft: dict[str, list[dict[str, torch.Tensor]]] = {n: [] for n in drafts}
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = data.collate(items[start:start + batch_size], pad)
            p, r = response_logits(target, batch), response_logits(ref, batch)  # once for every draft
            for name, draft in drafts.items():
                per_draft[name].append(token_deltas(p, r, response_logits(draft, batch), batch["labels"], k, group))
    return {n: {key: torch.cat([b[key] for b in parts]) for key in parts[0]} for n, parts in per_draft.items()}


def plot(tokens: dict[str, dict[str, torch.Tensor]], title: str, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, len(tokens), figsize=(5 * len(tokens), 3.6), squeeze=False)
    for ax, (name, t) in zip(axes[0], tokens.items()):
        d = t["delta"].numpy()
        edges = torch.tensor([0.005, 0.995], dtype=torch.double)
        lo, hi = (float(x) for x in torch.quantile(t["delta"].double(), edges))  # the tails would flatten it
        bins = [lo + (hi - lo) * i / 60 for i in range(61)]
        ax.hist(d[t["kept"].numpy()], bins=bins, alpha=0.6, label="kept (top k by Δ)")
        ax.hist(d[~t["kept"].numpy()], bins=bins, alpha=0.6, label="dropped")
        ax.set_title(name)
        ax.set_xlabel("Δ = KL(p‖q_draft) − KL(p‖q_ref), nats")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("response tokens")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="target model directory")
    p.add_argument("--ref", required=True, help="reference model directory (the DistillSpec draft)")
    p.add_argument("--draft", nargs="+", required=True, help="drafts as NAME=DIR")
    p.add_argument("--task", default="gsm8k", help="task whose training examples are scored")
    p.add_argument("--examples", type=int, default=200, help="training examples scored (the first N)")
    p.add_argument("--max-length", type=int, default=256, help="the training --max-length")
    p.add_argument("--batch-size", type=int, default=40, help="sequences per batch (the official AdaSPEC batch)")
    p.add_argument("--group", type=int, default=5, help="sequences per quantile group (0: the whole batch)")
    p.add_argument("--k", type=float, default=0.4, help="fraction kept")
    p.add_argument("--out", required=True, help="JSON path (a .png histogram is written beside it)")
    args = p.parse_args(argv)
    try:
        if args.examples < 1 or args.batch_size < 1 or args.group < 0:
            raise AdaspecError("--examples and --batch-size must be >= 1, --group >= 0")
        target, ref = load_model(args.target), load_model(args.ref)
        tokenizer = load_tokenizer(args.target)
        named = load_named_drafters(args.draft, [], target, tokenizer, torch.device("cpu"))  # vocabulary checked
        items = data.encode(data.load_task(args.task, "train", limit=args.examples), tokenizer, args.max_length)
        tokens = measure(target, ref, named, items, data.pad_id(tokenizer), args.batch_size, args.k,
                         args.group or None)
    except AdaspecError as exc:
        print(f"delta_distribution: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    result = {"command": shlex.join(["python", "-m", "adaspec.evaluation.delta_distribution",
                                     *(argv if argv is not None else sys.argv[1:])]),
              "task": args.task, "examples": len(items), "k": args.k, "batch_size": args.batch_size,
              "group": args.group, "drafts": {n: summarize(t) for n, t in tokens.items()}}
    atomic_write_json(out, result)
    plot(tokens, f"{args.task}: per-token Δ of {len(items)} training examples, k = {args.k}, "
                 f"batch {args.batch_size}, groups of {args.group or args.batch_size}", out.with_suffix(".png"))
    for name, s in result["drafts"].items():
        print(f"{name}: kept Δ median {s['kept']['quantiles']['0.5']:.3f} (greedy accepted "
              f"{s['kept']['accepted']:.2f}), dropped Δ median "
              f"{s['dropped']['quantiles']['0.5']:.3f} (accepted {s['dropped']['accepted']:.2f})")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
