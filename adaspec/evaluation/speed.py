"""Greedy decoding speed on the same prompts, measured side by side in one run.

Methods: `target_only` (adaspec's KV-cached loop, the baseline), `hf_target` (transformers' generate),
`sd` (adaspec speculative decoding, fixed γ), `sd_adaptive` (γ chosen per step), `hf_assisted`
(transformers' assisted generation with `num_assistant_tokens` = γ, constant schedule and no confidence
threshold, so it drafts exactly like `sd`). `decode_benchmark` reports tokens/s (median over repeats; each
repeat runs every method on every prompt, in a rotating order), the ratio to target-only, α, τ, c and S, and
checks every output against target-only greedy decoding. `benchmarks/decode.py` is its command line;
`adaspec reproduce` runs it on the first seed's drafts.
"""

from __future__ import annotations

import cProfile
import io
import platform
import pstats
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers
from transformers import DynamicCache

from adaspec import data
from adaspec.core.metrics import SpecStats
from adaspec.decoding.generate import speculative_generate, target_only_generate
from adaspec.errors import AdaspecError
from adaspec.models import check_vocab_compatible, count_params, load_model, load_tokenizer, saved_tokenizer
from adaspec.models.target import Clock, cache_kwarg


def load_prompts(tokenizer, room: int, task: str, prompts_file: str | None, n_prompts: int) -> list[torch.Tensor]:
    """Token ids [1, T] of the prompts, cut to `room`: the task's test split through adaspec.data, or one
    prompt per line of `prompts_file` ("\\n" escapes a newline)."""
    if prompts_file:
        lines = [line.rstrip("\n") for line in open(prompts_file, encoding="utf-8") if line.strip()]
        texts = [line.replace("\\n", "\n") for line in lines][:n_prompts]
        ids = [data.encode_prompt(data.Example(t, ""), tokenizer, room) for t in texts]
    else:
        examples = data.load_task(task, "test", limit=n_prompts)
        ids = [data.encode_prompt(ex, tokenizer, room) for ex in examples]
    if not ids:
        raise AdaspecError("no prompts")
    return [torch.tensor([i]) for i in ids]


def method_runs(target, draft, gamma: int, gamma_max: int, max_new_tokens: int, eos: int | None) -> dict[str, Run]:
    """name -> function(ids) returning (output ids [1, n], SpecStats or None)."""
    # assisted generation drafting exactly γ tokens per step, like `sd`
    draft.generation_config.num_assistant_tokens = gamma
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0

    def hf(ids, **kw):
        out = target.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=eos or 0,
            **kw,
        )
        return out, None

    return {
        "target_only": lambda ids: target_only_generate(target, ids, max_new_tokens, eos_token_id=eos),
        "hf_target": lambda ids: hf(ids),
        "sd": lambda ids: speculative_generate(target, draft, ids, max_new_tokens, gamma=gamma, eos_token_id=eos),
        "sd_adaptive": lambda ids: speculative_generate(
            target, draft, ids, max_new_tokens, gamma=gamma, eos_token_id=eos, adaptive_gamma=True, gamma_max=gamma_max
        ),
        "hf_assisted": lambda ids: hf(ids, assistant_model=draft),
    }


@torch.inference_mode()
def forward_ms(model: torch.nn.Module, ids: torch.Tensor, n: int, reps: int = 30) -> float:
    """Median milliseconds of one cached forward of `n` tokens after the prompt `ids` [1, T]."""
    clock = Clock(ids.device)
    cache = DynamicCache(config=model.config)
    arg = cache_kwarg(model)
    model(input_ids=ids, use_cache=True, logits_to_keep=1, **{arg: cache})
    step = ids[:, -n:] if ids.shape[1] >= n else ids[:, :1].repeat(1, n)
    times = []
    for _ in range(reps):
        t0 = clock()
        model(input_ids=step, use_cache=True, logits_to_keep=n, **{arg: cache})
        times.append(clock() - t0)
        cache.crop(-n)
    return 1e3 * statistics.median(times)


def forward_costs(target, draft, ids: torch.Tensor, gamma: int, reps: int = 30) -> dict[str, float]:
    """Milliseconds of one cached forward: target on 1 and on γ+1 tokens, draft on 1 token."""
    return {
        "target_1_ms": forward_ms(target, ids, 1, reps),
        f"target_{gamma + 1}_ms": forward_ms(target, ids, gamma + 1, reps),
        "draft_1_ms": forward_ms(draft, ids, 1, reps),
    }


@dataclass
class Rounds:
    """Per method: seconds and tokens of each repeat (over all prompts), merged stats, first outputs."""

    times: dict[str, list[float]]
    tokens: dict[str, list[int]]
    stats: dict[str, SpecStats]
    outputs: dict[str, list[list[int]]]


Run = Callable[[torch.Tensor], tuple[torch.Tensor, "SpecStats | None"]]


def timed_rounds(
    runs: dict[str, Run],
    names: list[str],
    prompts: list[torch.Tensor],
    repeats: int,
    device: torch.device,
    log: Callable[[str], None] | None = None,
) -> Rounds:
    """Every method on every prompt, `repeats` times, the methods in a rotating order each repeat so drift
    and cache effects hit all alike; one untimed warm-up call each first (allocator, lazy init)."""
    for name in names:
        runs[name](prompts[0][:, :8])
    clock = Clock(device)
    rounds = Rounds(
        {n: [] for n in names}, {n: [] for n in names}, {n: SpecStats() for n in names}, {n: [] for n in names}
    )
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        total_t, total_n = {n: 0.0 for n in names}, {n: 0 for n in names}
        for ids in prompts:
            for name in order:
                t0 = clock()
                out, st = runs[name](ids)
                total_t[name] += clock() - t0
                generated = out[0, ids.shape[1] :].tolist()
                total_n[name] += len(generated)
                if st is not None:
                    rounds.stats[name] = rounds.stats[name] + st
                if r == 0:
                    rounds.outputs[name].append(generated)
        for name in names:
            rounds.times[name].append(total_t[name])
            rounds.tokens[name].append(total_n[name])
        (log or (lambda m: print(m, flush=True)))(
            f"repeat {r + 1}/{repeats}: " + ", ".join(f"{n} {total_n[n] / total_t[n]:.1f} tok/s" for n in names)
        )
    return rounds


def profile_sd(target, draft, prompts: list[torch.Tensor], gamma: int, max_new_tokens: int, eos: int | None) -> str:
    """cProfile of `sd` on the first 3 prompts: the 20 functions with the most own time."""
    prof = cProfile.Profile()
    prof.enable()
    for ids in prompts[:3]:
        speculative_generate(target, draft, ids, max_new_tokens, gamma=gamma, eos_token_id=eos)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
    return buf.getvalue()


def method_results(rounds: Rounds, names: list[str]) -> dict[str, dict]:
    """Per method of timed rounds: tokens/s (median and per repeat), its ratio to target_only, the prompts whose
    output differs from target_only's; for the speculative ones α, τ, c, S and where the decode time went."""
    times, tokens, stats, outputs = rounds.times, rounds.tokens, rounds.stats, rounds.outputs
    reference = outputs["target_only"]
    results = {}
    for name in names:
        tps = [n / t for n, t in zip(tokens[name], times[name])]
        ratios = [
            tp / base for tp, base in zip(tps, (n / t for n, t in zip(tokens["target_only"], times["target_only"])))
        ]
        mismatches = [i for i, (a, b) in enumerate(zip(outputs[name], reference)) if a != b]
        entry = {
            "tokens_per_s": statistics.median(tps),
            "tokens_per_s_repeats": tps,
            "speedup_vs_target_only": statistics.median(ratios),
            "tokens": tokens[name][0],
            "mismatched_prompts": mismatches,
        }
        s = stats[name]
        if name.startswith("sd"):
            entry.update(
                {
                    k: s.to_dict()[k]
                    for k in (
                        "alpha",
                        "alpha_drafted",
                        "tau",
                        "mean_gamma",
                        "c",
                        "theoretical_speedup",
                        "speedup_from_tau",
                        "accept_hist",
                        "gamma_hist",
                        "position_acceptance",
                    )
                }
            )
            split = {
                "draft": s.draft_time_s,
                "target": s.target_time_s,
                "other": s.decode_time_s - s.draft_time_s - s.target_time_s,
            }
            entry["time_split"] = {k: round(v / s.decode_time_s, 3) for k, v in split.items()}
            entry["measured_over_S"] = entry["speedup_vs_target_only"] / s.theoretical_speedup
        results[name] = entry
    return results


def decode_benchmark(
    target_dir: str,
    draft_dir: str,
    prompts_task: str = "gsm8k",
    prompts_file: str | None = None,
    n_prompts: int = 20,
    max_new_tokens: int = 128,
    context: int | None = None,
    gamma: int = 3,
    gamma_max: int = 8,
    repeats: int = 3,
    ignore_eos: bool = False,
    methods: list[str] | None = None,
    device: str | None = None,
    profile: bool = False,
) -> dict:
    """Every method (`methods`, default all; target_only always) on the same prompts; the JSON-ready report:
    per method tokens/s, its ratio to target_only and the prompts whose output differs from target_only's,
    for the speculative ones α, τ, c, S and where the decode time went; the measured forward costs and the
    speed-up they predict for `sd`; with `profile` a cProfile of `sd`. `context` caps prompt + continuation
    (default: the models' context); `ignore_eos` always generates `max_new_tokens` tokens."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    target = load_model(target_dir, device=dev)
    draft = load_model(draft_dir, device=dev)
    tokenizer = load_tokenizer(target_dir)
    check_vocab_compatible(target, draft, tokenizer, saved_tokenizer(draft_dir))
    eos = None if ignore_eos else tokenizer.eos_token_id
    if eos is None:  # keep transformers from falling back to the config's EOS
        target.generation_config.eos_token_id = draft.generation_config.eos_token_id = None
    limit = min(target.config.max_position_embeddings, draft.config.max_position_embeddings)
    context = min(limit, context or limit)
    if context <= max_new_tokens:
        raise AdaspecError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in {context} positions")
    prompts = [
        ids.to(dev) for ids in load_prompts(tokenizer, context - max_new_tokens, prompts_task, prompts_file, n_prompts)
    ]
    runs = method_runs(target, draft, gamma, gamma_max, max_new_tokens, eos)
    names = list(methods or runs)
    if "target_only" not in names:
        names.insert(0, "target_only")
    rounds = timed_rounds(runs, names, prompts, repeats, dev)
    results = method_results(rounds, names)
    if "sd" in results and "hf_assisted" in results:
        results["sd"]["speedup_vs_hf_assisted"] = results["sd"]["tokens_per_s"] / results["hf_assisted"]["tokens_per_s"]
    costs = forward_costs(target, draft, prompts[0], gamma)
    if "sd" in results:
        # the speed-up the measured forward costs allow: unlike S, verification costs what it measures
        s = rounds.stats["sd"]
        step_ms = s.mean_gamma * costs["draft_1_ms"] + costs[f"target_{gamma + 1}_ms"]
        results["sd"]["predicted_from_forward_ms"] = s.tau * costs["target_1_ms"] / step_ms
    report = {
        "config": {
            "target": target_dir,
            "draft": draft_dir,
            "target_params": count_params(target),
            "draft_params": count_params(draft),
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "n_prompts": len(prompts),
            "max_new_tokens": max_new_tokens,
            "context": context,
            "gamma": gamma,
            "gamma_max": gamma_max,
            "repeats": repeats,
            "stop_at_eos": eos is not None,
            "prompts": prompts_file or f"{prompts_task}:test",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "machine": platform.processor() or platform.machine(),
        },
        "forward_ms": costs,
        "methods": results,
    }
    if profile:
        report["profile"] = profile_sd(target, draft, prompts, gamma, max_new_tokens, eos)
    return report


def format_report(report: dict) -> str:
    """The terminal table of a `decode_benchmark` report, with its forward costs and `sd`'s summary."""
    results, costs = report["methods"], report["forward_ms"]
    lines = [f"\n{'method':<13}{'tok/s':>8}{'vs target':>11}{'alpha':>7}{'tau':>6}{'c':>7}{'S':>6}{'mismatch':>10}"]
    for name, e in results.items():
        f = lambda k, spec=".2f": format(e[k], spec) if e.get(k) is not None else "-"  # noqa: E731
        lines.append(
            f"{name:<13}{e['tokens_per_s']:>8.1f}{e['speedup_vs_target_only']:>10.2f}x{f('alpha'):>7}"
            f"{f('tau'):>6}{f('c', '.3f'):>7}{f('theoretical_speedup'):>6}{len(e['mismatched_prompts']):>10}"
        )
    lines.append("forward ms: " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
    if "sd" in results:
        sd = results["sd"]
        lines.append(
            f"sd: measured/S = {sd['measured_over_S']:.2f}; predicted from forward costs "
            f"{sd['predicted_from_forward_ms']:.2f}x; time split {sd['time_split']}"
        )
        if "speedup_vs_hf_assisted" in sd:
            lines.append(f"sd vs hf_assisted: {sd['speedup_vs_hf_assisted']:.2f}x")
    return "\n".join(lines)


def differing(report: dict) -> list[str]:
    """The methods whose output differed from target_only greedy decoding on some prompt."""
    return [name for name, e in report["methods"].items() if e["mismatched_prompts"]]
