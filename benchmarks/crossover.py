"""Predicted speed-up of speculative decoding against target size, from measured lean forward costs and the
τ a trained pair measured; with the formula's calibration against that pair's measured speed-up.
Logic: adaspec/evaluation/crossover.py.

    python benchmarks/crossover.py [--measured results/benchmarks/drafters_small.json] [--method sd_adaspec]
        [--targets neox-demo-target neox-target-s ...] [--draft neox-draft-xxs] [--repeats 30] [--threads 1]
        [--out results/benchmarks/crossover.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaspec.evaluation.crossover import calibration, format_sweep, sweep  # noqa: E402

TARGETS = ["neox-demo-target", "neox-target-s", "neox-target-m", "neox-target-l", "neox-target-xl", "neox-target-xxl"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--measured",
        nargs="+",
        default=["results/benchmarks/drafters_small.json"],
        help="drafters benchmark JSON(s); the first gives τ and γ, each a calibration row",
    )
    p.add_argument("--method", default="sd_adaspec", help="the benchmark row whose τ is used")
    p.add_argument("--targets", nargs="+", default=TARGETS, help="target presets, smallest first")
    p.add_argument("--draft", default="neox-draft-xxs", help="draft preset (the trained pair's draft)")
    p.add_argument("--pair-target", default="neox-target-s", help="target preset of the first --measured pair")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/benchmarks/crossover.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    measured = [json.loads(Path(m).read_text()) for m in args.measured]
    calib = [calibration(m, args.method) for m in measured]
    result = sweep(
        args.targets,
        args.draft,
        tau=calib[0]["tau"],
        gamma=measured[0]["gamma"],
        pair_target=args.pair_target,
        measured_speedup=calib[0]["measured_speedup"],
        vocab=args.vocab,
        repeats=args.repeats,
    )
    print(format_sweep(result))
    for c in calib:
        print(
            f"calibration {c['pair']}: formula {c['formula_speedup']:.2f}x, measured {c['measured_speedup']:.2f}x "
            f"(measured / formula {c['measured_over_formula']:.2f})"
        )
    report = {
        "command": "python benchmarks/crossover.py "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "settings": vars(args),
        "threads": args.threads,
        "load_average_1m": os.getloadavg()[0],
        "sweep": result,
        "calibration": calib,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
