"""Which tokens AdaSPEC keeps: the command line of adaspec.evaluation.delta_distribution (per-token Δ of the
kept and the dropped tokens, for one or more drafts). Writes the JSON and, with matplotlib, a histogram
beside it.

    python benchmarks/delta_distribution.py --target DIR --ref DIR --draft init=DIR adaspec=DIR \
        --task gsm8k [--examples 200] [--batch-size 40] [--group 5] [--k 0.4] --out results/.../delta.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaspec import data  # noqa: E402
from adaspec.errors import AdaspecError  # noqa: E402
from adaspec.evaluation.delta_distribution import measure, summarize  # noqa: E402
from adaspec.evaluation.drafters import load_named_drafters  # noqa: E402
from adaspec.io import atomic_write_json  # noqa: E402
from adaspec.models import load_model, load_tokenizer  # noqa: E402


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
        tokens = measure(target, ref, named, items, data.pad_id(tokenizer), args.batch_size, args.k, args.group or None)
    except AdaspecError as exc:
        print(f"benchmarks/delta_distribution.py: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    result = {
        "command": shlex.join(
            ["python", "benchmarks/delta_distribution.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "task": args.task,
        "examples": len(items),
        "k": args.k,
        "batch_size": args.batch_size,
        "group": args.group,
        "drafts": {n: summarize(t) for n, t in tokens.items()},
    }
    atomic_write_json(out, result)
    plot(
        tokens,
        f"{args.task}: per-token Δ of {len(items)} training examples, k = {args.k}, "
        f"batch {args.batch_size}, groups of {args.group or args.batch_size}",
        out.with_suffix(".png"),
    )
    for name, s in result["drafts"].items():
        print(
            f"{name}: kept Δ median {s['kept']['quantiles']['0.5']:.3f} (greedy accepted "
            f"{s['kept']['accepted']:.2f}), dropped Δ median "
            f"{s['dropped']['quantiles']['0.5']:.3f} (accepted {s['dropped']['accepted']:.2f})"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
