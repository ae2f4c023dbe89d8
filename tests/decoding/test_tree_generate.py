"""The tree decoding loop: greedy output is the target's greedy decoding, on three model families."""

from __future__ import annotations

import copy

import pytest
import torch

from adaspec.decoding.tree import Tree, build_dynamic_tree
from adaspec.decoding.tree_generate import LMTreeProposer, tree_speculative_generate
from adaspec.models import build_model
from adaspec.decoding.generate import target_only_generate

VOCAB = 40


def _target(family: str, seed: int = 0):
    """A tiny model with larger weights than the default init, whose greedy output is not one repeated token."""
    model = build_model(family, VOCAB, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(0.4 * torch.randn(p.shape, generator=g))
    return model


def _noisy_copy(model, scale: float, seed: int):
    """A draft that agrees with the target often but not always."""
    draft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(scale * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=g))
    return draft


@torch.inference_mode()
@pytest.mark.parametrize("family", ["tiny-llama", "tiny-neox", "tiny-gpt2"])
def test_the_draft_proposer_builds_the_drafts_top_k_tree(family):
    draft = _target(family, seed=4)
    seq = torch.tensor([1, 5, 9, 2, 7, 7, 3])

    def expand(nodes: torch.Tensor, tree: Tree):  # every path through a full forward, no cache
        paths = tree.ancestors()
        rows = [draft(input_ids=torch.cat([seq, tree.tokens[paths[i]] if i >= 0 else seq[:0]])[None]).logits[0, -1]
                for i in nodes.tolist()]
        values, tokens = torch.log_softmax(torch.stack(rows).float(), -1).topk(3, dim=-1)
        return tokens, values

    expected = build_dynamic_tree(expand, top_k=3, depth=4, total_tokens=12)
    proposer = LMTreeProposer(draft, VOCAB, top_k=3, depth=4, total_tokens=12)
    other = torch.tensor([1, 5, 8, 8, 8, 8, 8])
    for s, n in ((seq, 4), (other, 7), (seq, 7), (seq, 5)):  # catch up, another sequence, roll back
        tree, rows = proposer(s, n, 0.0, 1.0, None)
        if s is seq and n == 7:
            assert rows is None and proposer.prefix.seen == n
            assert torch.equal(tree.tokens, expected.tokens) and torch.equal(tree.parents, expected.parents)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-neox", "tiny-gpt2"])
@pytest.mark.parametrize("top_k, depth, total", [(3, 3, 8), (2, 4, 6), (1, 3, 3)])
def test_greedy_tree_decoding_is_the_targets_greedy_decoding(family, top_k, depth, total):
    target = _target(family)
    draft = _noisy_copy(target, 0.1, seed=1)
    prompt = torch.tensor([[1, 5, 9, 2]])
    expected, _ = target_only_generate(target, prompt, max_new_tokens=24)
    proposer = LMTreeProposer(draft, VOCAB, top_k=top_k, depth=depth, total_tokens=total)
    seq, stats = tree_speculative_generate(target, proposer, prompt, max_new_tokens=24)
    assert seq.tolist() == expected.tolist()
    assert stats.emitted == 24 and stats.steps < 24  # more than one token per target forward
    assert sum(1 for c in stats.accept_hist if c) >= 2  # paths of several lengths were accepted


def test_eos_and_one_token_prompts():
    target = _target("tiny-llama")
    expected, _ = target_only_generate(target, torch.tensor([[3]]), max_new_tokens=12)
    eos = expected[0, 5].item()
    proposer = LMTreeProposer(_noisy_copy(target, 0.3, seed=2), VOCAB, top_k=2, depth=3, total_tokens=6)
    seq, _ = tree_speculative_generate(target, proposer, torch.tensor([[3]]), max_new_tokens=12, eos_token_id=eos)
    first = expected[0, 1:].tolist().index(eos) + 1
    assert seq.tolist() == expected[:, : first + 1].tolist()


def test_sampling_runs_with_top_k_trees():
    target = _target("tiny-neox")
    proposer = LMTreeProposer(_noisy_copy(target, 0.3, seed=3), VOCAB, top_k=3, depth=2, total_tokens=6)
    seq, stats = tree_speculative_generate(target, proposer, torch.tensor([[1, 2]]), max_new_tokens=16,
                                           temperature=0.8, top_p=0.9, seed=0)
    again, _ = tree_speculative_generate(target, proposer, torch.tensor([[1, 2]]), max_new_tokens=16,
                                         temperature=0.8, top_p=0.9, seed=0)
    assert seq.shape == (1, 18) and stats.emitted == 16
    assert torch.equal(seq, again)  # seeded runs repeat


@pytest.mark.slow
@torch.inference_mode()
def test_sampled_tree_decoding_follows_the_target_end_to_end():
    """Chi-square on the first two tokens of the whole loop (tree proposer, masked forward, verification,
    compaction, next step) against the target's exact joint distribution, on a 6-token vocabulary."""
    from scipy import stats

    vocab, runs = 6, 10_000
    target = build_model("tiny-llama", vocab, seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for p in target.parameters():
            if p.dim() >= 2:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    proposer = LMTreeProposer(_noisy_copy(target, 0.3, seed=1), vocab, top_k=3, depth=2, total_tokens=6)
    prompt = torch.tensor([1, 4, 2])
    temperature, top_p = 0.9, 0.9
    from adaspec.decoding.sampling import logits_to_probs

    first = logits_to_probs(target(input_ids=prompt[None]).logits[0, -1], temperature, top_p)
    seconds = torch.stack([logits_to_probs(target(input_ids=torch.cat([prompt, torch.tensor([a])])[None]).logits[0, -1],
                                           temperature, top_p) for a in range(vocab)])
    joint = (first[:, None] * seconds).flatten().double()
    counts = torch.zeros(vocab * vocab, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    accepted = 0
    for _ in range(runs):
        seq, run_stats = tree_speculative_generate(target, proposer, prompt[None], max_new_tokens=2,
                                           temperature=temperature, top_p=top_p, generator=gen)
        counts[seq[0, 3] * vocab + seq[0, 4]] += 1
        accepted += run_stats.accept_hist[0] < run_stats.steps  # some tree node accepted in this run
    assert accepted > 0.3 * runs  # the tree, not just the target's own sample, produced many tokens
    assert counts[joint == 0].sum() == 0
    keep = joint > 0
    expected = joint[keep] / joint[keep].sum() * runs
    assert expected.min() >= 5
    assert stats.chisquare(counts[keep].numpy(), expected.numpy()).pvalue > 1e-3
