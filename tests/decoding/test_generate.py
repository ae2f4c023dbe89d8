"""Speculative decoding: greedy equality with the target, losslessness of sampling, cache rollback, edges."""

from __future__ import annotations

import copy

import pytest
import torch
from sampling_check import chi2_pvalue, exact_joint, tiny_neox
from scipy.stats import chisquare
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

import adaspec.decoding.generate as spec
from adaspec import AdaspecError
from adaspec.core.sampling import logits_to_probs, sample
from adaspec.decoding.generate import speculative_generate, target_only_generate
from adaspec.models import build_model

# Tiny models are dominated by per-op overhead; one thread avoids oversubscribing a shared CPU.
torch.set_num_threads(1)

V = 64
PRESETS = ["tiny-neox", "tiny-llama", "tiny-gpt2"]


def noisy_copy(model, rel: float, seed: int):
    """A draft that mostly agrees with the target: its weights plus Gaussian noise of `rel` times each
    tensor's mean magnitude (α around 0.5-0.9 at rel = 0.12)."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * rel * p.abs().mean())
    return out


def random_prompt(seed: int, low: int = 1, high: int = 30) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    length = int(torch.randint(low, high + 1, (1,), generator=gen))
    return torch.randint(0, V, (1, length), generator=gen)


def hf_greedy(target, ids, max_new_tokens: int, eos: int | None = 0) -> torch.Tensor:
    # an explicit mask: otherwise generate masks prompt tokens equal to the pad id
    return target.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=0,
    )


@pytest.fixture(scope="module", params=PRESETS)
def trio(request):
    """(target, unrelated draft, high-agreement draft) of one architecture."""
    target = build_model(request.param, V, seed=1)
    return request.param, target, build_model(request.param, V, seed=2), noisy_copy(target, 0.12, seed=3)


# ---- greedy ----


def test_greedy_matches_target_generate(trio):
    preset, target, unrelated, close = trio
    alphas = {}
    for name, draft in (("unrelated", unrelated), ("close", close)):
        totals = None
        for i in range(4):
            ids = random_prompt(100 + i)
            expected = hf_greedy(target, ids, 24)
            for gamma in (1, 3, 8):
                out, stats = speculative_generate(target, draft, ids, max_new_tokens=24, gamma=gamma, eos_token_id=0)
                assert torch.equal(out, expected), (preset, name, i, gamma)
                assert stats.emitted == out.shape[1] - ids.shape[1]
                assert stats.target_forwards == stats.steps
                totals = stats if totals is None else totals + stats
        alphas[name] = totals.alpha_drafted
        assert 0 < totals.steps <= totals.emitted
    # the close pair must exercise acceptance, the unrelated one rejections
    assert alphas["close"] > 0.3 and alphas["close"] > alphas["unrelated"] + 0.2, alphas


def test_identical_draft_accepts_everything(trio):
    _, target, _, _ = trio
    ids = random_prompt(7)
    out, stats = speculative_generate(target, copy.deepcopy(target), ids, max_new_tokens=24, gamma=3)
    assert torch.equal(out, hf_greedy(target, ids, 24, eos=None))
    assert stats.alpha_drafted == 1.0 and stats.accepted == stats.drafted == 18
    assert stats.steps == 6 and stats.tau == 4.0
    assert stats.accept_hist == [0, 0, 0, 6] and stats.rejections == 0
    assert stats.position_acceptance == [1.0, 1.0, 1.0]


def test_target_only_matches_generate(trio):
    _, target, _, _ = trio
    ids = random_prompt(8)
    out, stats = target_only_generate(target, ids, max_new_tokens=20, eos_token_id=0)
    assert torch.equal(out, hf_greedy(target, ids, 20))
    assert stats.target_forwards == stats.emitted == out.shape[1] - ids.shape[1]


# ---- no-cache reference: recompute everything each step, same rule, same random draws ----


def reference_generate(
    target, draft, ids, max_new_tokens, gamma, temperature=0.0, top_p=1.0, generator=None, eos=None, confidence=0.0
):
    """Returns (sequence, per-step emitted chunks, per-step accepted counts). A step's chain stops after a
    proposal the draft gives a probability below `confidence` (its top one when greedy)."""
    seq = ids[0].tolist()
    total = len(seq) + max_new_tokens
    chunks, accepted = [], []
    while len(seq) < total:
        g = min(gamma, total - len(seq))
        proposals, qs = [], []
        for _ in range(g):
            logits = draft(torch.tensor([seq + proposals])).logits[0, -1].float()
            if temperature == 0:
                proposals.append(int(logits.argmax()))
                conf = float(torch.softmax(logits.detach(), -1).max())
            else:
                q = logits_to_probs(logits, temperature, top_p)
                proposals.append(int(sample(q, generator)))
                qs.append(q)
                conf = float(q[proposals[-1]].detach())
            if conf < confidence:
                break
        g = len(proposals)
        logits = target(torch.tensor([seq + proposals])).logits[0, -(g + 1) :].float()
        n = 0
        if temperature == 0:
            best = logits.argmax(-1).tolist()
            while n < g and proposals[n] == best[n]:
                n += 1
            token = best[n]
        else:
            p = logits_to_probs(logits, temperature, top_p)
            u = torch.rand(g, generator=generator)
            while n < g and u[n] * qs[n][proposals[n]] < p[n][proposals[n]]:
                n += 1
            dist = (p[n] - qs[n]).clamp_min(0) if n < g else p[g]
            token = int(sample(dist / dist.sum(), generator))
        new = (proposals[:n] + [token])[: total - len(seq)]
        if eos is not None and eos in new:
            new = new[: new.index(eos) + 1]
        seq += new
        chunks.append(new)
        accepted.append(n)
        if eos is not None and new[-1] == eos:
            break
    return torch.tensor([seq]), chunks, accepted


@pytest.mark.parametrize(
    "preset,confidence", [("tiny-llama", 0.0), ("tiny-gpt2", 0.0), ("tiny-neox", 0.3), ("tiny-llama", 0.3)]
)
def test_kv_rollback_matches_no_cache_reference_greedy(preset, confidence):
    target = build_model(preset, V, seed=1)
    draft = noisy_copy(target, 0.12, seed=4)
    drafted = []
    for i, gamma in enumerate((1, 3, 5)):
        ids = random_prompt(200 + i)
        chunks = []
        out, stats = speculative_generate(
            target, draft, ids, max_new_tokens=30, gamma=gamma, on_tokens=chunks.append, draft_confidence=confidence
        )
        ref, ref_chunks, ref_accepted = reference_generate(target, draft, ids, 30, gamma, confidence=confidence)
        assert torch.equal(out, ref)
        assert chunks == ref_chunks
        assert stats.accepted == sum(ref_accepted) and stats.steps == len(ref_accepted)
        assert stats.accept_hist == [ref_accepted.count(n) for n in range(max(ref_accepted) + 1)]
        drafted.append(stats.mean_gamma)
    if confidence > 0:  # the threshold did cut chains short (the last step of a run may be short anyway)
        assert drafted[2] < 4.5, drafted


@pytest.mark.parametrize("confidence", [0.0, 0.5])
def test_kv_rollback_matches_no_cache_reference_sampling(confidence):
    target = build_model("tiny-neox", V, seed=1)
    draft = noisy_copy(target, 0.12, seed=4)
    with torch.no_grad():  # peaky distributions, so acceptance is neither always nor never
        target.get_output_embeddings().weight.mul_(20)
        draft.get_output_embeddings().weight.mul_(20)
    for i, (gamma, top_p) in enumerate(((2, 1.0), (4, 0.9))):
        ids = random_prompt(300 + i)
        chunks = []
        out, stats = speculative_generate(
            target,
            draft,
            ids,
            max_new_tokens=30,
            gamma=gamma,
            temperature=0.8,
            top_p=top_p,
            seed=11,
            on_tokens=chunks.append,
            draft_confidence=confidence,
        )
        ref, ref_chunks, ref_accepted = reference_generate(
            target, draft, ids, 30, gamma, 0.8, top_p, torch.Generator().manual_seed(11), confidence=confidence
        )
        assert torch.equal(out, ref)
        assert chunks == ref_chunks
        assert stats.accepted == sum(ref_accepted)
        assert 0 < stats.accepted < stats.drafted
        if confidence > 0:  # chains cut short by the threshold, not only the last step
            assert sum(stats.gamma_hist[:gamma]) >= 2, stats.gamma_hist


# ---- sampling is lossless ----


@pytest.mark.parametrize("temperature,top_p,confidence", [(1.0, 1.0, 0.0), (0.8, 0.8, 0.0), (1.0, 1.0, 0.6)])
def test_sampling_matches_target_distribution(temperature, top_p, confidence):
    vocab, samples = 8, 1000
    target = tiny_neox(1, vocab)
    other = tiny_neox(2, vocab)
    draft = copy.deepcopy(target)
    with torch.no_grad():  # 50/50 blend: strongly different distributions, yet some acceptances
        for pd, po in zip(draft.parameters(), other.parameters()):
            pd.mul_(0.5).add_(0.5 * po)
    prompt = [3]
    exact = exact_joint(target, prompt, vocab, temperature, top_p)
    draft_exact = exact_joint(draft, prompt, vocab, temperature, top_p)
    assert (exact - draft_exact).abs().sum() > 0.5  # the draft really is a different distribution
    counts = torch.zeros(vocab, vocab, vocab)
    gen = torch.Generator().manual_seed(121)
    ids = torch.tensor([prompt])
    totals = None
    for _ in range(samples):
        out, stats = speculative_generate(
            target,
            draft,
            ids,
            max_new_tokens=3,
            gamma=2,
            temperature=temperature,
            top_p=top_p,
            generator=gen,
            draft_confidence=confidence,
        )
        x1, x2, x3 = out[0, 1:].tolist()
        counts[x1, x2, x3] += 1
        totals = stats if totals is None else totals + stats
    # every path of the rule was taken: rejections, partial and full acceptance (bonus token)
    assert all(h > 30 for h in totals.accept_hist), totals.accept_hist
    if confidence > 0:  # the threshold stopped most chains after one proposal (without it: 550 of 2136 steps)
        assert totals.gamma_hist[1] > totals.gamma_hist[2], totals.gamma_hist
    assert chi2_pvalue(counts, exact) > 1e-3
    assert chi2_pvalue(counts, draft_exact) < 1e-6  # the test can tell the two apart
    if top_p < 1:
        assert counts[exact == 0].sum() == 0  # nothing outside the target's nucleus


def test_logits_to_probs_top_p_matches_transformers():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_p in ((1.0, 0.5), (0.7, 0.9), (1.3, 1.0)):
        scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(None, scores)
        torch.testing.assert_close(logits_to_probs(logits, temperature, top_p), torch.softmax(scores, -1))
    assert torch.equal(logits_to_probs(logits, 0.0), torch.nn.functional.one_hot(logits.argmax(-1), 50).float())


def test_sample_follows_probs():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([sample(probs, gen) for _ in range(4000)])
    counts = torch.bincount(draws, minlength=4)
    assert counts[1] == 0
    assert chisquare(counts[[0, 2, 3]].numpy(), (probs[[0, 2, 3]] * 4000).numpy()).pvalue > 1e-3


# ---- stopping and edge cases ----


def test_max_new_tokens_exact_even_when_gamma_exceeds_what_is_left():
    target = build_model("tiny-llama", V, seed=1)
    for draft in (copy.deepcopy(target), build_model("tiny-llama", V, seed=2)):
        for max_new in (1, 2, 3, 5, 9, 10):
            ids = random_prompt(max_new)
            out, stats = speculative_generate(target, draft, ids, max_new_tokens=max_new, gamma=8)
            assert out.shape[1] == ids.shape[1] + max_new
            assert stats.emitted == max_new and max(stats.gamma_hist[9:] or [0]) == 0
            assert torch.equal(out, hf_greedy(target, ids, max_new, eos=None))
    out, stats = speculative_generate(target, target, ids, max_new_tokens=0)
    assert torch.equal(out, ids) and stats.steps == 0


def test_eos_stops_generation_greedy_and_sampling():
    target = build_model("tiny-gpt2", V, seed=1)
    draft = noisy_copy(target, 0.12, seed=5)
    ids = random_prompt(17)
    free = hf_greedy(target, ids, 40, eos=None)[0, ids.shape[1] :].tolist()
    eos = free[6]
    cut = free.index(eos) + 1
    for gamma in (1, 4, 8):
        out, stats = speculative_generate(target, draft, ids, max_new_tokens=40, gamma=gamma, eos_token_id=eos)
        assert out[0, ids.shape[1] :].tolist() == free[:cut]
        assert stats.emitted == cut
    out, _ = speculative_generate(target, draft, ids, max_new_tokens=40, gamma=3, eos_token_id=[V + 5, eos])
    assert out[0, ids.shape[1] :].tolist() == free[:cut]
    with torch.no_grad():
        hot = copy.deepcopy(target)
        hot.get_output_embeddings().weight.mul_(10)
        hot_draft = noisy_copy(hot, 0.12, seed=6)
    stopped = 0
    for seed in range(10):
        out, _ = speculative_generate(
            hot, hot_draft, ids, max_new_tokens=60, gamma=4, temperature=1.0, eos_token_id=[1, 2, 3], seed=seed
        )
        gen = out[0, ids.shape[1] :].tolist()
        early = [t for t in gen[:-1] if t in (1, 2, 3)]
        assert not early  # nothing is emitted after an EOS
        stopped += gen[-1] in (1, 2, 3)
    assert stopped > 0


def test_prompt_of_length_one_and_long_prompt():
    target = build_model("tiny-neox", V, seed=1)
    draft = noisy_copy(target, 0.12, seed=6)
    ids = torch.tensor([[5]])
    out, _ = speculative_generate(target, draft, ids, max_new_tokens=20, gamma=3)
    assert torch.equal(out, hf_greedy(target, ids, 20, eos=None))
    ids = random_prompt(9, low=200, high=210)
    out, _ = speculative_generate(target, draft, ids, max_new_tokens=256 - ids.shape[1], gamma=4)
    assert torch.equal(out, hf_greedy(target, ids, 256 - ids.shape[1], eos=None))
    assert out.shape[1] == 256


def test_adaptive_gamma_is_lossless_and_uses_the_chosen_gamma(monkeypatch):
    target = build_model("tiny-neox", V, seed=1)
    ids = random_prompt(21)
    calls = []

    def scripted(alpha, c, gamma_max):
        calls.append((alpha, c, gamma_max))
        return [2, 6, 1][len(calls) % 3]

    monkeypatch.setattr(spec, "optimal_gamma", scripted)
    out, stats = speculative_generate(
        target, copy.deepcopy(target), ids, max_new_tokens=40, gamma=4, adaptive_gamma=True, gamma_max=6
    )
    assert torch.equal(out, hf_greedy(target, ids, 40, eos=None))
    assert all(alpha == 1.0 and c > 0 and gmax == 6 for alpha, c, gmax in calls)  # identical draft: α = 1
    assert stats.gamma_hist[4] >= 1 and stats.gamma_hist[1] and stats.gamma_hist[2] and stats.gamma_hist[6]
    assert stats.gamma == 6 and stats.c > 0
    monkeypatch.undo()
    for draft in (build_model("tiny-neox", V, seed=2), noisy_copy(target, 0.12, seed=7)):
        out, stats = speculative_generate(
            target, draft, ids, max_new_tokens=40, gamma=3, adaptive_gamma=True, gamma_max=5, eos_token_id=0
        )
        assert torch.equal(out, hf_greedy(target, ids, 40))
        assert sum(stats.gamma_hist[6:]) == 0 and stats.gamma_hist[0] == 0


def test_draft_with_padded_vocabulary_is_lossless():
    target = build_model("tiny-llama", V, seed=1)
    draft = build_model("tiny-llama", V + 16, seed=2)  # padding rows beyond the tokenizer's vocabulary

    class Tok:
        def __len__(self):
            return V

        def get_vocab(self):
            return {str(i): i for i in range(V)}

    ids = random_prompt(31)
    with pytest.raises(AdaspecError, match="vocabulary sizes"):
        speculative_generate(target, draft, ids)
    out, _ = speculative_generate(target, draft, ids, max_new_tokens=20, gamma=3, tokenizer=Tok())
    assert torch.equal(out, hf_greedy(target, ids, 20, eos=None))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(gamma=0), "gamma must be an integer >= 1"),
        (dict(gamma=2.5), "gamma must be an integer >= 1"),
        (dict(temperature=-0.5), "temperature must be"),
        (dict(temperature=float("nan")), "temperature must be"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(max_new_tokens=-1), "max_new_tokens must be >= 0"),
        (dict(seed=1, generator=torch.Generator()), "either generator or seed"),
        (dict(adaptive_gamma=True, gamma=6, gamma_max=4), r"gamma_max \(4\) must be >= gamma \(6\)"),
    ],
)
def test_bad_arguments(kwargs, message):
    target = build_model("tiny-neox", V, seed=1)
    with pytest.raises(AdaspecError, match=message):
        speculative_generate(target, target, torch.tensor([[1, 2]]), **kwargs)


def test_bad_inputs():
    target = build_model("tiny-neox", V, seed=1)
    with pytest.raises(AdaspecError, match="different vocabulary sizes"):
        speculative_generate(target, build_model("tiny-neox", V + 1, seed=2), torch.tensor([[1]]))
    with pytest.raises(AdaspecError, match="batch size 2 is not supported"):
        speculative_generate(target, target, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(AdaspecError, match="empty prompt"):
        speculative_generate(target, target, torch.ones(1, 0, dtype=torch.long))
    with pytest.raises(AdaspecError, match=r"exceeds the target model's context of 256"):
        speculative_generate(target, target, torch.ones(1, 250, dtype=torch.long), max_new_tokens=10)
    with pytest.raises(AdaspecError, match=r"prompt \(300 tokens\)"):
        target_only_generate(target, torch.ones(1, 300, dtype=torch.long), max_new_tokens=1)
