"""Greedy decoding speed on the same prompts, measured side by side in one run.

Methods: `target_only` (adaspec's KV-cached loop, the baseline), `hf_target` (transformers' generate),
`sd` (adaspec speculative decoding, fixed γ), `sd_adaptive` (γ chosen per step), `hf_assisted`
(transformers' assisted generation with `num_assistant_tokens` = γ, constant schedule and no confidence
threshold, so it drafts exactly like `sd`). Reports tokens/s (median over repeats; each repeat runs every
method on every prompt, in a rotating order), the ratio to target-only, α, τ, c and S, and checks every
output against target-only greedy decoding.

    python -m adaspec.evaluation.speed --target DIR --draft DIR [--prompts-task gsm8k | --prompts-file F]
        [--n-prompts 20] [--max-new-tokens 128] [--gamma 3] [--repeats 3] [--out results/benchmarks/decode.json]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import statistics
import sys
from dataclasses import dataclass
from typing import Callable

import torch
import transformers
from transformers import DynamicCache

from adaspec import data
from adaspec.decoding.generate import speculative_generate, target_only_generate
from adaspec.models.target import Clock, cache_kwarg
from adaspec.io import atomic_write_json
from adaspec.core.metrics import SpecStats
from adaspec.models import check_vocab_compatible, count_params, load_model, load_tokenizer, saved_tokenizer


def load_prompts(args, tokenizer, context: int) -> list[torch.Tensor]:
    """Token ids of the prompts: the task's test split through adaspec.data, or one prompt per line."""
    room = context - args.max_new_tokens
    if args.prompts_file:
        lines = [line.rstrip("\n") for line in open(args.prompts_file, encoding="utf-8") if line.strip()]
        texts = [line.replace("\\n", "\n") for line in lines][: args.n_prompts]
        ids = [data.encode_prompt(data.Example(t, ""), tokenizer, room) for t in texts]
    else:
        examples = data.load_task(args.prompts_task, "test", limit=args.n_prompts)
        ids = [data.encode_prompt(ex, tokenizer, room) for ex in examples]
    if not ids:
        sys.exit("no prompts")
    return [torch.tensor([i]) for i in ids]


def methods(target, draft, args, eos):
    """name -> function(ids) returning (output ids [1, n], SpecStats or None)."""
    gamma = args.gamma
    # assisted generation drafting exactly γ tokens per step, like `sd`
    draft.generation_config.num_assistant_tokens = gamma
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    draft.generation_config.assistant_confidence_threshold = 0.0

    def hf(ids, **kw):
        out = target.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                              max_new_tokens=args.max_new_tokens, eos_token_id=eos, pad_token_id=eos or 0, **kw)
        return out, None

    return {
        "target_only": lambda ids: target_only_generate(target, ids, args.max_new_tokens, eos_token_id=eos),
        "hf_target": lambda ids: hf(ids),
        "sd": lambda ids: speculative_generate(target, draft, ids, args.max_new_tokens, gamma=gamma,
                                               eos_token_id=eos),
        "sd_adaptive": lambda ids: speculative_generate(target, draft, ids, args.max_new_tokens, gamma=gamma,
                                                        eos_token_id=eos, adaptive_gamma=True,
                                                        gamma_max=args.gamma_max),
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
    return {"target_1_ms": forward_ms(target, ids, 1, reps),
            f"target_{gamma + 1}_ms": forward_ms(target, ids, gamma + 1, reps),
            "draft_1_ms": forward_ms(draft, ids, 1, reps)}


@dataclass
class Rounds:
    """Per method: seconds and tokens of each repeat (over all prompts), merged stats, first outputs."""

    times: dict[str, list[float]]
    tokens: dict[str, list[int]]
    stats: dict[str, SpecStats]
    outputs: dict[str, list[list[int]]]


Run = Callable[[torch.Tensor], tuple[torch.Tensor, "SpecStats | None"]]


def timed_rounds(runs: dict[str, Run], names: list[str], prompts: list[torch.Tensor], repeats: int,
                 device: torch.device, log: Callable[[str], None] | None = None) -> Rounds:
    """Every method on every prompt, `repeats` times, the methods in a rotating order each repeat so drift
    and cache effects hit all alike; one untimed warm-up call each first (allocator, lazy init)."""
    for name in names:
        runs[name](prompts[0][:, :8])
    clock = Clock(device)
    rounds = Rounds({n: [] for n in names}, {n: [] for n in names}, {n: SpecStats() for n in names},
                    {n: [] for n in names})
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        total_t, total_n = {n: 0.0 for n in names}, {n: 0 for n in names}
        for ids in prompts:
            for name in order:
                t0 = clock()
                out, st = runs[name](ids)
                total_t[name] += clock() - t0
                generated = out[0, ids.shape[1]:].tolist()
                total_n[name] += len(generated)
                if st is not None:
                    rounds.stats[name] = rounds.stats[name] + st
                if r == 0:
                    rounds.outputs[name].append(generated)
        for name in names:
            rounds.times[name].append(total_t[name])
            rounds.tokens[name].append(total_n[name])
        (log or (lambda m: print(m, flush=True)))(f"repeat {r + 1}/{repeats}: " + ", ".join(
            f"{n} {total_n[n] / total_t[n]:.1f} tok/s" for n in names))
    return rounds


def profile_sd(target, draft, prompts, args, eos) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for ids in prompts[:3]:
        speculative_generate(target, draft, ids, args.max_new_tokens, gamma=args.gamma, eos_token_id=eos)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    """The benchmark's command line (see the module docstring); exit 1 if an output differed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True, help="target model directory")
    p.add_argument("--draft", required=True, help="draft model directory")
    p.add_argument("--prompts-task", default="gsm8k", help="task whose test prompts are used (adaspec.data)")
    p.add_argument("--prompts-file", default=None, help="one prompt per line (\\n escapes newlines)")
    p.add_argument("--n-prompts", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--context", type=int, default=None,
                   help="positions prompt + continuation may use (default: the models' context); "
                        "give the training length to keep drafts on positions they trained on")
    p.add_argument("--gamma", type=int, default=3)
    p.add_argument("--gamma-max", type=int, default=8, help="upper bound of the adaptive γ")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    p.add_argument("--methods", nargs="+", default=None, help="subset of methods to run")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--profile", action="store_true", help="also print a cProfile of sd on 3 prompts")
    p.add_argument("--out", default="results/benchmarks/decode.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    target = load_model(args.target, device=device)
    draft = load_model(args.draft, device=device)
    tokenizer = load_tokenizer(args.target)
    check_vocab_compatible(target, draft, tokenizer, saved_tokenizer(args.draft))
    eos = None if args.ignore_eos else tokenizer.eos_token_id
    if eos is None:  # keep transformers from falling back to the config's EOS
        target.generation_config.eos_token_id = draft.generation_config.eos_token_id = None
    context = min(target.config.max_position_embeddings, draft.config.max_position_embeddings,
                  args.context or sys.maxsize)
    if context <= args.max_new_tokens:
        sys.exit(f"--max-new-tokens ({args.max_new_tokens}) leaves no room for a prompt in {context} positions")
    prompts = [ids.to(device) for ids in load_prompts(args, tokenizer, context)]
    runs = methods(target, draft, args, eos)
    names = args.methods or list(runs)
    if "target_only" not in names:
        names.insert(0, "target_only")

    rounds = timed_rounds(runs, names, prompts, args.repeats, device)
    times, tokens, stats, outputs = rounds.times, rounds.tokens, rounds.stats, rounds.outputs
    reference = outputs["target_only"]
    results = {}
    for name in names:
        tps = [n / t for n, t in zip(tokens[name], times[name])]
        ratios = [tp / base for tp, base in zip(tps, (n / t for n, t in zip(tokens["target_only"],
                                                                          times["target_only"])))]
        mismatches = [i for i, (a, b) in enumerate(zip(outputs[name], reference)) if a != b]
        entry = {"tokens_per_s": statistics.median(tps), "tokens_per_s_repeats": tps,
                 "speedup_vs_target_only": statistics.median(ratios), "tokens": tokens[name][0],
                 "mismatched_prompts": mismatches}
        s = stats[name]
        if name.startswith("sd"):
            entry.update({k: s.to_dict()[k] for k in (
                "alpha", "alpha_drafted", "tau", "mean_gamma", "c", "theoretical_speedup", "speedup_from_tau",
                "accept_hist", "gamma_hist", "position_acceptance")})
            split = {"draft": s.draft_time_s, "target": s.target_time_s,
                     "other": s.decode_time_s - s.draft_time_s - s.target_time_s}
            entry["time_split"] = {k: round(v / s.decode_time_s, 3) for k, v in split.items()}
            entry["measured_over_S"] = entry["speedup_vs_target_only"] / s.theoretical_speedup
        results[name] = entry
    if "sd" in results and "hf_assisted" in results:
        results["sd"]["speedup_vs_hf_assisted"] = results["sd"]["tokens_per_s"] / results["hf_assisted"]["tokens_per_s"]
    costs = forward_costs(target, draft, prompts[0], args.gamma)
    if "sd" in results:
        # the speed-up the measured forward costs allow: unlike S, verification costs what it measures
        s = stats["sd"]
        step_ms = s.mean_gamma * costs["draft_1_ms"] + costs[f"target_{args.gamma + 1}_ms"]
        results["sd"]["predicted_from_forward_ms"] = s.tau * costs["target_1_ms"] / step_ms
    report = {
        "config": {"target": args.target, "draft": args.draft, "target_params": count_params(target),
                   "draft_params": count_params(draft), "device": str(device), "threads": torch.get_num_threads(),
                   "n_prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "context": context,
                   "gamma": args.gamma,
                   "gamma_max": args.gamma_max, "repeats": args.repeats, "stop_at_eos": eos is not None,
                   "prompts": args.prompts_file or f"{args.prompts_task}:test",
                   "torch": torch.__version__, "transformers": transformers.__version__,
                   "machine": platform.processor() or platform.machine()},
        "forward_ms": costs,
        "methods": results,
    }
    print(f"\n{'method':<13}{'tok/s':>8}{'vs target':>11}{'alpha':>7}{'tau':>6}{'c':>7}{'S':>6}{'mismatch':>10}")
    for name, e in results.items():
        f = lambda k, spec=".2f": format(e[k], spec) if e.get(k) is not None else "-"  # noqa: E731
        print(f"{name:<13}{e['tokens_per_s']:>8.1f}{e['speedup_vs_target_only']:>10.2f}x{f('alpha'):>7}"
              f"{f('tau'):>6}{f('c', '.3f'):>7}{f('theoretical_speedup'):>6}{len(e['mismatched_prompts']):>10}")
    print("forward ms: " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
    if "sd" in results:
        sd = results["sd"]
        print(f"sd: measured/S = {sd['measured_over_S']:.2f}; predicted from forward costs "
              f"{sd['predicted_from_forward_ms']:.2f}x; time split {sd['time_split']}")
        if "speedup_vs_hf_assisted" in sd:
            print(f"sd vs hf_assisted: {sd['speedup_vs_hf_assisted']:.2f}x")
    if args.profile:
        report["profile"] = profile_sd(target, draft, prompts, args, eos)
        print(report["profile"])
    atomic_write_json(args.out, report, indent=2)
    print(f"wrote {args.out}")
    return 1 if any(e["mismatched_prompts"] for e in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
