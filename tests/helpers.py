"""Helpers shared by the training tests: run the CLI, read logs, summaries and weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from adaspec import cli, data

REPO = Path(__file__).resolve().parents[1]


def run(*args) -> int:
    return cli.main([str(a) for a in args])


def torchrun(command: str, out: Path, *args) -> subprocess.CompletedProcess:
    """`adaspec COMMAND ARGS --output OUT` in 2 CPU processes under torch.distributed.run; it must succeed."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "adaspec.cli",
        command,
        *map(str, args),
        "--output",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def options_from(args: list, *more) -> object:
    """The options dataclass a command line builds (to call a recipe's run function directly)."""
    words = [str(a) for a in [*args, *more]]
    return cli.options_from_args(cli.options_class(words[0]), cli.build_parser(words[0]).parse_args(words))


def scalars(out: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "logs"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def max_diff(a: Path, b: Path) -> float:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def summary(out: Path) -> dict:
    return json.loads((out / "train_summary.json").read_text())


def cli_error(capsys, *args) -> str:
    """Run a command that must fail; its stderr must be one line naming the command."""
    assert run(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"adaspec {args[0]}: error: "), err
    assert len(err.splitlines()) == 1, err
    return err


def replay_greedy_sd(ok: Callable[[int, int], bool], gamma: int, max_new: int) -> tuple[int, int, int]:
    """(drafted, accepted, rejections) that greedy SD must count along the target's greedy continuation of
    `max_new` tokens, given ok(r, k): whether proposal k (1-based) of a step starting at continuation offset r
    equals token r + k - 1 of the continuation, teacher-forced (proposals 1..k-1 accepted, so equal to the
    data). A step tests proposals until the first disagreement; after γ agreements the next position is the
    target's bonus token, never tested."""
    drafted = accepted = rejections = 0
    r = 0
    while r < max_new:
        g = min(gamma, max_new - r)
        k = 0
        while k < g and ok(r, k + 1):
            k += 1
        drafted, accepted, rejections = drafted + g, accepted + k, rejections + (k < g)
        r += k + 1
    return drafted, accepted, rejections


def write_chats(path: Path, n: int, assistant: bool = True) -> Path:
    """`n` GSM8K problems as chats: a system turn, the question, (with `assistant`) the worked answer."""
    rows = []
    for ex in data.load_task("gsm8k", "train", limit=n):
        turns = [{"role": "system", "content": "You are a patient math tutor."}, {"role": "user", "content": ex.prompt}]
        if assistant:
            turns.append({"role": "assistant", "content": ex.response})
        rows.append(json.dumps({"messages": turns}))
    path.write_text("\n".join(rows) + "\n")
    return path
