"""The tree decoding loop with every drafter: greedy output is the target's greedy decoding on three model
families and both decode paths; sampling follows the target's distribution exactly (chi-square)."""

from __future__ import annotations

import copy

import pytest
import torch
from sampling_check import chi2_pvalue, exact_joint, tiny_neox

from adaspec import AdaspecError
from adaspec.core.tree_shape import AdaptiveTree, TreeShape
from adaspec.decoding.generate import speculative_generate, target_only_generate
from adaspec.decoding.lm import LMDrafter
from adaspec.decoding.tree_generate import TreeCosts, measure_verify_costs, tree_speculative_generate
from adaspec.drafters.eagle.drafter import EagleDrafter
from adaspec.drafters.eagle.model import EagleConfig, EagleHead
from adaspec.drafters.medusa.model import MedusaDrafter, build_medusa
from adaspec.drafters.mtp.model import MTPDrafter, build_mtp
from adaspec.models import build_model
from adaspec.models.lean import LeanLM
from adaspec.models.target import CachedLM

VOCAB = 40
FAMILIES = ["tiny-llama", "tiny-neox", "tiny-gpt2"]
SHAPES = [
    TreeShape.dynamic(3, 3, 8),
    TreeShape.static([[0], [1], [2], [0, 0], [1, 0], [0, 1], [0, 0, 0]]),
    AdaptiveTree(10, 3, 3),
]


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


def _drafters(target):
    eagle = EagleHead.from_target(target, EagleConfig.for_target(target), seed=2).eval()
    return {
        "lm": LMDrafter(_noisy_copy(target, 0.1, seed=1), VOCAB),
        "lm-keep": LMDrafter(_noisy_copy(target, 0.1, seed=1), VOCAB, keep_tree_rows=True),
        "eagle": EagleDrafter(eagle),
        "eagle-keep": EagleDrafter(eagle, keep_tree_rows=True),
        "mtp": MTPDrafter(build_mtp(target, depth=3, seed=4), target),
        "medusa": MedusaDrafter(build_medusa(target, heads=3), target),
    }


COSTS = TreeCosts({1: 1.0, 4: 1.2, 16: 2.0}, 1e-3)  # passed in, so the adaptive runs measure nothing


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tree_decoding_is_the_targets_greedy_decoding_for_every_drafter(family):
    target = _target(family)
    prompts = [torch.tensor([[1, 5, 9, 2]]), torch.tensor([[7]])]
    expected = [target_only_generate(target, p, max_new_tokens=20)[0] for p in prompts]
    for name, drafter in _drafters(target).items():
        for shape, lean in [(s, None) for s in SHAPES] + [(SHAPES[0], False)]:  # lean, and the HF path once
            for prompt, want in zip(prompts, expected):
                seq, stats = tree_speculative_generate(target, drafter, prompt, 20, tree=shape, lean=lean, costs=COSTS)
                assert seq.tolist() == want.tolist(), (family, name, shape, lean)
                assert stats.emitted == 20 and stats.tree_steps == stats.steps


@pytest.mark.parametrize("family", FAMILIES)
def test_a_good_draft_accepts_long_paths(family):
    target = _target(family)
    prompt = torch.tensor([[1, 5, 9, 2]])
    expected, _ = target_only_generate(target, prompt, max_new_tokens=24)
    seq, stats = tree_speculative_generate(
        target, _noisy_copy(target, 0.1, seed=1), prompt, 24, tree=TreeShape.dynamic(3, 4, 12)
    )
    assert seq.tolist() == expected.tolist()
    assert stats.steps < 24 and sum(1 for c in stats.accept_hist if c) >= 2  # paths of several lengths


def test_the_tree_loop_runs_on_the_chain_engines_decode_path(monkeypatch):
    calls = []
    for cls in (LeanLM, CachedLM):
        original = cls.forward

        def spy(self, *args, _original=original, **kwargs):
            calls.append("LeanLM" if isinstance(self, LeanLM) else type(self).__name__)  # DraftLeanLM is one
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", spy)
    target = _target("tiny-llama")
    for lean, name in ((None, "LeanLM"), (False, "CachedLM")):
        calls.clear()
        tree_speculative_generate(target, _noisy_copy(target, 0.1, seed=1), torch.tensor([[1, 2, 3]]), 8, lean=lean)
        assert set(calls) == {name}  # the target and the draft model alike
        calls.clear()
        speculative_generate(target, _noisy_copy(target, 0.1, seed=1), torch.tensor([[1, 2, 3]]), 8, lean=lean)
        assert set(calls) == {name}


def test_eos_stops_and_stats_count_trees():
    target = _target("tiny-llama")
    expected, _ = target_only_generate(target, torch.tensor([[3]]), max_new_tokens=12)
    eos = expected[0, 5].item()
    drafter = LMDrafter(_noisy_copy(target, 0.3, seed=2), VOCAB)
    seq, stats = tree_speculative_generate(
        target, drafter, torch.tensor([[3]]), 12, tree=TreeShape.dynamic(2, 3, 6), eos_token_id=eos
    )
    first = expected[0, 1:].tolist().index(eos) + 1
    assert seq.tolist() == expected[:, : first + 1].tolist()
    assert stats.drafted == sum(stats.depth_nodes) and stats.draft_forwards == stats.draft_depth
    assert stats.position_drafted[0] == stats.steps and len(stats.depth_nodes) <= 3


def test_depth_beyond_a_heads_bound_and_drafters_without_trees_are_refused():
    target = _target("tiny-gpt2")
    with pytest.raises(AdaspecError, match="at most 3 tokens deep; got a tree of depth 4") as err:
        tree_speculative_generate(
            target,
            MedusaDrafter(build_medusa(target, heads=3), target),
            torch.tensor([[1, 2]]),
            4,
            tree=TreeShape.dynamic(2, 4, 6),
        )
    assert len(str(err.value).splitlines()) == 1

    class ChainOnly:
        hidden_layers, max_gamma = (), None

        def prefill(self, prompt, hidden): ...

        def propose(self, seq, n, gamma, sampling): ...

        def accept(self, n, hidden): ...

    with pytest.raises(AdaspecError, match="cannot propose token trees"):
        tree_speculative_generate(target, ChainOnly(), torch.tensor([[1, 2]]), 4)


def test_adaptive_measures_costs_when_none_are_given():
    target = _target("tiny-neox")
    seq, stats = tree_speculative_generate(
        target, _noisy_copy(target, 0.1, seed=1), torch.tensor([[1, 2, 3]]), 16, tree=AdaptiveTree(8, 3, 2)
    )
    assert seq.tolist() == target_only_generate(target, torch.tensor([[1, 2, 3]]), 16)[0].tolist()
    from adaspec.models.lean import cached_lm

    tgt = cached_lm(target, VOCAB, "target")
    tgt.forward(torch.tensor([1, 2, 3]))
    costs = measure_verify_costs(tgt, torch.tensor(4), sizes=(1, 2, 5), reps=2)
    assert set(costs.verify) == {1, 2, 5} and costs.verify[1] == 1.0 and costs.target_1_s > 0
    assert tgt.seen == 3  # the prefix is left as it was


def test_sampling_repeats_with_a_seed():
    target = _target("tiny-neox")
    for drafter in (
        LMDrafter(_noisy_copy(target, 0.3, seed=3), VOCAB),
        MedusaDrafter(build_medusa(target, heads=2), target),
    ):
        runs = [
            tree_speculative_generate(
                target,
                drafter,
                torch.tensor([[1, 2]]),
                16,
                tree=TreeShape.dynamic(3, 2, 6),
                temperature=0.8,
                top_p=0.9,
                seed=0,
            )
            for _ in range(2)
        ]
        assert runs[0][0].shape == (1, 18) and runs[0][1].emitted == 16
        assert torch.equal(runs[0][0], runs[1][0])


def _medusa_target(vocab: int):
    target = tiny_neox(1, vocab)
    drafter = MedusaDrafter(build_medusa(target, heads=2), target)
    return target, drafter


def _first_tokens(target, drafter, prompt, samples, temperature, top_p, seed):
    vocab = target.get_output_embeddings().weight.shape[0]
    counts = torch.zeros(vocab, vocab, vocab)
    gen = torch.Generator().manual_seed(seed)
    totals = None
    shape = TreeShape.static([[0], [1], [2], [0, 0], [0, 1], [0, 2], [1, 0], [2, 0]])  # width 3, depth 2
    for _ in range(samples):
        out, stats = tree_speculative_generate(
            target, drafter, torch.tensor([prompt]), 3, tree=shape, temperature=temperature, top_p=top_p, generator=gen
        )
        x1, x2, x3 = out[0, len(prompt) :].tolist()
        counts[x1, x2, x3] += 1
        totals = stats if totals is None else totals + stats
    return counts, totals


def test_sampled_trees_of_a_head_drafter_follow_the_target():
    """Medusa's top-3 candidates per depth, width 3 and depth 2: the first three tokens of the whole loop
    against the target's exact joint distribution (a fast run; the 10^4-sample one is marked slow)."""
    vocab, prompt = 8, [3, 5]
    target, drafter = _medusa_target(vocab)
    counts, totals = _first_tokens(target, drafter, prompt, 800, 1.0, 1.0, seed=7)
    assert totals.accept_hist[0] > 50 and sum(totals.accept_hist[1:]) > 50  # rejections and accepted paths
    assert chi2_pvalue(counts, exact_joint(target, prompt, vocab, 1.0)) > 1e-3
    assert chi2_pvalue(counts, exact_joint(target, prompt, vocab, 1.4)) < 1e-4  # the test has power


@pytest.mark.slow
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.9, 0.8)])
def test_sampled_trees_of_a_head_drafter_follow_the_target_at_10k_samples(temperature, top_p):
    vocab, prompt = 8, [3, 5]
    target, drafter = _medusa_target(vocab)
    counts, totals = _first_tokens(target, drafter, prompt, 10_000, temperature, top_p, seed=11)
    assert sum(totals.accept_hist[1:]) > 0.2 * totals.steps
    exact = exact_joint(target, prompt, vocab, temperature, top_p)
    assert chi2_pvalue(counts, exact) > 1e-3
    assert counts[exact == 0].sum() == 0


@pytest.mark.slow
def test_sampled_trees_of_a_draft_lm_follow_the_target_at_10k_samples():
    vocab, prompt = 8, [3, 5]
    target = tiny_neox(1, vocab)
    draft = _noisy_copy(target, 0.3, seed=1)
    drafter = LMDrafter(draft, vocab)
    counts = torch.zeros(vocab, vocab, vocab)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10_000):
        out, _ = tree_speculative_generate(
            target,
            drafter,
            torch.tensor([prompt]),
            3,
            tree=TreeShape.dynamic(3, 2, 6),
            temperature=0.9,
            top_p=0.9,
            generator=gen,
        )
        x1, x2, x3 = out[0, 2:].tolist()
        counts[x1, x2, x3] += 1
    assert chi2_pvalue(counts, exact_joint(target, prompt, vocab, 0.9, 0.9)) > 1e-3


def test_a_controller_passed_in_keeps_learning_across_calls():
    from adaspec.core.tree_policy import TreeController

    target = _target("tiny-llama")
    drafter = LMDrafter(_noisy_copy(target, 0.1, seed=1), VOCAB)
    controller = TreeController(AdaptiveTree(8, 3, 2), [1.0 + 0.1 * i for i in range(9)], 1e-3, max_depth=3)
    for prompt in ([[1, 2, 3]], [[4, 5]]):
        seq, _ = tree_speculative_generate(target, drafter, torch.tensor(prompt), 12, tree=controller)
        assert seq.tolist() == target_only_generate(target, torch.tensor(prompt), 12)[0].tolist()
    first = controller.steps
    tree_speculative_generate(target, drafter, torch.tensor([[6]]), 12, tree=controller)
    assert controller.steps > first > 0
    with pytest.raises(AdaspecError, match="the controller plans 3"):
        tree_speculative_generate(
            target, MedusaDrafter(build_medusa(target, heads=2), target), torch.tensor([[1, 2]]), 4, tree=controller
        )
