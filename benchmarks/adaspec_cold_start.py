"""Which `--cold-start` AdaSPEC takes by default: the remedies measured against KD from the same fresh draft.

AdaSPEC trains on the top-k (40%) of response tokens by Δ; from an untrained draft (no --draft-init) it may
never learn the rest (issue 30). For each data set of benchmarks/own_datasets.py (chat records, not the
paper's tasks as shipped) this trains a small Llama target (`train-target --chat-template chatml`), then,
ALL from the same fresh draft (--preset llama-demo-draft, the same --init-seed) at N optimizer steps:

  kd               --method kd (also the reference of every AdaSPEC run)
  kd_2n            --method kd at 2N steps: the `ref` remedy has seen N KD steps before its N AdaSPEC steps
  adaspec_<cold>   --method adaspec --ref kd --cold-start <cold>, for off (the old behaviour), ref, warmup, linear

and scores each with `adaspec eval` on held-out test prompts (greedy: α = accepted / drafted tokens, τ,
speed-up against the target alone on this CPU). Every run is kept under --work and skipped when finished, so
an interrupted run resumes. The JSON (--json) holds every row (with the load average around the eval that
timed its speed-up), the settings, the exact command, and the choice: the remedy whose α relative to KD (mean over
data sets and
seeds) is highest. --docs rewrites the table between the markers of that markdown file from the JSON.

    OMP_NUM_THREADS=1 python benchmarks/adaspec_cold_start.py --seeds 0 1 --docs docs/cold_start.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/own_datasets.py, run as a script

from own_datasets import write_dataset  # noqa: E402

from adaspec import cli  # noqa: E402
from adaspec.io import atomic_write_json  # noqa: E402

REMEDIES = ("off", "ref", "warmup", "linear")
MARK_BEGIN, MARK_END = "<!-- cold_start table: benchmarks/adaspec_cold_start.py --docs -->", "<!-- end of table -->"


def adaspec(*args: object) -> None:
    """One adaspec command in this process; a failure stops the benchmark."""
    argv = [str(a) for a in args]
    print("$ adaspec " + shlex.join(argv), flush=True)
    if cli.main(argv) != 0:
        raise SystemExit(f"adaspec {argv[0]} failed")


def done(out: Path) -> bool:
    return (out / "train_summary.json").is_file()


def train(out: Path, *args: object) -> None:
    """Run one training command unless its output is finished."""
    if not done(out):
        adaspec(*args, "--output", out)


def runs_of(args: argparse.Namespace, name: str, seed: int, work: Path, data: Path, target: Path) -> dict[str, dict]:
    """Train the KD and AdaSPEC drafts of one data set and seed; name -> {output, method, cold_start, steps}."""
    common = [
        "--target",
        target,
        "--data",
        data,
        "--preset",
        "llama-demo-draft",
        "--init-seed",
        seed,
        "--seed",
        seed,
        "--limit",
        args.limit,
        "--batch-size",
        args.batch_size,
        "--max-length",
        args.max_length,
        "--val-examples",
        args.val_examples,
        "--val-every",
        0,
        "--no-progress",
    ]
    root = work / name / f"seed{seed}"
    kd = root / "kd"
    plan = {"kd": (kd, "kd", "off", args.steps), "kd_2n": (root / "kd_2n", "kd", "off", 2 * args.steps)}
    plan.update({f"adaspec_{c}": (root / f"adaspec_{c}", "adaspec", c, args.steps) for c in REMEDIES})
    runs = {}
    for run, (out, method, cold, steps) in plan.items():
        extra = ["--ref", kd, "--cold-start", cold] if method == "adaspec" else []
        train(out, "distill", *common, "--method", method, "--max-steps", steps, *extra)
        summary = json.loads((out / "train_summary.json").read_text())
        assert summary["cold_start"] == cold, (run, summary["cold_start"])  # what the run says it did
        runs[run] = {
            "output": out,
            "method": method,
            "cold_start": cold,
            "steps": steps,
            "val_greedy_agreement": summary["best_greedy_agreement"],
        }
    return runs


def evaluate(
    args: argparse.Namespace, name: str, seed: int, work: Path, data: Path, target: Path, runs: dict[str, dict]
) -> dict:
    """`adaspec eval` of every draft of one data set and seed on its test prompts (skipped when done), with the
    load average around it: the speed-ups it times depend on what else ran (α does not)."""
    out = work / name / f"seed{seed}" / "eval.json"
    load = out.with_name("eval_loadavg.json")
    if not out.is_file():
        before = os.getloadavg()
        adaspec(
            "eval",
            "--target",
            target,
            "--draft",
            *[r["output"] for r in runs.values()],
            "--data",
            data,
            "--split",
            "test",
            "--n-prompts",
            args.eval_prompts,
            "--max-new-tokens",
            args.max_new_tokens,
            "--gamma",
            args.gamma,
            "--context",
            args.max_length,
            "--json",
            out,
        )
        atomic_write_json(load, {"eval_loadavg_before": before, "eval_loadavg_after": os.getloadavg()})
    return {**json.loads(out.read_text()), **json.loads(load.read_text())}


def draft_metrics(result: dict, output: Path) -> dict:
    """α, τ and speed-up of the draft at `output` in an eval JSON."""
    for entry in result["drafts"].values():
        if Path(entry["path"]) == output:
            return {"alpha": entry["alpha"], "tau": entry["tau"], "speedup": entry["measured_speedup"]}
    raise SystemExit(f"{output} is not in the eval result")


def summarise(rows: list[dict]) -> dict:
    """Per run kind: mean α and mean α / KD's α over data sets and seeds; the remedy chosen."""
    kd = {(r["dataset"], r["seed"]): r["alpha"] for r in rows if r["run"] == "kd"}
    by_run: dict[str, dict] = {}
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == run]
        by_run[run] = {
            "mean_alpha": statistics.mean(r["alpha"] for r in mine),
            "mean_alpha_vs_kd": statistics.mean(r["alpha"] / kd[r["dataset"], r["seed"]] for r in mine),
            "min_alpha_vs_kd": min(r["alpha"] / kd[r["dataset"], r["seed"]] for r in mine),
        }
    remedies = [c for c in REMEDIES if c != "off" and f"adaspec_{c}" in by_run]
    chosen = max(remedies, key=lambda c: by_run[f"adaspec_{c}"]["mean_alpha_vs_kd"])
    return {"by_run": by_run, "chosen": chosen}


def table(result: dict) -> str:
    """The markdown table of a result: α per data set (mean over seeds, then each seed's), and relative to KD
    (over data sets and seeds)."""
    rows, datasets = result["rows"], result["datasets"]
    lines = [
        "| run | " + " | ".join(f"α {d}" for d in datasets) + " | mean α / KD's α | least α / KD's α |",
        "|---|" + "---:|" * (len(datasets) + 2),
    ]

    def cell(run: str, dataset: str) -> str:
        alphas = [r["alpha"] for r in rows if r["run"] == run and r["dataset"] == dataset]
        each = f" ({', '.join(f'{a:.3f}' for a in alphas)})" if len(alphas) > 1 else ""
        return f"{statistics.mean(alphas):.3f}{each}"

    for run, s in result["summary"]["by_run"].items():
        cells = [cell(run, d) for d in datasets]
        lines.append(
            f"| {run} | " + " | ".join(cells) + f" | {s['mean_alpha_vs_kd']:.2f} | {s['min_alpha_vs_kd']:.2f} |"
        )
    return "\n".join(lines)


def write_docs(path: Path, result: dict) -> None:
    text = path.read_text()
    head, rest = text.split(MARK_BEGIN, 1)
    _, tail = rest.split(MARK_END, 1)
    path.write_text(f"{head}{MARK_BEGIN}\n{table(result)}\n{MARK_END}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["gsm8k_chat", "alpaca_multiturn"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="draft init and data-order seeds")
    p.add_argument("--steps", type=int, default=200, help="N: optimizer steps of every draft run (kd_2n: 2N)")
    p.add_argument("--target-steps", type=int, default=300)
    p.add_argument("--target-lr", type=float, default=2e-3)
    p.add_argument("--limit", type=int, default=3000, help="training records of each data set")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--val-examples", type=int, default=16)
    p.add_argument("--eval-prompts", type=int, default=24)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--gamma", type=int, default=4)
    p.add_argument("--work", type=Path, default=Path("runs/cold_start"), help="every run's output (kept, resumable)")
    p.add_argument("--json", type=Path, default=Path("results/own_data/cold_start.json"))
    p.add_argument("--docs", type=Path, default=None, help="markdown file whose marked table to rewrite")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_before = os.getloadavg()
    start = time.time()
    rows = []
    for name in args.datasets:
        data = write_dataset(name, args.work / name / "data", args.limit)
        target = args.work / name / "target"
        train(
            target,
            "train-target",
            "--data",
            data,
            "--preset",
            "llama-demo-target",
            "--chat-template",
            "chatml",
            "--vocab-size",
            1024,
            "--limit",
            args.limit,
            "--max-steps",
            args.target_steps,
            "--lr",
            args.target_lr,
            "--batch-size",
            args.batch_size,
            "--max-length",
            args.max_length,
            "--val-every",
            0,
            "--val-examples",
            32,
            "--no-progress",
        )
        for seed in args.seeds:
            runs = runs_of(args, name, seed, args.work, data, target)
            result = evaluate(args, name, seed, args.work, data, target, runs)
            for run, r in runs.items():
                rows.append(
                    {
                        "dataset": name,
                        "seed": seed,
                        "run": run,
                        "drafter": "draft",
                        "method": r["method"],
                        "cold_start": r["cold_start"],
                        "init": "fresh",
                        "steps": r["steps"],
                        "engine": "adaspec",
                        **draft_metrics(result, r["output"]),
                        "val_greedy_agreement": r["val_greedy_agreement"],
                        "eval_loadavg_before": result["eval_loadavg_before"],
                        "eval_loadavg_after": result["eval_loadavg_after"],
                    }
                )
                print(f"{name} seed {seed} {run}: α {rows[-1]['alpha']:.3f}", flush=True)
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "datasets": args.datasets,
        "seeds": args.seeds,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "docs", "work")},
        "target": {"preset": "llama-demo-target", "chat_template": "chatml", "vocab_size": 1024},
        "draft": {"preset": "llama-demo-draft", "init": "fresh"},
        # this invocation's, which may only have read finished runs; each row has its eval's own
        "invocation_loadavg_before": load_before,
        "invocation_loadavg_after": os.getloadavg(),
        "invocation_wall_s": time.time() - start,
        "rows": rows,
    }
    result["summary"] = summarise(rows)
    atomic_write_json(args.json, result)
    print(table(result))
    print(f"chosen: --cold-start {result['summary']['chosen']}; wrote {args.json}")
    if args.docs:
        write_docs(args.docs, result)


if __name__ == "__main__":
    main()
