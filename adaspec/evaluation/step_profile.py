"""Where a speculative step's time goes, beside the target-alone step it has to beat.

The target alone and speculative decoding with each drafter decode the same prompts, interleaved per prompt in
a rotating order, on the decode path both use. Each speculative step's time is split by the loop's own clocks
(`SpecStats`, so the real loop is measured, not a copy of it): `draft` (the drafter's proposals), `verify_forward`
(the target's forward over the last token and the proposals), `accept` (the acceptance rule and the step's
host sync) and `other` (the rest of the loop: bookkeeping, cache crops, the drafter's accept). Medians over
repeats of the per-step means; isolated forward timings on the same path sit beside them
(`benchmarks/step_profile.py` is the command line).
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from transformers import PreTrainedModel

from adaspec.core.metrics import SpecStats
from adaspec.decoding.drafter import Drafter
from adaspec.decoding.generate import speculative_generate, target_only_generate
from adaspec.evaluation.drafters import decode_forward_ms
from adaspec.models.target import Clock

PARTS = ("draft", "verify_forward", "accept", "other")
BASELINE = "target"


def step_parts(stats: SpecStats) -> dict[str, float]:
    """Milliseconds per step of each part of a speculative loop, from its counters."""
    steps = max(stats.steps, 1)
    known = stats.draft_time_s + stats.target_time_s + stats.verify_time_s
    seconds = {
        "draft": stats.draft_time_s,
        "verify_forward": stats.target_time_s,
        "accept": stats.verify_time_s,
        "other": stats.decode_time_s - known,
    }
    return {k: 1e3 * v / steps for k, v in seconds.items()}


def forward_timings(
    target: PreTrainedModel, drafters: dict[str, PreTrainedModel | Drafter], ids: torch.Tensor, gamma: int
) -> dict[str, float]:
    """Isolated milliseconds of one cached forward after the prompt `ids` [1, T], on the decode path the runs
    use: the target's over 1 and γ+1 tokens (target_1, target_<γ+1>), each draft model's over 1 (NAME_1)."""
    forward = {f"target_{n}": ms for n, ms in decode_forward_ms(target, ids, (1, gamma + 1)).items()}
    for name, d in drafters.items():
        if isinstance(d, PreTrainedModel):
            forward[f"{name}_1"] = decode_forward_ms(d, ids, (1,))[1]
    return forward


def profile(
    target: PreTrainedModel,
    drafters: dict[str, PreTrainedModel | Drafter],
    prompts: list[torch.Tensor],
    gamma: int,
    max_new_tokens: int,
    repeats: int,
    eos: int | None,
    temperature: float = 0.0,
    confidences: tuple[float, ...] = (0.0,),
) -> dict[str, Any]:
    """The split per drafter and the target-alone time per token (see the module docstring). Draft models run
    once per stop threshold in `confidences` (named NAME@c for c > 0)."""
    device = next(target.parameters()).device
    runs = {
        BASELINE: lambda ids: target_only_generate(
            target, ids, max_new_tokens, eos_token_id=eos, temperature=temperature, seed=0
        )
    }

    def sd(d: PreTrainedModel | Drafter, confidence: float | None) -> Any:
        return lambda ids: speculative_generate(
            target,
            d,
            ids,
            max_new_tokens,
            gamma=gamma,
            temperature=temperature,
            eos_token_id=eos,
            seed=0,
            draft_confidence=confidence,
        )

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
        order = names[r % len(names) :] + names[: r % len(names)]
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
                row.update(
                    {f"{k}_ms": v for k, v in step_parts(s).items()},
                    step_ms=1e3 * s.decode_time_s / max(s.steps, 1),
                    tau=s.tau,
                    mean_gamma=s.mean_gamma,
                    draft_forward_ms=1e3 * s.draft_time_s / max(s.draft_forwards, 1),
                )
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
    lines = [
        f"target alone: {base['decode_ms_per_token']:.3f} ms/token, {base['tokens_per_s']:.0f} tok/s; "
        "forward ms: " + ", ".join(f"{k} {v:.3f}" for k, v in result["forward_ms"].items()),
        "| drafter | draft | per draft fwd | verify fwd | accept | other | step | τ | step / target token "
        "| tok/s | vs target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in result["methods"].items():
        if name == BASELINE:
            continue
        lines.append(
            f"| {name} | {e['draft_ms']:.3f} | {e['draft_forward_ms']:.3f} | {e['verify_forward_ms']:.3f} | "
            f"{e['accept_ms']:.3f} | {e['other_ms']:.3f} | {e['step_ms']:.3f} | {e['tau']:.2f} | "
            f"{e['step_in_target_tokens']:.2f} | {e['tokens_per_s']:.0f} | {e['vs_target']:.2f}× |"
        )
    return "\n".join(lines)
