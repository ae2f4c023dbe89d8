"""Wall time of the same commands in two checkouts of adaspec, alternated, medians over repeats: whether a
change slowed the decoding or training paths (issue 27's check that its input checks cost nothing there).

    python benchmarks/before_after.py --before REV [--repeats 3] [--out results/benchmarks/before_after.json]

REV is checked out with `git worktree` into a temporary folder; both sides run with this environment's
python from inside their own checkout (so each imports its own adaspec) on the demo pair of `make demo`
(runs/gsm8k/demo).
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "runs/gsm8k/demo"


def commands(out: str) -> dict[str, list[str]]:
    py = [sys.executable, "-m", "adaspec.cli"]
    return {
        "decode (generate, 256 tokens)": [
            *py,
            "generate",
            "--target",
            f"{RUN}/target",
            "--draft",
            f"{RUN}/seed0/adaspec",
            "--prompt",
            "Natalia sold clips to 48 of her friends",
            "--gamma",
            "3",
            "--max-new-tokens",
            "256",
        ],
        "training (distill, 30 steps)": [
            *py,
            "distill",
            "--target",
            f"{RUN}/target",
            "--draft-init",
            f"{RUN}/draft_init",
            "--max-steps",
            "30",
            "--limit",
            "480",
            "--val-every",
            "0",
            "--val-examples",
            "4",
            "--val-max-new-tokens",
            "8",
            "--no-progress",
            "--overwrite",
            "--output",
            out,
        ],
    }


def timed(cmd: list[str], tree: Path) -> float:
    # `python -m` puts the working directory first on sys.path: each side runs inside its own checkout
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git revision to compare the working tree against")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="results/benchmarks/before_after.json")
    args = p.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.before], cwd=ROOT, check=True)
        try:
            times: dict[str, dict[str, list[float]]] = {}
            for name, cmd in commands(str(Path(tmp) / "distill")).items():
                times[name] = {"before": [], "after": []}
                for r in range(args.repeats):  # alternated, so drift hits both alike
                    for side, tree in (("before", old), ("after", ROOT))[:: 1 if r % 2 == 0 else -1]:
                        times[name][side].append(timed(cmd, tree))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    rows = [
        {
            "what": name,
            "before_s": statistics.median(t["before"]),
            "after_s": statistics.median(t["after"]),
            "after_over_before": statistics.median(t["after"]) / statistics.median(t["before"]),
            "runs": t,
        }
        for name, t in times.items()
    ]
    result = {
        "command": shlex.join(["python", "benchmarks/before_after.py", *sys.argv[1:]]),
        "before": args.before,
        "after": "working tree",
        "threads": 1,
        "load_average_1m_before_after": [round(load, 2), round(os.getloadavg()[0], 2)],
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        print(f"{r['what']}: before {r['before_s']:.2f} s, after {r['after_s']:.2f} s ({r['after_over_before']:.3f}x)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
