"""Where a speculative step's time goes, beside the target-alone step it has to beat.

The target alone and speculative decoding with each drafter decode the same prompts, interleaved per prompt in
a rotating order, on the decode path both use. Each speculative step's time is split by the loop's own clocks
(`SpecStats`, so the real loop is measured, not a copy of it): `draft` (the drafter's proposals), `verify_forward`
(the target's forward over the last token and the proposals), `accept` (the acceptance rule and the step's
host sync) and `other` (the rest of the loop: bookkeeping, cache crops, the drafter's accept). Medians over
repeats of the per-step means; isolated forward timings on the same path sit beside them.

    python benchmarks/step_profile.py --target DIR --draft adaspec=DIR [--head eagle=DIR] [--gamma 3]
        [--confidences 0 0.1 0.3]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from adaspec.decoding.generate import speculative_generate, target_only_generate
from adaspec.models.target import Clock
from adaspec.decoding.drafter import Drafter
from adaspec.errors import AdaspecError
from adaspec.evaluation.drafters import _prompts, add_drafter_arguments, decode_forward_ms, load_named_drafters
from adaspec.io import atomic_write_json
from adaspec.core.metrics import SpecStats
from adaspec.models import load_model, load_tokenizer

PARTS = ("draft", "verify_forward", "accept", "other")
BASELINE = "target"


def step_parts(stats: SpecStats) -> dict[str, float]:
    """Milliseconds per step of each part of a speculative loop, from its counters."""
    steps = max(stats.steps, 1)
    known = stats.draft_time_s + stats.target_time_s + stats.verify_time_s
    seconds = {"draft": stats.draft_time_s, "verify_forward": stats.target_time_s, "accept": stats.verify_time_s,
               "other": stats.decode_time_s - known}
    return {k: 1e3 * v / steps for k, v in seconds.items()}


def profile(target: PreTrainedModel, drafters: dict[str, PreTrainedModel | Drafter], prompts: list[torch.Tensor],
            gamma: int, max_new_tokens: int, repeats: int, eos: int | None, temperature: float = 0.0,
            confidences: tuple[float, ...] = (0.0,)) -> dict[str, Any]:
    """The split per drafter and the target-alone time per token (see the module docstring). Draft models run
    once per stop threshold in `confidences` (named NAME@c for c > 0)."""
    device = next(target.parameters()).device
    runs = {BASELINE: lambda ids: target_only_generate(target, ids, max_new_tokens, eos_token_id=eos,
                                                       temperature=temperature, seed=0)}

    def sd(d: PreTrainedModel | Drafter, confidence: float | None) -> Any:
        return lambda ids: speculative_generate(target, d, ids, max_new_tokens, gamma=gamma, temperature=temperature,
                                                eos_token_id=eos, seed=0, draft_confidence=confidence)

    for name, d in drafters.items():
        if isinstance(d, PreTrainedModel):
            runs.update({name if c == 0 else f"{name}@{c:g}": sd(d, c) for c in confidences})
        else:
            runs[name] = sd(d, None)
    names = list(runs)
    for name in names:  # one-off costs (allocator, lazy init) are not decoding speed
        runs[name](prompts[0][:, :8])
    clock = Clock(device)
    per_repeat: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        wall = {n: 0.0 for n in names}
        stats = {n: SpecStats() for n in names}
        for ids in prompts:
            for name in order:
                t0 = clock()
                _, st = runs[name](ids)
                wall[name] += clock() - t0
                stats[name] = stats[name] + st
        for name in names:
            s = stats[name]
            row = {"tokens_per_s": s.emitted / wall[name], "decode_ms_per_token": 1e3 * s.decode_time_s / s.emitted}
            if name != BASELINE:
                row.update({f"{k}_ms": v for k, v in step_parts(s).items()},
                           step_ms=1e3 * s.decode_time_s / max(s.steps, 1), tau=s.tau, mean_gamma=s.mean_gamma,
                           draft_forward_ms=1e3 * s.draft_time_s / max(s.draft_forwards, 1))
            per_repeat[name].append(row)
    out: dict[str, Any] = {}
    base_tps = [row["tokens_per_s"] for row in per_repeat[BASELINE]]
    for name in names:
        rows = per_repeat[name]
        entry = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        entry["vs_target"] = statistics.median(row["tokens_per_s"] / b for row, b in zip(rows, base_tps))
        if name != BASELINE:
            t1 = out[BASELINE]["decode_ms_per_token"]
            entry["step_in_target_tokens"] = entry["step_ms"] / t1  # a step's cost in target-alone tokens
        out[name] = entry
    return out


def format_profile(result: dict[str, Any]) -> str:
    """A terminal table: ms per step by part, per drafter, with the target-alone ms per token."""
    base = result["methods"][BASELINE]
    lines = [f"target alone: {base['decode_ms_per_token']:.3f} ms/token, {base['tokens_per_s']:.0f} tok/s; "
             "forward ms: " + ", ".join(f"{k} {v:.3f}" for k, v in result["forward_ms"].items()),
             "| drafter | draft | per draft fwd | verify fwd | accept | other | step | τ | step / target token "
             "| tok/s | vs target |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in result["methods"].items():
        if name == BASELINE:
            continue
        lines.append(f"| {name} | {e['draft_ms']:.3f} | {e['draft_forward_ms']:.3f} | {e['verify_forward_ms']:.3f} | "
                     f"{e['accept_ms']:.3f} | {e['other_ms']:.3f} | {e['step_ms']:.3f} | {e['tau']:.2f} | "
                     f"{e['step_in_target_tokens']:.2f} | {e['tokens_per_s']:.0f} | {e['vs_target']:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_drafter_arguments(p)
    p.add_argument("--task", default="gsm8k", help="task whose test prompts are decoded")
    p.add_argument("--n-prompts", type=int, default=10, help="prompts per repeat")
    p.add_argument("--max-new-tokens", type=int, default=96, help="tokens generated per prompt at most")
    p.add_argument("--gamma", type=int, default=3, help="draft tokens per step")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--confidences", type=float, nargs="+", default=[0.0],
                   help="draft-model stop thresholds to run each draft model at (0 = always gamma)")
    p.add_argument("--repeats", type=int, default=5, help="repeats; the medians are over these")
    p.add_argument("--context", type=int, default=256, help="positions prompt + continuation may use")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    try:
        torch.set_num_threads(args.threads)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        target = load_model(args.target, device=device)
        tokenizer = load_tokenizer(args.target)
        drafters = load_named_drafters(args.draft, args.head, target, tokenizer, device)
        if not drafters:
            raise AdaspecError("give at least one --draft or --head")
        prompts = _prompts(args.task, tokenizer, args.n_prompts, args.context - args.max_new_tokens, device)
        forward = {f"target_{n}": ms for n, ms in decode_forward_ms(target, prompts[0], (1, args.gamma + 1)).items()}
        for name, d in drafters.items():
            if isinstance(d, PreTrainedModel):
                forward[f"{name}_1"] = decode_forward_ms(d, prompts[0], (1,))[1]
        methods = profile(target, drafters, prompts, args.gamma, args.max_new_tokens, args.repeats,
                          tokenizer.eos_token_id, args.temperature, tuple(args.confidences))
    except AdaspecError as exc:
        print(f"benchmarks/step_profile.py: error: {exc}", file=sys.stderr)
        return 2
    result = {"command": shlex.join(["python", "benchmarks/step_profile.py", *(argv or sys.argv[1:])]),
              "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "gamma": args.gamma, "temperature": args.temperature, "threads": torch.get_num_threads(),
              "confidences": args.confidences,
              "forward_ms": forward, "methods": methods}
    print(format_profile(result))
    if args.out:
        atomic_write_json(Path(args.out), result)
        print(f"wrote {args.out}")
    return 0
