"""Multi-step head losses against a naive per-position reference over odd shapes."""

from __future__ import annotations

import torch

from adaspec.distill import losses
from adaspec.distill.selection import num_kept
from adaspec.distill.steps import multi_step_loss, place_by_predicted_token, step_divergences


def test_step_alignment_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    b, t, v, steps = 2, 7, 5, 3
    p = torch.randn(b, t, v, generator=g)
    qs = [torch.randn(b, t, v, generator=g) for _ in range(steps)]
    divs = step_divergences("fkl", p, qs)
    for j, d in enumerate(divs):
        assert d.shape == (b, t - 1 - j)
        for bi in range(b):
            for pos in range(t - 1 - j):  # step j at pos predicts token pos+1+j, taught by p at pos+j
                want = losses.forward_kl(p[bi, pos + j][None], qs[j][bi, pos][None])[0]
                assert torch.allclose(d[bi, pos], want, atol=1e-5)


def test_weighted_sum_and_per_step_top_k():
    g = torch.Generator().manual_seed(1)
    b, t, v = 3, 9, 4
    p = torch.randn(b, t, v, generator=g)
    qs = [torch.randn(b, t, v, generator=g) for _ in range(2)]
    ref = [d * 0.5 for d in step_divergences("fkl", p, qs)]
    response = torch.rand(b, t - 1, generator=g) < 0.7
    divs = step_divergences("fkl", p, qs)
    total, kept = multi_step_loss(divs, response, [1.0, 0.8])
    naive = torch.zeros(b, t - 1)
    for j, w in enumerate([1.0, 0.8]):
        for pos in range(t - 1 - j):  # step j at pos predicts the token that response[:, pos + j] marks
            naive[:, pos + j] += w * divs[j][:, pos] * response[:, pos + j]
    assert torch.allclose(total, naive, atol=1e-6)
    # nothing scored is lost to the loop's reduction over the response mask
    assert torch.allclose((total * response).sum(), naive.sum(), atol=1e-5)
    _, top = multi_step_loss(divs, response, [1.0, 0.8], k=0.4, mode="top", ref_divs=ref)
    for j, sel in enumerate(top):
        n = int(response[:, j:].sum())
        assert int(sel.sum()) == num_kept(0.4, n) and not (sel & ~response[:, j:]).any()


def test_place_by_predicted_token_shifts_each_step():
    x = [torch.tensor([[0.0, 1.0, 2.0, 3.0]]), torch.tensor([[4.0, 5.0, 6.0]])]
    assert place_by_predicted_token(x, [1.0, 1.0], 4).tolist() == [[0.0, 1 + 4, 2 + 5, 3 + 6]]
    assert place_by_predicted_token(x, [1.0, 0.5], 4, first=1).tolist() == [[0.0, 0.0, 1 + 2, 2 + 2.5]]
