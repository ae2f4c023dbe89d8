"""Where a speculative step's time goes, beside the target-alone step it has to beat: the command line of
adaspec.evaluation.step_profile (whose docstring says how the step is split). Prints the table; --out also
writes the JSON.

    python benchmarks/step_profile.py --target DIR --draft adaspec=DIR [--head eagle=DIR] [--gamma 3]
        [--confidences 0 0.1 0.3]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaspec.errors import AdaspecError  # noqa: E402
from adaspec.evaluation.drafters import load_named_drafters, task_prompts  # noqa: E402
from adaspec.evaluation.step_profile import format_profile, forward_timings, profile  # noqa: E402
from adaspec.io import atomic_write_json  # noqa: E402
from adaspec.models import load_model, load_tokenizer  # noqa: E402
from benchmarks.drafters import add_drafter_arguments  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_drafter_arguments(p)
    p.add_argument("--task", default="gsm8k", help="task whose test prompts are decoded")
    p.add_argument("--n-prompts", type=int, default=10, help="prompts per repeat")
    p.add_argument("--max-new-tokens", type=int, default=96, help="tokens generated per prompt at most")
    p.add_argument("--gamma", type=int, default=3, help="draft tokens per step")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument(
        "--confidences",
        type=float,
        nargs="+",
        default=[0.0],
        help="draft-model stop thresholds to run each draft model at (0 = always gamma)",
    )
    p.add_argument("--repeats", type=int, default=5, help="repeats; the medians are over these")
    p.add_argument("--context", type=int, default=256, help="positions prompt + continuation may use")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    try:
        torch.set_num_threads(args.threads)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        target = load_model(args.target, device=device)
        tokenizer = load_tokenizer(args.target)
        drafters = load_named_drafters(args.draft, args.head, target, tokenizer, device)
        if not drafters:
            raise AdaspecError("give at least one --draft or --head")
        prompts = task_prompts(args.task, tokenizer, args.n_prompts, args.context - args.max_new_tokens, device)
        forward = forward_timings(target, drafters, prompts[0], args.gamma)
        methods = profile(
            target,
            drafters,
            prompts,
            args.gamma,
            args.max_new_tokens,
            args.repeats,
            tokenizer.eos_token_id,
            args.temperature,
            tuple(args.confidences),
        )
    except AdaspecError as exc:
        print(f"benchmarks/step_profile.py: error: {exc}", file=sys.stderr)
        return 2
    result = {
        "command": shlex.join(["python", "benchmarks/step_profile.py", *(argv or sys.argv[1:])]),
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "gamma": args.gamma,
        "temperature": args.temperature,
        "threads": torch.get_num_threads(),
        "confidences": args.confidences,
        "forward_ms": forward,
        "methods": methods,
    }
    print(format_profile(result))
    if args.out:
        atomic_write_json(Path(args.out), result)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
