"""Whether two runs of `adaspec reproduce` (e.g. `make demo` before and after a change, at the same thread
count) measured the same thing: every acceptance, loss and quality figure of their results.json compared
exactly, the timing figures (speed, c) listed beside as ratios only.

    python benchmarks/same_results.py BEFORE/results.json AFTER/results.json --before-rev REV \
        [--out results/benchmarks/same_results_demo.json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

# figures a clock measures: they move with the machine's load, so only their ratio is reported
TIMED = ("c", "measured_speedup", "theoretical_speedup", "speed", "tokens_per_s", "seconds", "time")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every number or string leaf of a JSON value, by its dotted path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def timed(path: str) -> bool:
    return any(part.startswith(TIMED) for part in path.split("."))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="results.json of the run before the change")
    p.add_argument("after", help="results.json of the run after it")
    p.add_argument("--before-rev", required=True, help="the git revision the before run used")
    p.add_argument("--out", default="results/benchmarks/same_results_demo.json")
    args = p.parse_args()
    before = flatten(json.loads(Path(args.before).read_text()))
    after = flatten(json.loads(Path(args.after).read_text()))
    skip = ("command",)  # where each run wrote its results
    measured = {k for k in before.keys() & after.keys() if not timed(k) and not k.startswith(skip)}
    differing = {k: [before[k], after[k]] for k in sorted(measured) if before[k] != after[k]}
    ratios = {
        k: after[k] / before[k]
        for k in sorted(before.keys() & after.keys())
        if timed(k) and isinstance(before[k], int | float) and isinstance(after[k], int | float) and before[k]
    }
    alpha = {
        name: [before[f"alpha_greedy.{name}"], after[f"alpha_greedy.{name}"]]
        for name in sorted(k.split(".", 1)[1] for k in before if k.startswith("alpha_greedy.") and k.count(".") == 1)
    }
    result = {
        "command": shlex.join(["python", "benchmarks/same_results.py", *sys.argv[1:]]),
        "before_rev": args.before_rev,
        "compared": len(measured),
        "only_before": sorted(before.keys() - after.keys()),
        "only_after": sorted(after.keys() - before.keys()),
        "differing": differing,
        "greedy_alpha_before_after": alpha,
        "timed_after_over_before": ratios,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, (a, b) in alpha.items():
        print(f"greedy α {name}: before {a!r}, after {b!r} ({'same' if a == b else 'DIFFERENT'})")
    print(f"{len(measured)} figures compared, {len(differing)} differ; wrote {args.out}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
