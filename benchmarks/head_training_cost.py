"""What the heads of `adaspec reproduce --heads eagle mtp medusa` cost to train, per head run and in all.

Each head run of the pipeline (adaspec.recipes.reproduce.protocols.HEADS, with the options `Pipeline.head_options`
gives it: the preset's batch, training length, head budget, EAGLE unroll steps, MTP/Medusa depths, the
AdaSPEC heads against their KD head) is trained for --steps optimizer steps on the given target, on one
thread, each run in this process one after the other. Reported per run: CPU seconds per optimizer step
(steps 2 .. last: the first pays one-off costs) and the rest of the run's CPU seconds (loading, the target's
validation continuations, validations, saving), with wall-clock beside them. CPU seconds are the headline,
as in benchmarks/distill_throughput.py: on an idle core they equal wall-clock, and unlike wall-clock they do
not depend on what else shares the CPU. The projection multiplies each run's per-step cost by its planned
steps at the preset's head_epochs (AdaSPEC heads: the matched token budget) over the preset's seeds
(EAGLE-1 on the first only) and adds the measured rest of each run.

    python benchmarks/head_training_cost.py --target runs/gsm8k/small/target --preset small --steps 10
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from adaspec.io import atomic_write_json
from adaspec.recipes.reproduce.pipeline import Pipeline, ReproduceOptions
from adaspec.recipes.reproduce.protocols import HEADS
from adaspec.recipes.train_head.options import run_train_head
from adaspec.training.loop import planned_steps
from adaspec.training.setup import run_budget


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="a trained target model directory (read only)")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps measured per head run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/benchmarks/head_training_cost.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="head_cost_"))
    pipe = Pipeline(
        ReproduceOptions(
            task=args.task, preset=args.preset, runs_dir=str(work), progress=False, heads=["eagle", "mtp", "medusa"]
        )
    )
    runs: dict[str, dict] = {}
    for name, spec in HEADS.items():
        ref = Path(runs[spec["ref"]]["output"]) if "ref" in spec else None
        opts = pipe.head_options(name, Path(args.target), 0, ref)
        measured = replace(opts, max_steps=args.steps, val_every=max(1, args.steps // 2))
        cpu: list[float] = []
        wall: list[float] = []
        c0, w0 = time.process_time(), time.perf_counter()
        run_train_head(
            measured, on_step=lambda step, batches: (cpu.append(time.process_time()), wall.append(time.perf_counter()))
        )
        c1, w1 = time.process_time(), time.perf_counter()
        per_step = (cpu[-1] - cpu[1]) / (len(cpu) - 2)
        n_train = pipe.n_train
        shaped = run_budget(opts, n_train)
        planned = planned_steps(n_train, shaped.batch_size, opts.grad_accum, shaped.epochs)
        runs[name] = {
            "output": opts.output,
            "cpu_s_per_step": per_step,
            "wall_s_per_step": (wall[-1] - wall[1]) / (len(wall) - 2),
            "rest_cpu_s": (c1 - c0) - args.steps * per_step,
            "run_cpu_s": c1 - c0,
            "run_wall_s": w1 - w0,
            "planned_steps": planned,
            "global_batch": shaped.batch_size,
            "epochs": shaped.epochs,
            "seeds": 1 if spec.get("first_seed") else len(pipe.seeds),
        }
        print(
            f"{name}: {per_step:.2f} CPU s/step, {runs[name]['rest_cpu_s']:.1f} CPU s besides, {planned} planned steps",
            flush=True,
        )
    projected = sum(r["seeds"] * (r["planned_steps"] * r["cpu_s_per_step"] + r["rest_cpu_s"]) for r in runs.values())
    result = {
        "command": shlex.join(["python", *sys.argv]),
        "target": args.target,
        "preset": args.preset,
        "head_epochs": pipe.p.head_epochs,
        "head_ttt_steps": pipe.p.head_ttt_steps,
        "gamma": pipe.p.gamma,
        "seeds": pipe.seeds,
        "threads": args.threads,
        "steps_measured": args.steps,
        "runs": {n: {k: v for k, v in r.items() if k != "output"} for n, r in runs.items()},
        "projected_cpu_s_all_heads": projected,
    }
    print(f"all heads of {len(pipe.seeds)} seeds at {pipe.p.head_epochs:g} epochs: ~{projected / 60:.0f} CPU minutes")
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
