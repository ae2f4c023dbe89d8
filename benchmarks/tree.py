"""Token trees against chains, greedy, with a separate draft LM, measured side by side in one run.

Methods: `target_only` (KV-cached loop, the baseline), `chain-γ` (adaspec speculative decoding with a
fixed γ) and `tree-k,d,t` (tree_speculative_generate with the draft-LM proposer: top-k k, depth d, t
tokens). Each repeat runs every method on every prompt in a rotating order; tokens/s is the median over
repeats. Reports τ (tokens per target forward, bonus included), the ratio to target-only, the cost of a
target forward over n tokens relative to one (measured on the first prompt's cache), and checks every
output against target-only greedy decoding.

    python benchmarks/tree.py --target DIR --draft DIR [--n-prompts 10] [--max-new-tokens 128]
        [--chains 2 3 4 5 6] [--trees 2,3,4 3,3,8 4,4,16 10,7,60] [--repeats 3] [--out results/benchmarks/tree.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import DynamicCache

from adaspec import data
from adaspec.decoding.tree import Tree
from adaspec.decoding.tree_generate import LMTreeProposer, tree_speculative_generate
from adaspec.decoding.tree_target import tree_forward
from adaspec.models import load_model, load_tokenizer, output_vocab_size
from adaspec.decoding.generate import speculative_generate, target_only_generate


def verification_costs(target, ids: torch.Tensor, sizes: list[int], reps: int = 20) -> dict[int, float]:
    """Median time of a tree forward of n tokens (root + n-1 children) over the prompt's cache, relative to 1."""
    cache = DynamicCache(config=target.config)
    prefix = ids[0, :-1]
    target(input_ids=prefix[None], cache=cache, use_cache=True)
    times = {}
    for n in sizes:
        tree = Tree(torch.zeros(n - 1, dtype=torch.long), torch.full((n - 1,), -1), torch.ones(n - 1, dtype=torch.long))
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            tree_forward(target, cache, prefix.numel(), ids[0, -1], tree)
            samples.append(time.perf_counter() - t0)
            cache.crop(-n)
        times[n] = statistics.median(samples)
    return {n: times[n] / times[sizes[0]] for n in sizes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", required=True)
    p.add_argument("--draft", required=True)
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--n-prompts", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--chains", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    p.add_argument("--trees", nargs="+", default=["2,3,4", "2,4,8", "3,3,8", "3,4,12", "4,4,16", "10,7,60"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/benchmarks/tree.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    target, draft = load_model(args.target), load_model(args.draft)
    tokenizer = load_tokenizer(args.target)
    vocab = output_vocab_size(target)
    room = target.config.max_position_embeddings - args.max_new_tokens
    prompts = [torch.tensor([data.encode_prompt(ex, tokenizer, room)])
               for ex in data.load_task(args.task, "test", limit=args.n_prompts)]
    eos = tokenizer.eos_token_id
    runs = {"target_only": lambda ids: target_only_generate(target, ids, args.max_new_tokens, eos_token_id=eos)}
    for g in args.chains:
        runs[f"chain-{g}"] = (lambda g: lambda ids: speculative_generate(
            target, draft, ids, args.max_new_tokens, gamma=g, eos_token_id=eos))(g)
    for spec in args.trees:
        k, d, t = (int(x) for x in spec.split(","))
        proposer = LMTreeProposer(draft, vocab, top_k=k, depth=d, total_tokens=t)
        runs[f"tree-{spec}"] = (lambda pr: lambda ids: tree_speculative_generate(
            target, pr, ids, args.max_new_tokens, eos_token_id=eos))(proposer)
    names = list(runs)
    tokens_per_s = {name: [] for name in names}
    counters = {name: {"emitted": 0, "steps": 0, "accepted": 0, "drafted": 0} for name in names}
    reference: dict[int, list[int]] = {}
    mismatches = {name: 0 for name in names}
    with torch.inference_mode():
        for rep in range(args.repeats):
            order = names[rep % len(names):] + names[: rep % len(names)]
            elapsed = {name: 0.0 for name in names}
            emitted = {name: 0 for name in names}
            for i, ids in enumerate(prompts):
                for name in order:
                    t0 = time.perf_counter()
                    seq, stats = runs[name](ids)
                    elapsed[name] += time.perf_counter() - t0
                    new = seq[0, ids.shape[1]:].tolist()
                    emitted[name] += len(new)
                    if name == "target_only":
                        reference.setdefault(i, new)
                    elif rep == 0:
                        for key in counters[name]:
                            counters[name][key] += getattr(stats, key)
                    if i in reference and new != reference[i]:
                        mismatches[name] += 1
            for name in names:
                tokens_per_s[name].append(emitted[name] / elapsed[name])
        costs = verification_costs(target, prompts[0], [1, 2, 4, 8, 16, 32, 61])
    base = statistics.median(tokens_per_s["target_only"])
    report = {"args": vars(args), "verification_cost_vs_1": costs, "methods": {}}
    print(f"{'method':<14}{'tok/s':>9}{'vs target':>11}{'tau':>7}{'accepted/drafted':>18}{'mismatches':>12}")
    for name in names:
        c = counters[name]
        speed = statistics.median(tokens_per_s[name])
        tau = c["emitted"] / c["steps"] if c["steps"] else float("nan")
        acc = c["accepted"] / c["drafted"] if c["drafted"] else float("nan")
        report["methods"][name] = {"tokens_per_s": speed, "vs_target": speed / base, "tau": tau,
                                   "accepted_per_drafted": acc, "mismatches": mismatches[name],
                                   "tokens_per_s_repeats": tokens_per_s[name], **c}
        print(f"{name:<14}{speed:>9.1f}{speed / base:>10.2f}x{tau:>7.2f}{acc:>18.3f}{mismatches[name]:>12}")
    print("target forward cost of n tokens / 1 token:", {n: round(v, 2) for n, v in costs.items()})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
