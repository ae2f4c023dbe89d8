"""Token trees against chains for every drafter, greedy, side by side in one run: the command line of
adaspec.evaluation.trees (whose docstring says what is measured). Writes results/benchmarks/tree_<pair>.json;
--summarize recomputes a saved result's summary from its rows.

    python benchmarks/tree.py --target DIR --draft adaspec=DIR --head eagle=DIR mtp=DIR medusa=DIR \
        [--n-prompts 5] [--max-new-tokens 96] [--chains 2 3 4 5 6] [--trees SPEC ...] [--repeats 3] [--pair demo]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaspec.errors import AdaspecError  # noqa: E402
from adaspec.evaluation.drafters import load_named_drafters  # noqa: E402
from adaspec.evaluation.trees import benchmark, format_rows, summary, tree_drafters  # noqa: E402
from adaspec.io import atomic_write_json  # noqa: E402
from adaspec.models import load_model, load_tokenizer, output_vocab_size  # noqa: E402
from benchmarks.drafters import add_drafter_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_drafter_arguments(p, target_required=False)
    p.add_argument("--task", default="gsm8k", help="task whose test prompts are decoded")
    p.add_argument("--n-prompts", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--chains", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="chain lengths γ")
    p.add_argument(
        "--trees",
        nargs="*",
        default=None,
        help="tree specs for every drafter (--tree syntax; default: per drafter kind, plus adaptive)",
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--context", type=int, default=256, help="positions prompt + continuation may use")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--pair", default="demo", help="name of the model pair, for the output file")
    p.add_argument("--out", default=None, help="JSON path (default results/benchmarks/tree_<pair>.json)")
    p.add_argument(
        "--summarize",
        metavar="JSON",
        default=None,
        help="recompute a saved result's summary from its measured rows (nothing decoded) and rewrite it",
    )
    args = p.parse_args(argv)
    if args.summarize:
        return _resummarize(Path(args.summarize))
    if not args.target:
        p.error("--target is required (or --summarize JSON)")
    try:
        torch.set_num_threads(args.threads)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        target = load_model(args.target, device=device)
        tokenizer = load_tokenizer(args.target)
        named = load_named_drafters(args.draft, args.head, target, tokenizer, device)
        drafters, keep, trees = tree_drafters(named, output_vocab_size(target), args.trees)
        result = benchmark(
            target,
            tokenizer,
            drafters,
            keep,
            args.task,
            args.n_prompts,
            args.max_new_tokens,
            args.chains,
            trees,
            args.repeats,
            args.context,
        )
    except AdaspecError as exc:
        print(f"benchmarks/tree.py: error: {exc}", file=sys.stderr)
        return 2
    result = {
        "pair": args.pair,
        "command": shlex.join(["python", "benchmarks/tree.py", *(argv or sys.argv[1:])]),
        **result,
    }
    out = Path(args.out or f"results/benchmarks/tree_{args.pair}.json")
    atomic_write_json(out, result)
    print(format_rows(result))
    print(f"wrote {out}")
    return 1 if any(r["outputs_differing"] for r in result["rows"]) else 0


def _resummarize(path: Path) -> int:
    """The summary is derived from the rows in one place: a saved result gets the current derivation."""
    try:
        result = json.loads(path.read_text())
        result["summary"] = summary(result["rows"], result["verify_cost_vs_1"])
    except (OSError, ValueError, KeyError) as exc:
        print(f"benchmarks/tree.py: error: cannot summarize {path}: {exc!r}", file=sys.stderr)
        return 2
    atomic_write_json(path, result)
    print(format_rows(result))
    print(f"rewrote the summary of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
