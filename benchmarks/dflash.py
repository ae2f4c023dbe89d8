"""DFlash heads on a reproduction pair: KD against AdaSPEC over seeds at equal optimizer steps, beside the
pair's other drafters (issue 28's measurements).

For each seed s: `adaspec train-head --kind dflash` trains a KD head (--seed s --init-seed s) and an AdaSPEC
head selecting against it (--method adaspec --ref KD, the same --max-steps), with the budget the pair's
other heads were trained at (benchmarks/demo_drafters.sh: batch 16, lr 2e-3, --steps optimizer steps).
Then one benchmark per seed (adaspec.evaluation.drafters.benchmark, as benchmarks/drafters.py measures:
the target alone on the lean path as the baseline, tokens/s and its ratio, α, per-position acceptance, τ,
c) of that seed's two heads; the first seed's also holds the pair's draft models and heads where
`adaspec reproduce` / benchmarks/demo_drafters.sh left them (runs/<task>/<pair>/seed0/{distillspec,adaspec},
runs/<task>/<pair>/heads/* and seed0/heads/*), and its plot is written beside the JSON.

Resumable: a finished training run (its train_summary.json) is skipped, and so is a seed whose measurement
is in the JSON already; the JSON is rewritten after every seed with the exact command, the settings and the
load average (os.getloadavg()) at the start and around each measurement. The pair's target is the one
`adaspec reproduce --preset PAIR` trains (adaspec.recipes.reproduce.pipeline.Pipeline.target), trained first when
absent.

    OMP_NUM_THREADS=1 python benchmarks/dflash.py --pair demo      # then --pair small
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaspec import cli  # noqa: E402
from adaspec.evaluation.drafters import benchmark, format_rows, load_named_drafters  # noqa: E402
from adaspec.io import atomic_write_json  # noqa: E402
from adaspec.models import load_model, load_tokenizer  # noqa: E402
from adaspec.recipes.reproduce.pipeline import Pipeline, ReproduceOptions  # noqa: E402
from adaspec.recipes.reproduce.protocols import HEADS  # noqa: E402
from benchmarks.drafters import plot  # noqa: E402

DRAFT_MODELS = ("distillspec", "adaspec")  # the pipeline's draft models, runs/<task>/<pair>/seed<s>/<name>
METHODS = ("kd", "adaspec")
MEASURED = ("alpha", "tau", "c", "tokens_per_s", "vs_target")


def finished(path: Path) -> dict[str, Any] | None:
    summary = path / "train_summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else None


def train(out: Path, steps: int, argv: list[str]) -> dict[str, Any]:
    """`adaspec train-head` unless `out` holds a finished run; its summary, refused if trained for other steps
    (a head of another budget would be compared as if it had this one)."""
    summary = finished(out)
    if summary is None:
        command = ["train-head", *argv, "--output", str(out)]
        print("$ adaspec " + shlex.join(command), flush=True)
        if cli.main(command) != 0:
            raise SystemExit(f"adaspec train-head failed for {out}")
        summary = finished(out)
        assert summary is not None, out
    if summary["steps"] != steps:
        raise SystemExit(f"{out} was trained for {summary['steps']} steps, not --steps {steps}: use another --work")
    return summary


def other_drafters(root: Path) -> tuple[list[str], list[str]]:
    """(--draft NAME=DIR, --head KIND:NAME=DIR) of the pair's finished draft models and heads."""
    drafts = [f"{n}={root / 'seed0' / n}" for n in DRAFT_MODELS if finished(root / "seed0" / n)]
    heads = {}
    for folder in (root / "heads", root / "seed0" / "heads"):  # benchmarks/demo_drafters.sh's, the pipeline's
        for name, spec in HEADS.items():
            if name not in heads and finished(folder / name):
                heads[name] = f"{spec['kind']}:{name}={folder / name}"
    return drafts, list(heads.values())


def summarise(measurements: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per prompt set, temperature and method: mean and standard deviation over seeds of every measure, and
    the mean acceptance at each draft position."""
    groups: dict[tuple[str, float, str], list[dict[str, Any]]] = {}
    for result in measurements.values():
        for row in result["rows"]:
            if row["method"] in {f"sd_dflash_{m}" for m in METHODS}:
                groups.setdefault((row["prompts"], row["temperature"], row["method"]), []).append(row)
    out = []
    for (prompts, temperature, method), rows in sorted(groups.items()):
        entry: dict[str, Any] = {"prompts": prompts, "temperature": temperature, "method": method, "seeds": len(rows)}
        for key in MEASURED:
            values = [r[key] for r in rows if r[key] is not None]
            entry[key] = statistics.mean(values) if values else None
            entry[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        positions = [r["position_acceptance"] for r in rows if r["position_acceptance"]]
        entry["position_acceptance"] = (
            [statistics.mean(p[i] for p in positions if p[i] is not None) for i in range(min(map(len, positions)))]
            if positions
            else None
        )
        out.append(entry)
    return out


def format_summary(summary: list[dict[str, Any]]) -> str:
    def f(entry: dict[str, Any], key: str) -> str:
        mean, sd = entry[key], entry[f"{key}_sd"]
        return "-" if mean is None else f"{mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}")

    lines = [
        "| prompts | T | method | seeds | vs target | α | τ | c | per position |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        per = " ".join(f"{a:.2f}" for a in e["position_acceptance"] or [])
        lines.append(
            f"| {e['prompts']} | {e['temperature']:g} | {e['method']} | {e['seeds']} | {f(e, 'vs_target')} | "
            f"{f(e, 'alpha')} | {f(e, 'tau')} | {f(e, 'c')} | {per} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", default="demo", help="the reproduction preset whose target is drafted for")
    p.add_argument("--task", default="gsm8k", help="training data, and the pipeline's runs/<task>/<pair>")
    p.add_argument("--runs-dir", default="runs", help="where `adaspec reproduce` keeps the pair")
    p.add_argument("--work", default=None, help="where the dflash heads go (default runs/<task>/<pair>/heads)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of every head (the other heads' 100)")
    p.add_argument("--block-size", type=int, default=4, help="B = γ + 1")
    p.add_argument("--tasks", nargs="+", default=["gsm8k"], help="tasks whose test prompts are decoded")
    p.add_argument("--n-prompts", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--val-examples", type=int, default=16, help="validation prompts of each training run")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="JSON path (default results/benchmarks/dflash_<pair>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = shlex.join(["python", "benchmarks/dflash.py", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out or f"results/benchmarks/dflash_{args.pair}.json")
    gamma = args.block_size - 1
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "runs_dir", "work", "seeds", "threads")}
    result: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    if result and result["settings"] != settings:
        raise SystemExit(f"{out} holds measurements with other settings ({result['settings']}): use another --out")
    result = {
        "pair": args.pair,
        "command": command,
        "settings": settings,
        "load_average_at_start": list(os.getloadavg()),
        "training": result.get("training", {}),
        "measurements": result.get("measurements", {}),
    }

    pipe = Pipeline(ReproduceOptions(task=args.task, preset=args.pair, runs_dir=args.runs_dir, progress=False))
    target = pipe.target()
    work = Path(args.work) if args.work else pipe.root / "heads"
    common = [
        "--kind",
        "dflash",
        "--block-size",
        str(args.block_size),
        "--target",
        str(target),
        "--task",
        args.task,
        "--max-length",
        "256",
        "--batch-size",
        "16",
        "--max-steps",
        str(args.steps),
        "--lr",
        "2e-3",
        "--val-every",
        "50",
        "--val-examples",
        str(args.val_examples),
        "--val-max-new-tokens",
        "64",
        "--no-progress",
    ]
    model, tokenizer = load_model(str(target)), load_tokenizer(str(target))
    device = next(model.parameters()).device
    for seed in args.seeds:
        heads = {m: work / f"dflash_{m}" / f"seed{seed}" for m in METHODS}
        seeded = ["--seed", str(seed), "--init-seed", str(seed)]
        for method in METHODS:
            ref = ["--ref", str(heads["kd"])] if method == "adaspec" else []
            summary = train(heads[method], args.steps, [*common, *seeded, "--method", method, *ref])
            result["training"][f"dflash_{method}/seed{seed}"] = {
                "path": str(heads[method]),
                "steps": summary["steps"],
                "cold_start": summary.get("cold_start"),
                "best_accept_length": summary["best_accept_length"],
            }
        if f"seed{seed}" in result["measurements"]:
            continue
        drafts, others = other_drafters(pipe.root) if seed == args.seeds[0] else ([], [])
        named = load_named_drafters(
            drafts, [*others, *(f"dflash:dflash_{m}={heads[m]}" for m in METHODS)], model, tokenizer, device
        )
        print(f"--- seed {seed}: measuring {', '.join(named)}", flush=True)
        measured = benchmark(
            model,
            tokenizer,
            named,
            args.tasks,
            args.n_prompts,
            args.max_new_tokens,
            gamma,
            args.temperatures,
            args.repeats,
            context=256,
        )
        result["measurements"][f"seed{seed}"] = measured
        result["summary"] = summarise(result["measurements"])
        atomic_write_json(out, result)
        print(format_rows(measured), flush=True)
        if seed == args.seeds[0]:
            plot(measured, out.with_suffix(".png"))
    result["summary"] = summarise(result["measurements"])
    atomic_write_json(out, result)
    print(format_summary(result["summary"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
