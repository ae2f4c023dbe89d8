"""The terminal table of an evaluation: target summary lines, then one column per draft."""

from __future__ import annotations

import math
from typing import Any


def _fmt(x: Any, spec: str = ".3f", unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec) + unit


def format_table(result: dict[str, Any]) -> str:
    """The terminal report: target summary lines, then one column per draft."""
    cfg, tgt, drafts = result["config"], result["target"], result["drafts"]
    names = list(drafts)
    gamma = cfg["gamma"]
    source = f"data {cfg['data']}" if cfg.get("data") else f"task {cfg['task']}"
    lines = [
        f"{source} ({cfg['split']}), {cfg['n_prompts']} prompts, max {cfg['max_new_tokens']} new tokens, "
        f"gamma {gamma}{' (adaptive max)' if cfg['adaptive_gamma'] else ''}, "
        f"temperature {cfg['temperature']}" + (f", top-p {cfg['top_p']}" if cfg["top_p"] < 1 else ""),
        f"target: {tgt['params']:,} params; {tgt['quality_metric']} {_fmt(tgt['quality'])}; "
        f"response CE/token {_fmt(tgt['response_loss'])}; alone {_fmt(tgt['tokens_per_s'], '.1f')} tokens/s",
    ]
    missing = [layer for layer, held in (cfg.get("sandbox") or {}).items() if not held]
    if missing:
        lines.append(f"(MBPP code ran without: {', '.join(missing)}; see README, MBPP's code sandbox)")
    if cfg["prompts_truncated"]:
        lines.append(f"({cfg['prompts_truncated']} prompts cut from the left to {cfg['max_prompt_length']} tokens)")
    rows: list[tuple[str, list[str]]] = [
        ("params", [f"{d['params']:,}" for d in drafts.values()]),
        (
            "response CE/token (target " + _fmt(tgt["response_loss"]) + ")",
            [_fmt(d["response_loss"]) for d in drafts.values()],
        ),
        ("alpha = accepted/(accepted+rejected)", [_fmt(d["alpha"]) for d in drafts.values()]),
        ("alpha drafted = accepted/drafted", [_fmt(d["alpha_drafted"]) for d in drafts.values()]),
        ("tau (tokens/target forward)", [_fmt(d["tau"]) for d in drafts.values()]),
    ]
    for i in range(max((len(d["position_acceptance"]) for d in drafts.values()), default=0)):
        rows.append(
            (
                f"  acceptance at draft position {i + 1}",
                [
                    _fmt(d["position_acceptance"][i]) if i < len(d["position_acceptance"]) else ""
                    for d in drafts.values()
                ],
            )
        )
    rows += [
        ("c (draft/target forward time)", [_fmt(d["c"]) for d in drafts.values()]),
        ("speed-up measured (median)", [_fmt(d["measured_speedup"], ".2f", "x") for d in drafts.values()]),
        ("speed-up measured (pooled)", [_fmt(d["measured_speedup_pooled"], ".2f", "x") for d in drafts.values()]),
        (
            f"speed-up theory S(alpha, {gamma}, c)",
            [_fmt(d["theoretical_speedup"], ".2f", "x") for d in drafts.values()],
        ),
        ("analytic alpha, greedy (top-1)", [_fmt(d["analytic"]["alpha_greedy"]) for d in drafts.values()]),
        (
            f"analytic alpha, sampling T={next(iter(drafts.values()))['analytic']['sampling_temperature']:g}",
            [_fmt(d["analytic"]["alpha_sampling"]) for d in drafts.values()],
        ),
    ]
    if cfg["temperature"] == 0:
        rows.append(
            (
                "outputs identical to target alone",
                [f"{d['same_as_target']}/{cfg['n_prompts']}" for d in drafts.values()],
            )
        )
    label_w = max(len(r[0]) for r in rows)
    col_w = [max(len(n), *(len(r[1][j]) for r in rows)) for j, n in enumerate(names)]
    lines.append(" " * label_w + "  " + "  ".join(n.rjust(w) for n, w in zip(names, col_w)))
    for label, cells in rows:
        lines.append(label.ljust(label_w) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, col_w)))
    return "\n".join(lines)


def format_vllm_table(vllm: dict[str, Any]) -> str:
    """vLLM's rows (adaspec.serving.vllm_engine.measure) beside adaspec's α and τ on vLLM's schedule."""
    head = [
        "drafter",
        "vLLM method",
        "batch",
        "tokens/s",
        "vs target",
        "alpha",
        "alpha drafted",
        "mean acc. length",
        "identical",
        "adaspec alpha",
        "adaspec tau",
    ]
    body = []
    for r in vllm["rows"]:
        ours = r.get("adaspec") or {}
        if not r["loaded"]:
            body.append([r["drafter"], str(r["method"] or "-"), str(r["batch"]), "not loaded: " + r["reason"]])
            continue
        body.append(
            [
                r["drafter"],
                r["method"],
                str(r["batch"]),
                _fmt(r["tokens_per_s"], ".1f"),
                _fmt(r["vs_target"], ".2f", "x"),
                _fmt(r["alpha"]),
                _fmt(r["alpha_drafted"]),
                _fmt(r["mean_acceptance_length"], ".2f"),
                "n/a" if r["identical_to_target"] is None else str(r["identical_to_target"]),
                _fmt(ours.get("alpha")),
                _fmt(ours.get("tau"), ".2f"),
            ]
        )
    widths = [
        max(len(head[j]), *(len(b[j]) for b in body if j < len(b) and len(b) == len(head))) for j in range(len(head))
    ]
    lines = [
        f"vLLM {vllm['vllm_version']} (its own counters; tokens/s over all prompts at each batch size; "
        "adaspec's alpha and tau on vLLM's schedule)",
        "  ".join(h.rjust(w) for h, w in zip(head, widths)),
    ]
    for b in body:
        lines.append(
            "  ".join(c.rjust(w) for c, w in zip(b, widths)) if len(b) == len(head) else "  ".join(b[:3]) + "  " + b[3]
        )
    return "\n".join(lines)
