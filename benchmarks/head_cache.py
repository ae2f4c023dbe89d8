"""EAGLE-3 head training on a live target vs on `adaspec cache --hidden-layers` (no target forward).

Builds the cache once (its build time, the hidden-state size estimate and the bytes on disk are reported),
then trains the same head for --steps optimizer steps twice from the same seed: (a) live, the frozen target
run forward on every batch; (b) cached, `train-head --teacher-cache`. Time per step is measured between
consecutive steps (the loop's `on_step` hook) from the second step on, so loading, the validation
continuations and the final validation are outside it; CPU seconds of this process (torch on --threads
threads) are the headline figure, as in distill_throughput.py, wall-clock beside them. The first-step
loss of both runs is reported too (the same up to the fp16 hidden states and the top-K tail).

    OMP_NUM_THREADS=1 python benchmarks/head_cache.py --target runs/gsm8k/small/target --work /tmp/hc
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaspec.io import atomic_write_json  # noqa: E402
from adaspec.recipes.cache import CacheOptions, run_cache  # noqa: E402
from adaspec.recipes.train_head.options import TrainHeadOptions, run_train_head  # noqa: E402


def _train(args: argparse.Namespace, out: Path, cache: Path | None) -> dict:
    opts = TrainHeadOptions(
        target=args.target,
        output=str(out),
        kind="eagle",
        task=args.task,
        limit=args.limit,
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_steps=args.steps,
        val_every=0,
        val_examples=args.val_examples,
        val_max_new_tokens=16,
        progress=False,
        overwrite=True,
        teacher_cache=str(cache) if cache else None,
        ttt_steps=args.ttt_steps,
    )
    stamps: list[tuple[float, float]] = []
    run_train_head(opts, on_step=lambda step, batches: stamps.append((time.perf_counter(), time.process_time())))
    wall = [b[0] - a[0] for a, b in zip(stamps[1:], stamps[2:])]
    cpu = [b[1] - a[1] for a, b in zip(stamps[1:], stamps[2:])]
    return {
        "steps_timed": len(cpu),
        "cpu_s_per_step": statistics.median(cpu),
        "cpu_s_per_step_mean": statistics.fmean(cpu),
        "wall_s_per_step": statistics.median(wall),
        "first_step_loss": _first_loss(out),
        "run": str(out),
    }


def _first_loss(out: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "logs"))
    acc.Reload()
    return acc.Scalars("train/loss")[0].value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="trained target directory")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--limit", type=int, default=None, help="training examples (default: the whole split)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--ttt-steps", type=int, default=7)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--hidden-layers", default="eagle3")
    p.add_argument("--val-examples", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/adaspec_head_cache")
    p.add_argument("--output", default=None, help="JSON result (default: <work>/head_cache.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    cache = work / "cache"
    manifest = run_cache(
        CacheOptions(
            target=args.target,
            output=str(cache),
            task=args.task,
            limit=args.limit,
            max_length=args.max_length,
            top_k=args.top_k,
            hidden_layers=args.hidden_layers,
            progress=False,
        )
    )
    hidden = manifest["hidden"]
    result = {
        "target": args.target,
        "task": args.task,
        "examples": manifest["data"]["n_items"],
        "response_tokens": manifest["data"]["response_tokens"],
        "positions": hidden["positions"],
        "hidden_layers": hidden["layers"],
        "hidden_size": hidden["size"],
        "top_k": args.top_k,
        "hidden_bytes_estimate": hidden["positions"] * len(hidden["layers"]) * hidden["size"] * 2,
        "cache_bytes_on_disk": manifest["size_bytes"],
        "cache_build_s": manifest["build_seconds"],
        "batch_size": args.batch_size,
        "ttt_steps": args.ttt_steps,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    for name, c in (("live", None), ("cached", cache)):
        result[name] = _train(args, work / name, c)
    result["speedup_cpu"] = result["live"]["cpu_s_per_step"] / result["cached"]["cpu_s_per_step"]
    output = Path(args.output) if args.output else work / "head_cache.json"
    atomic_write_json(output, result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
