"""Token trees against chains, greedy, with a separate draft LM, measured side by side in one run.

Methods: `target_only` (KV-cached loop, the baseline), `chain-γ` (adaspec speculative decoding with a
fixed γ) and `tree-k,d,t` (tree_speculative_generate with the draft-LM proposer: top-k k, depth d, t
tokens). Timing is adaspec.evaluation.speed.timed_rounds (every method on every prompt per repeat, in a
rotating order); tokens/s is the median over repeats. Reports τ (tokens per target forward, bonus
included), the ratio to target-only, the cost of a target forward over n tokens relative to one
(measured on the first prompt's cache), and checks every output against target-only greedy decoding.

    python benchmarks/tree.py --target DIR --draft DIR [--n-prompts 10] [--max-new-tokens 128]
        [--chains 2 3 4 5 6] [--trees 2,3,4 3,3,8 4,4,16 10,7,60] [--repeats 3] [--out results/benchmarks/tree.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adaspec import data  # noqa: E402
from adaspec.decoding.generate import speculative_generate, target_only_generate  # noqa: E402
from adaspec.decoding.tree import Tree  # noqa: E402
from adaspec.decoding.tree_generate import LMTreeProposer, tree_speculative_generate  # noqa: E402
from adaspec.decoding.tree_target import tree_forward  # noqa: E402
from adaspec.evaluation.speed import timed_rounds  # noqa: E402
from adaspec.io import atomic_write_json  # noqa: E402
from adaspec.models import load_model, load_tokenizer, output_vocab_size  # noqa: E402


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
    with torch.inference_mode():
        rounds = timed_rounds(runs, names, prompts, args.repeats, next(target.parameters()).device)
        costs = verification_costs(target, prompts[0], [1, 2, 4, 8, 16, 32, 61])
    speed = {n: statistics.median(k / t for k, t in zip(rounds.tokens[n], rounds.times[n])) for n in names}
    report = {"args": vars(args), "verification_cost_vs_1": costs, "methods": {}}
    print(f"{'method':<14}{'tok/s':>9}{'vs target':>11}{'tau':>7}{'accepted/drafted':>18}{'mismatches':>12}")
    for name in names:
        st = rounds.stats[name]
        mismatches = sum(a != b for a, b in zip(rounds.outputs[name], rounds.outputs["target_only"]))
        tau = st.emitted / st.steps if st.steps else float("nan")
        acc = st.accepted / st.drafted if st.drafted else float("nan")
        report["methods"][name] = {"tokens_per_s": speed[name], "vs_target": speed[name] / speed["target_only"],
                                   "tau": tau, "accepted_per_drafted": acc, "mismatches": mismatches,
                                   "stats": st.to_dict()}
        print(f"{name:<14}{speed[name]:>9.1f}{speed[name] / speed['target_only']:>10.2f}x{tau:>7.2f}{acc:>18.3f}"
              f"{mismatches:>12}")
    print("target forward cost of n tokens / 1 token:", {n: round(v, 2) for n, v in costs.items()})
    atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
