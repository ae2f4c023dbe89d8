"""Median ms of one cached decode forward (1, 4, 16 new tokens after a 128-token prefix): transformers with
its DynamicCache vs adaspec's lean path (adaspec/models/lean/), optionally vs a torch.compile'd
static-shape lean step (compile time reported apart). Logic: adaspec/evaluation/forward_cost.py.

    python benchmarks/forward_cost.py [--presets neox-demo-target ...] [--vocab 2048] [--prefix 128]
        [--repeats 60] [--threads 1] [--compile] [--device cpu] [--out results/benchmarks/forward_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import torch
import transformers

from adaspec.evaluation.forward_cost import format_table, measure_forward_cost

PRESETS = ["neox-demo-target", "neox-demo-draft", "neox-target-s", "neox-draft-xxs"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--prefix", type=int, default=128)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd lean decode step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/benchmarks/forward_cost.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.compile:  # a cold inductor cache: the compile time a first run pays
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="adaspec_inductor_")
    load_before = os.getloadavg()
    results = measure_forward_cost(
        args.presets,
        vocab=args.vocab,
        prefix=args.prefix,
        sizes=args.sizes,
        repeats=args.repeats,
        compiled=args.compile,
        device=args.device,
    )
    print(format_table(results))
    report = {
        "command": "python benchmarks/forward_cost.py "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "settings": vars(args),
        "machine": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "device": args.device,
            "cpus": os.cpu_count(),
            # shared machine: other users' load is why absolute ms drift between runs
            "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]],
        },
        "presets": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
