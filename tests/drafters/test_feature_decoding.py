"""Speculative decoding with MTP and Medusa drafters through the engine: greedy output identical to the
target's, sampling follows the target's distribution exactly (χ²), γ above the drafter's bound refused."""

from __future__ import annotations

import pytest
import torch
from sampling_check import chi2_pvalue, exact_joint
from transformers import AutoModelForCausalLM, LlamaConfig

from adaspec import AdaspecError
from adaspec.decoding.generate import speculative_generate
from adaspec.drafters.medusa.model import MedusaDrafter, build_medusa
from adaspec.drafters.mtp.model import MTPDrafter, build_mtp
from adaspec.models import build_model
from adaspec.models.target import FINAL, CachedLM

from .feature_helpers import PRESETS, V, final_hidden

D = 3


def drafters(target):
    return {
        "mtp": MTPDrafter(build_mtp(target, depth=D, seed=4), target),
        "medusa": MedusaDrafter(build_medusa(target, heads=D), target),
    }


def hf_greedy(target, ids, max_new_tokens: int) -> torch.Tensor:
    return target.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_engine_features_are_the_final_normed_states(preset):
    """What the heads read while decoding (the engine's layer -1) is what the tests and training feed them
    (transformers' last hidden_states)."""
    target = build_model(preset, V, seed=1)
    ids = [5, 1, 9, 9, 2, 7]
    _, hidden = CachedLM(target, V, "target", (FINAL,)).forward(torch.tensor(ids))
    torch.testing.assert_close(hidden[0], final_hidden(target, ids), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("preset", PRESETS)
def test_greedy_matches_target(preset):
    target = build_model(preset, V, seed=1)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, V, (1, length), generator=gen) for length in (1, 2, 9)]
    for name, drafter in drafters(target).items():
        for ids in prompts:
            expected = hf_greedy(target, ids, 20)
            for gamma in (1, 2, D):
                out, stats = speculative_generate(target, drafter, ids, max_new_tokens=20, gamma=gamma)
                assert torch.equal(out, expected), (preset, name, ids.shape[1], gamma)
                assert stats.emitted == 20


def test_gamma_above_bound_is_refused():
    target = build_model("tiny-llama", V, seed=1)
    for drafter in drafters(target).values():
        with pytest.raises(AdaspecError, match=f"at most {D} tokens per step") as err:
            speculative_generate(target, drafter, torch.tensor([[1, 2]]), gamma=D + 1)
        assert len(str(err.value).splitlines()) == 1


def _tiny_llama(vocab: int):
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)  # peaky, so distributions are told apart
    return model


@pytest.mark.parametrize("name", ["mtp", "medusa"])
def test_sampling_matches_target_distribution(name):
    vocab, samples, temperature = 8, 600, 1.0
    target = _tiny_llama(vocab)
    drafter = drafters(target)[name]
    prompt = [3, 5]
    exact = exact_joint(target, prompt, vocab, temperature)
    counts = torch.zeros(vocab, vocab, vocab)
    gen = torch.Generator().manual_seed(7)
    ids = torch.tensor([prompt])
    totals = None
    for _ in range(samples):
        out, stats = speculative_generate(
            target, drafter, ids, max_new_tokens=3, gamma=2, temperature=temperature, generator=gen
        )
        x1, x2, x3 = out[0, 2:].tolist()
        counts[x1, x2, x3] += 1
        totals = stats if totals is None else totals + stats
    assert all(h > 20 for h in totals.accept_hist), totals.accept_hist  # rejections, partial, full
    assert chi2_pvalue(counts, exact) > 1e-3
    # the test tells the target's distribution from a slightly hotter one
    assert chi2_pvalue(counts, exact_joint(target, prompt, vocab, 1.3 * temperature)) < 1e-4


def test_registered_and_satisfy_the_protocol():
    from adaspec.drafters import DRAFTERS, Drafter

    target = build_model("tiny-gpt2", V, seed=1)
    for name, drafter in drafters(target).items():
        assert DRAFTERS[name] is type(drafter) and isinstance(drafter, Drafter)
