"""One benchmark of every drafter, side by side: the command line of adaspec.evaluation.drafters (whose
docstring says what each row measures). Writes results/benchmarks/drafters_<pair>.json, its plot beside it,
and with --engine vllm also results/benchmarks/vllm_<pair>.json.

    python benchmarks/drafters.py --target DIR --draft distillspec=DIR adaspec=DIR \
        [--tasks gsm8k cnn_dailymail mbpp] [--temperatures 0 1] [--pair small]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaspec.drafters import HEADS  # noqa: E402
from adaspec.errors import AdaspecError  # noqa: E402
from adaspec.evaluation.drafters import benchmark, format_rows, load_named_drafters, named_sources, task_prompts  # noqa: E402
from adaspec.io import atomic_write_json  # noqa: E402
from adaspec.models import load_model, load_tokenizer  # noqa: E402
from adaspec.serving.vllm_benchmark import format_vllm_rows, vllm_benchmark  # noqa: E402
from adaspec.serving.vllm_engine import find_vllm_python  # noqa: E402


def add_drafter_arguments(p: argparse.ArgumentParser, target_required: bool = True) -> None:
    """The --target/--draft/--head flags every drafter benchmark reads with load_named_drafters."""
    p.add_argument("--target", required=target_required, help="target model directory")
    p.add_argument("--draft", nargs="*", default=[], help="draft models as NAME=DIR (e.g. distillspec=runs/...)")
    p.add_argument(
        "--head",
        nargs="*",
        default=[],
        help=f"heads as KIND=DIR or KIND:NAME=DIR, KIND one of {', '.join(HEADS)} (e.g. eagle=runs/heads/eagle)",
    )


def plot(result: dict[str, Any], path: Path) -> None:
    """Tokens/s per method (greedy, first prompt set) and τ against the cost per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = result["rows"][0]["prompts"]
    rows_ = [r for r in result["rows"] if r["prompts"] == first and r["temperature"] == 0]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.barh([r["method"] for r in rows_], [r["tokens_per_s"] for r in rows_])
    a.set_xlabel("tokens/s (greedy)")
    a.set_title(f"{first}, target {result['target_params'] / 1e6:.1f}M params")
    for r in rows_:
        if r["tau"] is not None and r["tokens_per_s"]:
            cost = r["tau"] / r["tokens_per_s"] * 1e3  # ms per step
            b.scatter(cost, r["tau"])
            b.annotate(r["method"], (cost, r["tau"]), fontsize=8)
    b.set_xlabel("ms per speculative step")
    b.set_ylabel("τ (tokens per target forward)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_drafter_arguments(p)
    p.add_argument("--tasks", nargs="+", default=["gsm8k"], help="tasks whose test prompts are decoded")
    p.add_argument("--n-prompts", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--gamma", type=int, default=3)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--context", type=int, default=256, help="positions prompt + continuation may use")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="weights' dtype (bfloat16 on a GPU)",
    )
    p.add_argument("--pair", default="small", help="name of the model pair, for the output file")
    p.add_argument("--out", default=None, help="JSON path (default results/benchmarks/drafters_<pair>.json)")
    p.add_argument(
        "--engine",
        choices=["adaspec", "vllm"],
        default="adaspec",
        help="vllm: also run the first "
        "task's prompts in vLLM, written to results/benchmarks/vllm_<pair>.json (needs `make vllm`)",
    )
    p.add_argument("--vllm-python", default=None, help="python of vLLM's environment (default: .venv-vllm)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8], help="vLLM batch sizes")
    args = p.parse_args(argv)
    try:
        vllm_python = find_vllm_python(args.vllm_python) if args.engine == "vllm" else None
        torch.set_num_threads(args.threads)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, args.dtype)
        target = load_model(args.target, device=device, dtype=dtype)
        tokenizer = load_tokenizer(args.target)
        drafters = load_named_drafters(args.draft, args.head, target, tokenizer, device, dtype)
        result = benchmark(
            target,
            tokenizer,
            drafters,
            args.tasks,
            args.n_prompts,
            args.max_new_tokens,
            args.gamma,
            args.temperatures,
            args.repeats,
            args.context,
        )
        command = shlex.join(["python", "benchmarks/drafters.py", *(argv or sys.argv[1:])])
        if vllm_python is not None:
            served = {n: (*source, drafters[n]) for n, source in named_sources(args.draft, args.head).items()}
            prompts = [
                ids[0].tolist()
                for ids in task_prompts(
                    args.tasks[0], tokenizer, args.n_prompts, args.context - args.max_new_tokens, device
                )
            ]
            vllm = vllm_benchmark(
                vllm_python,
                args.target,
                target,
                prompts,
                served,
                [r for r in result["rows"] if r["prompts"] == f"{args.tasks[0]}:test"],
                gamma=args.gamma,
                max_new_tokens=args.max_new_tokens,
                temperatures=args.temperatures,
                batch_sizes=args.batch_sizes,
                context=args.context,
                eos_token_id=tokenizer.eos_token_id,
                repeats=args.repeats,
            )
            vllm_out = Path(f"results/benchmarks/vllm_{args.pair}.json")
            atomic_write_json(
                vllm_out, {"pair": args.pair, "command": command, "prompts": f"{args.tasks[0]}:test", **vllm}
            )
            print(format_vllm_rows(vllm))
            print(f"wrote {vllm_out}")
    except AdaspecError as exc:
        print(f"benchmarks/drafters.py: error: {exc}", file=sys.stderr)
        return 2
    result = {"pair": args.pair, "command": command, **result}
    out = Path(args.out or f"results/benchmarks/drafters_{args.pair}.json")
    atomic_write_json(out, result)
    print(format_rows(result))
    try:
        plot(result, out.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
