"""`restrict_topk_to_draft` (a cached top-K teacher over a reduced draft vocabulary) against a naive reference,
and the divergence it feeds against the dense one over the draft vocabulary."""

from __future__ import annotations

import math

import pytest
import torch

from adaspec.distill import losses
from adaspec.distill.teacher import TopK, divergence
from adaspec.drafters.eagle.draft_vocab import restrict_to_draft, restrict_topk_to_draft, vocab_maps


def _draft_vocab(vocab: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return vocab_maps(ids, vocab)


def _naive(ids: list[int], lps: list[float], t2d: torch.Tensor) -> tuple[list[int], list[float]]:
    draft_of = {int(t): d for d, t in enumerate(torch.nonzero(t2d).flatten().tolist())}
    n = len(draft_of)
    outside = sum(math.exp(lp) for i, lp in zip(ids, lps) if i not in draft_of)
    norm = math.log(max(1.0 - outside, 1e-8))
    inside = [(draft_of[i], lp - norm) for i, lp in zip(ids, lps) if i in draft_of]
    sinks = [(n, -math.inf)] * (len(ids) - len(inside))
    rows = (inside + sinks)[: min(len(ids), n + 1)]
    return [d for d, _ in rows], [lp for _, lp in rows]


@pytest.mark.parametrize(
    "shape, vocab, size, k", [((3, 5), 37, 11, 7), ((2, 1, 4), 37, 5, 20), ((6,), 19, 19, 19), ((4, 3), 23, 1, 4)]
)
def test_restrict_topk_matches_naive_reference(shape, vocab, size, k):
    g = torch.Generator().manual_seed(size)
    logits = torch.randn(*shape, vocab, generator=g) * 3
    ids, lps = losses.topk_teacher(logits, k)
    _, t2d = _draft_vocab(vocab, size, seed=k)
    got_ids, got_lps = restrict_topk_to_draft(ids, lps.double(), t2d)  # float64: no cancellation in 1 - mass
    assert got_ids.shape == got_lps.shape == (*shape, min(k, size + 1))
    for row in range(ids.numel() // k):
        want_ids, want_lps = _naive(ids.view(-1, k)[row].tolist(), lps.view(-1, k)[row].tolist(), t2d)
        assert got_ids.view(-1, got_ids.shape[-1])[row].tolist() == want_ids
        torch.testing.assert_close(
            got_lps.view(-1, got_lps.shape[-1])[row], torch.tensor(want_lps, dtype=torch.float64)
        )


@pytest.mark.parametrize("kind", losses.KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_topk_over_a_draft_vocabulary_is_the_exact_divergence(kind, temperature):
    vocab, size = 41, 13
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, vocab, generator=g) * 2
    d2t, t2d = _draft_vocab(vocab, size, seed=1)
    q1 = (torch.randn(2, 5, size, generator=g) * 2).requires_grad_()
    q2 = q1.detach().clone().requires_grad_()
    ids, lps = losses.topk_teacher(logits, vocab, temperature)
    sparse = divergence(kind, TopK(*restrict_topk_to_draft(ids, lps, t2d), sink=True), q1, temperature)
    dense = losses.per_token_divergence(kind, restrict_to_draft(logits, d2t), q2, temperature)
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=1e-4)
    sparse.sum().backward()
    dense.sum().backward()
    torch.testing.assert_close(q1.grad, q2.grad, atol=1e-5, rtol=1e-4)


def test_partial_topk_stays_finite_when_it_falls_outside_the_draft_vocabulary():
    vocab, size = 30, 4
    logits = torch.randn(3, 6, vocab, generator=torch.Generator().manual_seed(0)) * 4
    _, t2d = _draft_vocab(vocab, size, seed=2)
    ids, lps = losses.topk_teacher(logits, 8)
    ids[0, 0] = torch.nonzero(~t2d).flatten()[:8]  # a row whose whole top-K lies outside
    teacher = TopK(*restrict_topk_to_draft(ids, lps, t2d), sink=True)
    q = torch.randn(3, 6, size, requires_grad=True)
    for kind in losses.KINDS:
        div = divergence(kind, teacher, q)
        div.sum().backward()
        assert torch.isfinite(div).all() and torch.isfinite(q.grad).all(), kind
        q.grad = None
