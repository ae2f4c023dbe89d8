"""The own-data benchmark: `adaspec build` as a user runs it, on data sets of one's own.

For each data set of benchmarks/own_datasets.py (chat records, neither one of the paper's tasks as shipped):
  1. a target of the `small` pair's architecture (llama-target-s) trained from scratch on the data with the
     built-in chatml template (its tokenizer trained there too): the stand-in for the user's served model;
  2. `adaspec build` on it: every family vLLM can serve, KD and AdaSPEC from a fresh draft at equal steps;
  3. (--pretrained) a draft model first trained as a language model on the same data, then `adaspec build
     --drafters lm --draft-init` from it: the paper's setting, a pretrained draft;
and results/own_data/<dataset>.json with every row {drafter, method, init, steps, alpha, tau, speedup,
engine, ...}, the exact commands, and the load average before and after. Every stage is skipped when its
output is complete (runs/own_data/<dataset>/), so a killed run resumes.

    python benchmarks/own_data.py --datasets gsm8k_chat alpaca_multiturn --steps 150
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_datasets import DATASETS, write_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_PRESET, DRAFT_PRESET = "llama-target-s", "llama-draft-xxs"


def adaspec(*args: object) -> list[str]:
    return [sys.executable, "-m", "adaspec.cli", *map(str, args)]


def run(cmd: list[str], done: Path) -> str:
    """Run `cmd` unless `done` exists; returns it as the user would type it."""
    typed = shlex.join(["adaspec", *cmd[3:]])
    if not done.exists():
        print(f"[own_data {time.strftime('%H:%M:%S')}] {typed}", flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    return typed


def one(name: str, args: argparse.Namespace) -> dict:
    root = Path(args.runs_dir) / name
    data = write_dataset(name, root / "data", limit=args.limit)
    target, commands = root / "target", []
    commands.append(
        run(
            adaspec(
                "train-target",
                "--data",
                data,
                "--preset",
                TARGET_PRESET,
                "--vocab-size",
                2048,
                "--chat-template",
                "chatml",
                "--train-on-prompt",
                "--epochs",
                args.target_epochs,
                "--lr",
                2e-3,
                "--max-length",
                args.max_length,
                "--val-examples",
                64,
                "--no-progress",
                "--output",
                target,
            ),
            target / "train_summary.json",
        )
    )
    common = [
        "--data",
        data,
        "--max-length",
        args.max_length,
        "--max-steps",
        args.steps,
        "--gammas",
        *args.gammas,
        "--test-examples",
        args.test_examples,
        "--max-new-tokens",
        args.max_new_tokens,
        "--lr",
        2e-3,
        "--val-every",
        0,
        "--engine",
        args.engine,
        "--no-progress",
        *(["--drafters", *args.drafters] if args.drafters else []),
    ]
    fresh = root / "build"
    commands.append(run(adaspec("build", "--target", target, *common, "--output", fresh), fresh / "results.json"))
    builds = [fresh]
    if args.pretrained:
        draft = root / "draft_pretrained"
        commands.append(
            run(
                adaspec(
                    "train-target",
                    "--data",
                    data,
                    "--preset",
                    DRAFT_PRESET,
                    "--tokenizer",
                    target,
                    "--train-on-prompt",
                    "--epochs",
                    args.target_epochs,
                    "--lr",
                    2e-3,
                    "--max-length",
                    args.max_length,
                    "--val-examples",
                    64,
                    "--no-progress",
                    "--output",
                    draft,
                ),
                draft / "train_summary.json",
            )
        )
        pretrained = root / "build_pretrained"
        commands.append(
            run(
                adaspec(
                    "build",
                    "--target",
                    target,
                    *common,
                    "--drafters",
                    "lm",
                    "--draft-init",
                    draft,
                    "--output",
                    pretrained,
                ),
                pretrained / "results.json",
            )
        )
        builds.append(pretrained)
    results = [json.loads((b / "results.json").read_text()) for b in builds]
    keep = (
        "drafter",
        "method",
        "init",
        "steps",
        "alpha",
        "tau",
        "speedup",
        "engine",
        "gamma",
        "alpha_drafted",
        "position_acceptance",
        "cold_start",
        "truncated",
    )
    return {
        "dataset": name,
        "target": {"path": str(target), "preset": TARGET_PRESET, "chat_template": "chatml"},
        "commands": commands,
        "data": results[0]["data"],
        "rows": [{k: r.get(k) for k in keep} for res in results for r in res["rows"]],
        "best": {k: results[0]["best"].get(k) for k in keep},
        "left_out": results[0]["left_out"],
    }


def write_readme(out_dir: Path) -> None:
    """results/own_data/README.md: every data set's rows, generated from the JSON files beside it."""
    lines = [
        "# Own data: `adaspec build` on chat data sets of one's own",
        "",
        "Generated by `benchmarks/own_data.py` from the JSON files here (each holds its exact commands and "
        "the load average). Greedy, held-out test prompts, each drafter at its fastest γ; speed is against "
        "the target alone in the engine named.",
        "",
    ]
    for path in sorted(out_dir.glob("*.json")):
        result = json.loads(path.read_text())
        if "rows" not in result or "best" not in result:
            continue
        best, load = result["best"], result["load_average"]
        lines += [
            f"## {result['dataset']}",
            "",
            f"`{result['benchmark_command']}` (load average "
            f"{load['before'][0]:.1f} before, {load['after'][0]:.1f} after)",
            "",
            "| drafter | method | init | cold start | steps | γ | α | τ | speed | engine |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["rows"]:
            lines.append(
                f"| {r['drafter']} | {r['method']} | {r['init']} | {r.get('cold_start') or '–'} | "
                f"{r['steps']} | {r['gamma']} | {r['alpha']:.3f} | {r['tau']:.2f} | "
                f"{r['speedup']:.2f}x | {r['engine']} |"
            )
        lines += [
            "",
            f"Best: {best['drafter']} {best['method']} at γ = {best['gamma']}, {best['speedup']:.2f}x "
            f"({best['engine']}).",
            "",
        ]
    (out_dir / "README.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of every KD and AdaSPEC run")
    parser.add_argument("--limit", type=int, default=4000, help="training records of each data set")
    parser.add_argument("--target-epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--gammas", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--test-examples", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--engine", choices=["auto", "adaspec", "vllm"], default="auto")
    parser.add_argument("--drafters", nargs="+", default=None, help="build's --drafters (default: its own)")
    parser.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "own_data"))
    parser.add_argument("--out-dir", default=str(REPO / "results" / "own_data"))
    args = parser.parse_args()
    for name in args.datasets:
        load_before = os.getloadavg()
        result = one(name, args)
        result.update(
            benchmark_command=shlex.join(["python", "benchmarks/own_data.py", *sys.argv[1:]]),
            load_average={"before": load_before, "after": os.getloadavg()},
        )
        out = Path(args.out_dir) / f"{name}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
        best = result["best"]
        print(
            f"{name}: best {best['drafter']} {best['method']} at γ = {best['gamma']}, {best['speedup']:.2f}x "
            f"({best['engine']}) -> {out}"
        )
        write_readme(out.parent)


if __name__ == "__main__":
    main()
