"""MTP modules: training-forward shapes and offsets, cached drafting equals a no-cache recomputation,
γ bounded by the depth, depth losses against naive references."""

from __future__ import annotations

import pytest
import torch

from adaspec import AdaspecError
from adaspec.core.sampling import Sampling, logits_to_probs
from adaspec.data import response_mask
from adaspec.distill.steps import place_by_predicted_token
from adaspec.drafters.mtp.model import MTPDrafter, build_mtp
from adaspec.drafters.multi_token_loss import depth_token_losses, depth_weights
from adaspec.drafters.target_parts import target_parts
from adaspec.models import build_model

from .feature_helpers import PRESETS, V, drive, final_hidden


@pytest.fixture(scope="module", params=PRESETS)
def target(request):
    return build_model(request.param, V, seed=1)


def test_training_forward_shapes(target):
    heads = build_mtp(target, depth=3, seed=0)
    ids = torch.randint(0, V, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = target(ids, output_hidden_states=True).hidden_states[-1]
        logits = heads(target_parts(target), hidden, ids)
    assert [tuple(x.shape) for x in logits] == [(2, 11 - k, V) for k in (1, 2, 3)]
    with pytest.raises(AdaspecError, match="too short for 3 MTP depths"):
        heads(target_parts(target), hidden[:, :3], ids[:, :3])


def test_module_k_reads_the_token_at_offset_k():
    target = build_model("tiny-llama", V, seed=1)
    heads = build_mtp(target, depth=3, seed=0)
    parts = target_parts(target)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (1, 12), generator=gen)
    hidden = torch.randn(1, 12, 32, generator=gen)  # features held fixed: only the tokens move
    with torch.no_grad():
        base = heads(parts, hidden, ids)
        # depth 1 at position 0 by hand: [enorm(E t_1); hnorm(h_0)] -> eh_proj -> block -> target head
        m = heads.mtp[0]
        x = m.eh_proj(torch.cat([m.enorm(parts.embed(ids[:, 1:2])), m.hnorm(hidden[:, :1])], -1))
        torch.testing.assert_close(base[0][:, :1], parts.logits(m.block(x)))
        i = 4
        for k in (1, 2, 3):
            moved = ids.clone()
            moved[0, i + k] = (moved[0, i + k] + 1) % V  # the token depth k reads at position i
            got = heads(parts, hidden, moved)[k - 1]
            assert torch.equal(got[:, :i], base[k - 1][:, :i])  # causal: earlier positions never see it
            assert not torch.allclose(got[:, i], base[k - 1][:, i])
            later = ids.clone()
            later[0, i + k + 1] = (later[0, i + k + 1] + 1) % V  # the token depth k predicts at i
            assert torch.equal(heads(parts, hidden, later)[k - 1][:, : i + 1], base[k - 1][:, : i + 1])


def reference_q(
    heads, target, seq: list[int], gamma: int, proposals: list[int], temperature: float = 1.0, top_p: float = 1.0
) -> torch.Tensor:
    """No-cache recomputation of the chain at the last featured position n-2 (full causal attention over
    every depth's positions, tokens from seq + the proposals), each depth's sampling distribution."""
    parts = target_parts(target)
    n = len(seq)
    ext = torch.tensor([seq + proposals])
    prev = final_hidden(target, seq)[None, : n - 1]
    out = []
    with torch.no_grad():
        for k in range(1, gamma + 1):
            prev = heads.mtp[k - 1](prev, parts.embed(ext[:, k : n - 1 + k]))
            out.append(logits_to_probs(parts.logits(prev[0, -1]).float(), temperature, top_p))
    return torch.stack(out)


@pytest.mark.parametrize("gamma", [1, 2, 3])
def test_cached_drafting_matches_no_cache_reference(target, gamma):
    heads = build_mtp(target, depth=3, seed=2)
    rounds = []
    with torch.no_grad():
        drive(
            MTPDrafter(heads, target),
            target,
            [3, 9, 1, 4],
            steps=8,
            gamma=gamma,
            seed=gamma,
            check=lambda seq, proposals, q: rounds.append((seq, proposals, q)),
        )
    assert len(rounds) == 8
    for seq, proposals, q in rounds:
        assert q.shape == (gamma, V) and len(proposals) == gamma
        torch.testing.assert_close(q, reference_q(heads, target, seq, gamma, proposals), atol=1e-5, rtol=1e-4)


def test_cached_drafting_with_temperature_and_top_p():
    target = build_model("tiny-llama", V, seed=1)
    heads = build_mtp(target, depth=3, seed=7)
    rounds = []
    with torch.no_grad():
        drive(
            MTPDrafter(heads, target),
            target,
            [3, 9, 1, 4],
            steps=6,
            gamma=3,
            seed=9,
            temperature=0.7,
            top_p=0.9,
            check=lambda seq, proposals, q: rounds.append((seq, proposals, q)),
        )
    for seq, proposals, q in rounds:
        assert all(float(q[i, x]) > 0 for i, x in enumerate(proposals))  # drawn inside the nucleus
        want = reference_q(heads, target, seq, 3, proposals, 0.7, 0.9)
        torch.testing.assert_close(q, want, atol=1e-5, rtol=1e-4)


def test_varying_gamma_and_lagging_modules(target):
    """Steps with γ < D leave the deeper modules behind; they catch up when a later step asks for them."""
    heads = build_mtp(target, depth=3, seed=3)
    drafter = MTPDrafter(heads, target)
    gen = torch.Generator().manual_seed(5)
    seq = [7, 2, 5]
    drafter.prefill(torch.tensor(seq), final_hidden(target, seq)[None, :2])
    with torch.no_grad():
        for gamma in (1, 1, 3, 2, 1, 3, 3):
            n = len(seq)
            proposals, q = drafter.propose(torch.tensor(seq), n, gamma, Sampling(1.0, 1.0, gen))
            torch.testing.assert_close(
                q, reference_q(heads, target, seq, gamma, proposals.tolist()), atol=1e-5, rtol=1e-4
            )
            seq = seq + proposals[:1].tolist() + [int(torch.randint(0, V, (1,), generator=gen))]
            drafter.accept(len(seq), final_hidden(target, seq)[None, n - 1 : len(seq) - 1])


def test_gamma_above_depth_is_refused():
    target = build_model("tiny-llama", V, seed=1)
    drafter = MTPDrafter(build_mtp(target, depth=2), target)
    assert drafter.max_gamma == 2
    drafter.prefill(torch.tensor([1, 2]), final_hidden(target, [1, 2])[None, :1])
    with pytest.raises(AdaspecError, match="at most 2 tokens per step; got gamma 3"):
        drafter.propose(torch.tensor([1, 2]), 2, 3, Sampling())


def test_one_token_prompt_proposes_nothing():
    target = build_model("tiny-llama", V, seed=1)
    drafter = MTPDrafter(build_mtp(target), target)
    drafter.prefill(torch.tensor([1]), None)
    proposals, q = drafter.propose(torch.tensor([1]), 1, 2, Sampling())
    assert proposals.numel() == 0 and q is None


def test_depth_losses_match_naive_reference():
    gen = torch.Generator().manual_seed(0)
    b, t, d = 2, 9, 3
    target_logits = torch.randn(b, t, V, generator=gen)
    depth_logits = [torch.randn(b, t - k, V, generator=gen) for k in range(1, d + 1)]
    labels = torch.randint(0, V, (b, t), generator=gen)
    labels[0, :4] = -100  # a prompt
    labels[1, -2:] = -100  # padding
    for kind in ("ce", "fkl"):
        losses = depth_token_losses(depth_logits, target_logits, labels, kind)
        for k, (loss, mask) in enumerate(losses, start=1):
            assert loss.shape == mask.shape == (b, t - k - 1)
            for bi in range(b):
                for i in range(t - k - 1):
                    gold = int(labels[bi, i + k + 1])
                    assert bool(mask[bi, i]) == (gold != -100)
                    logq = torch.log_softmax(depth_logits[k - 1][bi, i], -1)
                    if kind == "ce":
                        want = -logq[gold] if gold != -100 else None
                    else:
                        p = torch.softmax(target_logits[bi, i + k], -1)
                        want = (p * (p.log() - logq)).sum()
                    if want is not None:
                        torch.testing.assert_close(loss[bi, i], want, atol=1e-5, rtol=1e-5)
        assert depth_weights(d, lam=0.3) == pytest.approx([0.1] * d)  # DeepSeek-V3: λ on the mean over depths
        assert depth_weights(d, [1.0, 0.5, 0.0]) == [1.0, 0.5, 0.0]
        # in the loop's layout nothing scored is lost to its response mask (the first response tokens too)
        spread = place_by_predicted_token([loss * mask for loss, mask in losses], [1.0, 0.5, 0.25], t - 1, first=1)
        assert spread.shape == (b, t - 1)
        want = sum(w * (loss * mask).sum() for w, (loss, mask) in zip([1.0, 0.5, 0.25], losses))
        torch.testing.assert_close((spread * response_mask(labels)).sum(), want)
    with pytest.raises(AdaspecError, match="2 depth weights for 3 depths"):
        depth_weights(d, [1.0, 1.0])
