"""EAGLE drafter in the speculative-decoding engine: greedy output identical to the target's, a no-cache
reference with the same random draws, and lossless sampling (chi-square), on random (untrained) heads."""

from __future__ import annotations

import pytest
import torch
from sampling_check import chi2_pvalue, exact_joint, tiny_neox

from adaspec.core.sampling import logits_to_probs, sample
from adaspec.decoding.generate import speculative_generate
from adaspec.drafters import DRAFTERS
from adaspec.drafters.eagle.draft_vocab import to_target_space
from adaspec.drafters.eagle.drafter import EagleDrafter
from adaspec.drafters.eagle.model import EagleConfig, EagleHead
from adaspec.models import build_model

from .feature_helpers import causal_attend

V = 64
PRESETS = ["tiny-llama", "tiny-neox", "tiny-gpt2"]


def random_prompt(seed: int, low: int = 1, high: int = 30) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    length = int(torch.randint(low, high + 1, (1,), generator=gen))
    return torch.randint(0, V, (1, length), generator=gen)


def hf_greedy(target, ids, max_new_tokens: int) -> torch.Tensor:
    return target.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )


def make_head(
    target, variant: str = "eagle3", draft_vocab: int | None = None, seed: int = 0, scale: float = 1.0
) -> EagleHead:
    vocab = target.get_output_embeddings().weight.shape[0]
    overrides = {} if draft_vocab is None else {"draft_vocab_size": draft_vocab}
    tokens = None
    if draft_vocab is not None:
        tokens = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:draft_vocab].sort().values
    head = EagleHead.from_target(
        target, EagleConfig.for_target(target, variant, **overrides), seed=seed, draft_tokens=tokens
    )
    with torch.no_grad():
        head.lm_head.weight.mul_(scale)
    return head.eval()


def test_registered():
    assert DRAFTERS["eagle"] is EagleDrafter


@pytest.mark.parametrize("preset", PRESETS)
def test_greedy_matches_target(preset):
    target = build_model(preset, V, seed=1)
    for variant, draft_vocab in (("eagle3", None), ("eagle3", 40), ("eagle1", None)):
        drafter = EagleDrafter(make_head(target, variant, draft_vocab, seed=2))
        for i in range(3):
            ids = random_prompt(100 + i)
            expected = hf_greedy(target, ids, 20)
            for gamma in (1, 3, 8):
                out, stats = speculative_generate(target, drafter, ids, max_new_tokens=20, gamma=gamma)
                assert torch.equal(out, expected), (preset, variant, draft_vocab, i, gamma)
                assert stats.emitted == 20 and stats.target_forwards == stats.steps


def test_prompt_of_one_token_drafts_nothing_first():
    target = build_model("tiny-llama", V, seed=1)
    ids = torch.tensor([[5]])
    out, stats = speculative_generate(target, EagleDrafter(make_head(target)), ids, max_new_tokens=12, gamma=3)
    assert torch.equal(out, hf_greedy(target, ids, 12))
    assert stats.gamma_hist[0] == 1  # the first step had no target feature to draft from
    with torch.no_grad():
        ref, _ = reference_generate(target, make_head(target), ids, 12, 3, 1.0, 1.0, torch.Generator().manual_seed(2))
    out, stats = speculative_generate(
        target, EagleDrafter(make_head(target)), ids, max_new_tokens=12, gamma=3, temperature=1.0, seed=2
    )
    assert torch.equal(out, ref) and stats.gamma_hist[0] == 1


# ---- no-cache reference: recompute the target and the head from scratch, same rule, same draws ----


def target_features(target, seq: list[int], layers: tuple[int, ...]) -> torch.Tensor:
    """[len(seq), layers * H]: adaspec layer i = transformers hidden_states[i + 1]; -1 = the final normed state."""
    out = target(torch.tensor([seq]), output_hidden_states=True)
    states = [out.hidden_states[-1] if i == -1 else out.hidden_states[i + 1] for i in layers]
    return torch.cat(states, dim=-1)[0]


def reference_generate(target, head, ids, max_new_tokens, gamma, temperature=0.0, top_p=1.0, generator=None):
    cfg = head.config
    seq = ids[0].tolist()
    total = len(seq) + max_new_tokens
    chunks = []
    while len(seq) < total:
        n = len(seq)
        g = 0 if n == 1 else min(gamma, total - n)
        proposals, qs = [], []
        if g:
            feats = head.project(target_features(target, seq, cfg.hidden_layers)[: n - 1])  # positions 0..n-2
            hidden = feats[None]
            for _ in range(g):
                tokens = torch.tensor([seq[1:] + proposals])
                out = head.step(tokens, hidden, torch.arange(tokens.shape[1]), causal_attend)
                logits = head.logits(out)[0, -1].float()
                if temperature == 0:
                    token = int(head.draft_to_target(logits.argmax(-1, keepdim=True)))
                else:
                    q = to_target_space(logits_to_probs(logits, temperature, top_p), head.d2t, cfg.vocab_size)
                    token = int(sample(q, generator))
                    qs.append(q)
                proposals.append(token)
                hidden = torch.cat([hidden, out[:, -1:]], dim=1)  # the draft pair reads the head's own output
        logits = target(torch.tensor([seq + proposals])).logits[0, -(g + 1) :].float()
        k = 0
        if temperature == 0:
            best = logits.argmax(-1).tolist()
            while k < g and proposals[k] == best[k]:
                k += 1
            token = best[k]
        else:
            p = logits_to_probs(logits, temperature, top_p)
            u = torch.rand(g, generator=generator)
            while k < g and u[k] * qs[k][proposals[k]] < p[k][proposals[k]]:
                k += 1
            dist = (p[k] - qs[k]).clamp_min(0) if k < g else p[g]
            dist = dist / dist.sum() if dist.sum() > 0 else p[k]
            token = int(sample(dist, generator))
        new = (proposals[:k] + [token])[: total - n]
        seq += new
        chunks.append(new)
    return torch.tensor([seq]), chunks


@pytest.mark.parametrize(
    "preset,variant,draft_vocab",
    [("tiny-llama", "eagle3", None), ("tiny-gpt2", "eagle3", 48), ("tiny-neox", "eagle1", None)],
)
def test_head_cache_matches_no_cache_reference_greedy(preset, variant, draft_vocab):
    target = build_model(preset, V, seed=1)
    head = make_head(target, variant, draft_vocab, seed=3)
    for i, gamma in enumerate((1, 3, 5)):
        ids = random_prompt(200 + i, low=2)
        chunks = []
        with torch.no_grad():
            ref, ref_chunks = reference_generate(target, head, ids, 24, gamma)
        out, _ = speculative_generate(
            target, EagleDrafter(head), ids, max_new_tokens=24, gamma=gamma, on_tokens=chunks.append
        )
        assert torch.equal(out, ref) and chunks == ref_chunks


def test_head_cache_matches_no_cache_reference_sampling():
    target = build_model("tiny-neox", V, seed=1)
    with torch.no_grad():  # peaky distributions, so acceptance is neither always nor never
        target.get_output_embeddings().weight.mul_(10)
    head = make_head(target, "eagle3", 40, seed=4, scale=10)
    for i, (gamma, top_p) in enumerate(((2, 1.0), (4, 0.9))):
        ids = random_prompt(300 + i, low=2)
        chunks = []
        with torch.no_grad():
            ref, ref_chunks = reference_generate(
                target, head, ids, 24, gamma, 0.8, top_p, torch.Generator().manual_seed(11)
            )
        out, stats = speculative_generate(
            target,
            EagleDrafter(head),
            ids,
            max_new_tokens=24,
            gamma=gamma,
            temperature=0.8,
            top_p=top_p,
            seed=11,
            on_tokens=chunks.append,
        )
        assert torch.equal(out, ref) and chunks == ref_chunks
        assert stats.drafted > 0


# ---- sampling is lossless ----


@pytest.mark.parametrize("temperature,top_p,draft_vocab", [(1.0, 1.0, None), (0.8, 0.8, 6)])
def test_sampling_matches_target_distribution(temperature, top_p, draft_vocab):
    vocab, samples = 8, 600  # fewer than the draft-LM test: the engine's rule is tested there
    target = tiny_neox(1, vocab)
    drafter = EagleDrafter(make_head(target, "eagle3", draft_vocab, seed=5))
    prompt = [3, 1]
    exact = exact_joint(target, prompt, vocab, temperature, top_p)
    counts = torch.zeros(vocab, vocab, vocab)
    gen = torch.Generator().manual_seed(121)
    ids = torch.tensor([prompt])
    totals = None
    for _ in range(samples):
        out, stats = speculative_generate(
            target, drafter, ids, max_new_tokens=3, gamma=2, temperature=temperature, top_p=top_p, generator=gen
        )
        x1, x2, x3 = out[0, 2:].tolist()
        counts[x1, x2, x3] += 1
        totals = stats if totals is None else totals + stats
    # every path of the rule was taken: rejections, partial and full acceptance (bonus token)
    assert all(h > 20 for h in totals.accept_hist), totals.accept_hist
    assert chi2_pvalue(counts, exact) > 1e-3
    if top_p < 1:
        assert counts[exact == 0].sum() == 0
