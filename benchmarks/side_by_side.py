"""Two checkouts of adaspec, the same drafters and the same prompts, side by side in one run: whether a change
kept every drafter's acceptance (greedy α, τ: identical) and its speed (tokens/s against the target alone,
within noise), on chains and on token trees (issue 26's proof that the redesign changed nothing).

    python benchmarks/side_by_side.py --before REV [--repeats 3] [--out results/benchmarks/side_by_side_demo.json]

REV is checked out with `git worktree` into a temporary folder. Each repeat runs, in both checkouts and in
alternating order (so drift hits both alike), that checkout's own `benchmarks/drafters.py` (chains, greedy) and
`benchmarks/tree.py` (chains against trees) on the models of `make demo` and benchmarks/demo_drafters.sh
(runs/gsm8k/demo: both draft models, EAGLE-3, EAGLE-1, MTP, Medusa and DFlash heads), with this environment's
python and one thread. Reported per method: the median over repeats of tokens/s and of its ratio to the
target alone measured in the same run, for each side, and whether α and τ differ between the sides.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "runs/gsm8k/demo"


def drafters_command(out: Path) -> list[str]:
    return [
        "benchmarks/drafters.py",
        "--target",
        f"{RUN}/target",
        "--pair",
        "demo",
        "--draft",
        f"distillspec={RUN}/seed0/distillspec",
        f"adaspec={RUN}/seed0/adaspec",
        "--head",
        f"eagle={RUN}/heads/eagle",
        f"eagle:eagle1={RUN}/heads/eagle1",
        f"mtp={RUN}/heads/mtp",
        f"medusa={RUN}/heads/medusa",
        f"dflash={RUN}/heads/dflash_kd/seed0",
        "--tasks",
        "gsm8k",
        "--n-prompts",
        "6",
        "--max-new-tokens",
        "64",
        "--gamma",
        "3",
        "--temperatures",
        "0",
        "--repeats",
        "1",
        "--out",
        str(out),
    ]


def tree_command(out: Path) -> list[str]:
    return [
        "benchmarks/tree.py",
        "--target",
        f"{RUN}/target",
        "--pair",
        "demo",
        "--draft",
        f"adaspec={RUN}/seed0/adaspec",
        "--head",
        f"eagle={RUN}/heads/eagle",
        f"mtp={RUN}/heads/mtp",
        "--n-prompts",
        "3",
        "--max-new-tokens",
        "64",
        "--chains",
        "3",
        "--repeats",
        "1",
        "--out",
        str(out),
    ]


def run(tree: Path, argv: list[str]) -> dict[str, Any]:
    # `python script` puts the script's folder's parent (the checkout) first: each side imports its own adaspec
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *argv], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(Path(argv[argv.index("--out") + 1]).read_text())


def rows_of(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """method -> its row, for both benchmarks' JSON (the tree benchmark's methods name their shape)."""
    rows = result["rows"] if "rows" in result else [r for m in result["measurements"].values() for r in m["rows"]]
    return {f"{r['method']}{'@T' + str(r['temperature']) if 'temperature' in r else ''}": r for r in rows}


def compare(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per method: medians of tokens/s and vs_target per side; α and τ of both sides (identical expected)."""
    before = [rows_of(r) for r in runs["before"]]
    after = [rows_of(r) for r in runs["after"]]
    out = []
    for method in before[0]:
        if method not in after[0]:
            continue
        row: dict[str, Any] = {"method": method}
        for side, reps in (("before", before), ("after", after)):
            row[f"{side}_tokens_per_s"] = statistics.median(r[method]["tokens_per_s"] for r in reps)
            row[f"{side}_vs_target"] = statistics.median(r[method]["vs_target"] for r in reps)
            row[f"{side}_alpha"] = reps[0][method].get("alpha")
            row[f"{side}_tau"] = reps[0][method].get("tau")
        row["after_over_before_vs_target"] = row["after_vs_target"] / row["before_vs_target"]
        row["same_alpha_and_tau"] = (row["before_alpha"], row["before_tau"]) == (row["after_alpha"], row["after_tau"])
        out.append(row)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git revision to compare the working tree against")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="results/benchmarks/side_by_side_demo.json")
    args = p.parse_args()
    load = os.getloadavg()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        "chains": {"before": [], "after": []},
        "trees": {"before": [], "after": []},
    }
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.before], cwd=ROOT, check=True)
        try:
            for r in range(args.repeats):
                for side, tree in (("before", old), ("after", ROOT))[:: 1 if r % 2 == 0 else -1]:
                    print(f"repeat {r + 1}/{args.repeats}: {side}", flush=True)
                    results["chains"][side].append(run(tree, drafters_command(Path(tmp) / f"chains_{side}{r}.json")))
                    results["trees"][side].append(run(tree, tree_command(Path(tmp) / f"trees_{side}{r}.json")))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    rows = {kind: compare(runs) for kind, runs in results.items()}
    result = {
        "command": shlex.join(["python", "benchmarks/side_by_side.py", *sys.argv[1:]]),
        "before": args.before,
        "after": "working tree",
        "threads": 1,
        "repeats": args.repeats,
        "load_average_before_after": [[round(x, 2) for x in load], [round(x, 2) for x in os.getloadavg()]],
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for kind, kind_rows in rows.items():
        for r in kind_rows:
            print(
                f"{kind} {r['method']}: vs target before {r['before_vs_target']:.3f}, after {r['after_vs_target']:.3f}"
                f" ({r['after_over_before_vs_target']:.3f}x); α and τ {'same' if r['same_alpha_and_tau'] else 'DIFFER'}"
            )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
