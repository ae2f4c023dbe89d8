"""The drafters benchmark in vLLM: `benchmarks/drafters.py --engine vllm` writes
results/benchmarks/vllm_<pair>.json, vLLM's target alone against vLLM with each adaspec drafter (batch 1 and
8, each temperature), with adaspec's own engine on the same pair and prompts beside every row."""

from __future__ import annotations

import os
from typing import Any

from transformers import PreTrainedModel

from adaspec.decoding.drafter import Drafter
from adaspec.serving.vllm_engine import VllmRun, measure


def vllm_benchmark(
    python: str,
    target_path: str,
    target: PreTrainedModel,
    prompts: list[list[int]],
    served: dict[str, tuple[str, str, PreTrainedModel | Drafter]],
    adaspec_rows: list[dict[str, Any]],
    *,
    gamma: int,
    max_new_tokens: int,
    temperatures: list[float],
    batch_sizes: list[int],
    context: int,
    eos_token_id: int | None,
    repeats: int = 3,
) -> dict[str, Any]:
    """`measure` on the benchmark's first prompt set; each row also carries `adaspec_engine`: the benchmark's
    row for the same drafter and temperature in adaspec's engine (tokens/s and ratio to its own target alone,
    batch 1, medians over repeats; α and τ on adaspec's schedule)."""
    load_before = os.getloadavg()[0]
    run = VllmRun(
        target=target_path,
        prompts=prompts,
        max_tokens=max_new_tokens,
        temperatures=tuple(temperatures),
        gamma=gamma,
        max_model_len=context,
        batch_sizes=tuple(batch_sizes),
        eos_token_id=eos_token_id,
        repeats=repeats,
    )
    result = measure(python, run, served, target)
    ours = {(r["method"], r["temperature"]): r for r in adaspec_rows}
    for row in result["rows"]:
        mine = ours.get(("target" if row["drafter"] == "target" else f"sd_{row['drafter']}", row["temperature"]))
        row["adaspec_engine"] = (
            None
            if mine is None
            else {k: mine[k] for k in ("tokens_per_s", "vs_target", "alpha", "alpha_drafted", "tau")}
        )
    return {
        **result,
        "gamma": gamma,
        "max_new_tokens": max_new_tokens,
        "n_prompts": len(prompts),
        "repeats": repeats,
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def format_vllm_rows(result: dict[str, Any]) -> str:
    """The README table: vLLM's rows with adaspec's engine beside them."""

    def f(x: Any, spec: str = ".2f", unit: str = "") -> str:
        return "-" if x is None else format(x, spec) + unit

    lines = [
        "| drafter | vLLM method | T | batch | vLLM tokens/s | vLLM vs its target | vLLM α | vLLM mean acc. "
        "length | identical | adaspec α (vLLM's schedule) | adaspec engine vs its target | adaspec α, τ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if not r["loaded"]:
            lines.append(
                f"| {r['drafter']} | {r['method'] or '-'} | {r['temperature']:g} | {r['batch']} | "
                f"not loaded: {r['reason']} ||||||||"
            )
            continue
        mine, aligned = r.get("adaspec_engine") or {}, r.get("adaspec") or {}
        lines.append(
            f"| {r['drafter']} | {r['method']} | {r['temperature']:g} | {r['batch']} | {f(r['tokens_per_s'], '.1f')} | "
            f"{f(r['vs_target'], '.2f', '×')} | {f(r['alpha'], '.3f')} | {f(r['mean_acceptance_length'])} | "
            f"{f(r['identical_to_target'], 'd')} | {f(aligned.get('alpha'), '.3f')} | "
            f"{f(mine.get('vs_target'), '.2f', '×')} | {f(mine.get('alpha'), '.3f')}, {f(mine.get('tau'))} |"
        )
    return "\n".join(lines)
