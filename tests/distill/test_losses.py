import math

import pytest
import torch

from adaspec.distill.losses import (
    DIVERGENCES,
    LK_EPS,
    LK_ETA,
    forward_kl,
    jsd,
    lk,
    lk_kl,
    per_token_divergence,
    reverse_kl,
    sparse_divergence,
    topk_teacher,
    total_variation,
)
from adaspec.errors import AdaspecError

KINDS = ["fkl", "rkl", "tvd", "jsd", "lk", "lk_kl"]
SHAPES = [(3, 7, 11), (1, 1, 5), (13, 97), (2, 5, 4099)]


def ref_lk(kind, p, q, kl, tvd):
    """LK losses from probabilities, as the paper writes them: alpha = sum min(p, q); the blend weight
    exp(-eta * alpha) is a stop-gradient."""
    alpha = torch.minimum(p, q).sum(-1)
    if kind == "lk":
        return -alpha.clamp_min(LK_EPS).log()
    lam = torch.exp(-LK_ETA * alpha.detach())
    return lam * kl + (1 - lam) * tvd


def ref(kind, t, d, temperature=1.0, beta=0.5):
    """Plain full-softmax float64 reference, written as the textbook formulas (TRL's for jsd)."""
    lp = torch.log_softmax(t.double() / temperature, -1)
    lq = torch.log_softmax(d.double() / temperature, -1)
    p, q = lp.exp(), lq.exp()
    if kind in ("lk", "lk_kl"):
        kl = torch.where(p > 0, p * (lp - lq), 0.0).sum(-1)
        return ref_lk(kind, p, q, kl, 0.5 * (p - q).abs().sum(-1))
    if kind == "jsd" and beta == 0:
        kind = "fkl"
    if kind == "jsd" and beta == 1:
        kind = "rkl"
    if kind == "fkl":
        return (p * (lp - lq)).sum(-1)
    if kind == "rkl":
        return (q * (lq - lp)).sum(-1)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    m = beta * p + (1 - beta) * q
    return beta * (p * (lp - m.log())).sum(-1) + (1 - beta) * (q * (lq - m.log())).sum(-1)


def ref_sparse(kind, ids, lp_top, d, temperature=1.0, beta=0.5):
    """(K+1)-bucket divergence in float64, tails as 1 - sum (fine in float64 away from the floor)."""
    lq = torch.log_softmax(d.double() / temperature, -1)
    p_top, q_top = lp_top.double().exp(), lq.gather(-1, ids).exp()
    p = torch.cat([p_top, (1 - p_top.sum(-1, keepdim=True)).clamp_min(1e-8)], -1)
    q = torch.cat([q_top, (1 - q_top.sum(-1, keepdim=True)).clamp_min(1e-8)], -1)
    if kind in ("lk", "lk_kl"):
        return ref_lk(kind, p, q, (p * (p.log() - q.log())).sum(-1), 0.5 * (p - q).abs().sum(-1))
    if kind == "fkl":
        return (p * (p.log() - q.log())).sum(-1)
    if kind == "rkl":
        return (q * (q.log() - p.log())).sum(-1)
    if kind == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    m = beta * p + (1 - beta) * q
    return beta * (p * (p.log() - m.log())).sum(-1) + (1 - beta) * (q * (q.log() - m.log())).sum(-1)


def logits_pair(shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=g) * scale
    d = t + torch.randn(shape, generator=g) * scale
    return t, d


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_float64_reference(kind, shape):
    t, d = logits_pair(shape)
    out = per_token_divergence(kind, t, d, chunk_tokens=4)
    assert out.shape == shape[:-1] and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref(kind, t, d), rtol=1e-4, atol=1e-5)
    assert (out >= 0).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_divides_both(kind, temperature):
    t, d = logits_pair((4, 6, 33), seed=1)
    out = per_token_divergence(kind, t, d, temperature=temperature, chunk_tokens=5)
    torch.testing.assert_close(out.double(), ref(kind, t, d, temperature), rtol=1e-4, atol=1e-5)
    # same as pre-dividing the logits
    torch.testing.assert_close(out, per_token_divergence(kind, t / temperature, d / temperature))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(kind, dtype):
    t, d = logits_pair((3, 9, 257), seed=2)
    t, d = t.to(dtype), d.to(dtype)
    out = per_token_divergence(kind, t, d, chunk_tokens=7)
    assert out.dtype == torch.float32
    # computed in fp32 from the rounded inputs: close to float64 on the same inputs ...
    torch.testing.assert_close(out.double(), ref(kind, t, d), rtol=1e-3, atol=1e-4)
    # ... and within bf16 rounding of the full-precision value
    t32, d32 = logits_pair((3, 9, 257), seed=2)
    torch.testing.assert_close(out.double(), ref(kind, t32, d32), rtol=5e-2, atol=5e-2)


def test_public_functions_and_dict():
    t, d = logits_pair((5, 19), seed=3)
    assert set(DIVERGENCES) == set(KINDS)
    torch.testing.assert_close(forward_kl(t, d).double(), ref("fkl", t, d), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reverse_kl(t, d).double(), ref("rkl", t, d), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(total_variation(t, d).double(), ref("tvd", t, d), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(jsd(t, d, beta=0.3).double(), ref("jsd", t, d, beta=0.3), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(forward_kl(t, d, 2.0), DIVERGENCES["fkl"](t, d, temperature=2.0))


def test_jsd_convention_matches_trl():
    t, d = logits_pair((6, 40), seed=4)
    # TRL special-cases the endpoints: beta=0 -> KL(p||q), beta=1 -> KL(q||p)
    torch.testing.assert_close(jsd(t, d, beta=0.0), forward_kl(t, d))
    torch.testing.assert_close(jsd(t, d, beta=1.0), reverse_kl(t, d))
    # mixture weight beta on the target: JSD_b(p, q) == JSD_{1-b}(q, p)
    torch.testing.assert_close(jsd(t, d, beta=0.2), jsd(d, t, beta=0.8), rtol=1e-5, atol=1e-6)
    sym = jsd(t, d, beta=0.5)
    torch.testing.assert_close(sym, jsd(d, t, beta=0.5), rtol=1e-5, atol=1e-6)
    assert (sym <= math.log(2) + 1e-6).all()
    for beta in (0.1, 0.5, 0.9):
        torch.testing.assert_close(jsd(t, d, beta=beta).double(), ref("jsd", t, d, beta=beta), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_identical_distributions_give_zero(kind):
    t, _ = logits_pair((4, 3, 50), seed=5)
    assert per_token_divergence(kind, t, t.clone()).abs().max() < 1e-6
    # a constant shift of the logits is the same distribution
    assert per_token_divergence(kind, t, t + 7.5).abs().max() < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_masked_and_extreme_logits_are_finite(kind):
    t, d = logits_pair((4, 64), seed=6)
    # the same vocabulary padding masked with -inf in both, and huge magnitudes
    t[:, 50:] = float("-inf")
    d[:, 50:] = float("-inf")
    t[0, 0], d[1, 3] = 1e4, -1e4
    out = per_token_divergence(kind, t, d, chunk_tokens=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref(kind, t[:, :50], d[:, :50]), rtol=1e-4, atol=1e-5)
    d = d.requires_grad_()
    per_token_divergence(kind, t, d).sum().backward()
    assert torch.isfinite(d.grad).all() and (d.grad[:, 50:] == 0).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_gradient_matches_autograd(kind, chunk):
    t, d0 = logits_pair((3, 5, 23), seed=7)
    weights = torch.rand(3, 5, generator=torch.Generator().manual_seed(1))
    weights[1, 2] = 0.0  # rows with zero upstream gradient are skipped: they must get exactly 0
    temperature, beta = 1.7, 0.3
    d = d0.clone().requires_grad_()
    (per_token_divergence(kind, t, d, temperature, beta, chunk_tokens=chunk) * weights).sum().backward()
    d64 = d0.double().requires_grad_()
    (ref(kind, t, d64, temperature, beta) * weights.double()).sum().backward()
    torch.testing.assert_close(d.grad.double(), d64.grad, rtol=1e-4, atol=1e-6)
    assert (d.grad[1, 2] == 0).all()


def test_gradient_bf16_and_target_gets_none():
    t, d0 = logits_pair((2, 4, 37), seed=8)
    t = t.bfloat16().requires_grad_()
    d = d0.bfloat16().requires_grad_()
    forward_kl(t, d).sum().backward()
    assert t.grad is None and d.grad.dtype == torch.bfloat16
    d64 = d.detach().double().requires_grad_()
    ref("fkl", t.detach(), d64).sum().backward()
    torch.testing.assert_close(d.grad.double(), d64.grad, rtol=2e-2, atol=2e-3)


def test_strided_slice_inputs():
    # logits[:, :-1] cannot be viewed flat; rows are gathered without copying the whole tensor
    t, d0 = logits_pair((3, 6, 29), seed=9)
    d = d0.clone().requires_grad_()
    out = per_token_divergence("fkl", t[:, :-1], d[:, :-1], chunk_tokens=4)
    torch.testing.assert_close(out.double(), ref("fkl", t[:, :-1], d0[:, :-1]), rtol=1e-4, atol=1e-5)
    out.sum().backward()
    d64 = d0.double().requires_grad_()
    ref("fkl", t[:, :-1], d64[:, :-1]).sum().backward()
    torch.testing.assert_close(d.grad.double(), d64.grad, rtol=1e-4, atol=1e-6)


def test_default_chunk_bounds_elements(monkeypatch):
    import adaspec.distill.losses as losses

    t, d0 = logits_pair((3, 7, 50), seed=15)
    d = d0.clone().requires_grad_()
    expect = per_token_divergence("rkl", t, d0, chunk_tokens=1)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 120)  # 2 rows of 50 per chunk
    assert losses._chunk_rows(None, 50) == 2 and losses._chunk_rows(None, 500) == 1
    out = per_token_divergence("rkl", t, d)
    torch.testing.assert_close(out, expect)
    out.sum().backward()
    assert torch.isfinite(d.grad).all()


def test_empty_and_bad_arguments():
    assert per_token_divergence("fkl", torch.zeros(0, 5), torch.zeros(0, 5)).shape == (0,)
    t, d = logits_pair((2, 5))
    with pytest.raises(AdaspecError, match="unknown divergence"):
        per_token_divergence("kl", t, d)
    with pytest.raises(AdaspecError, match="beta"):
        jsd(t, d, beta=1.5)
    with pytest.raises(AdaspecError, match="temperature"):
        forward_kl(t, d, temperature=0.0)
    with pytest.raises(AdaspecError, match="chunk_tokens"):
        per_token_divergence("fkl", t, d, chunk_tokens=0)
    with pytest.raises(AdaspecError, match="shape"):
        forward_kl(t, d[:, :4])


# ---- sparse (cached teacher) ----


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_sparse_full_k_equals_exact(kind, temperature):
    t, d = logits_pair((2, 5, 61), seed=10)
    ids, lp = topk_teacher(t, 61, temperature)
    out = sparse_divergence(kind, ids, lp, d, temperature, chunk_tokens=3)
    torch.testing.assert_close(out, per_token_divergence(kind, t, d, temperature), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_matches_bucket_reference_and_gradient(kind):
    t, d0 = logits_pair((3, 4, 101), seed=11)
    ids, lp = topk_teacher(t, 10, temperature=1.3)
    weights = torch.rand(3, 4, generator=torch.Generator().manual_seed(2))
    weights[0, 1] = 0.0
    d = d0.clone().requires_grad_()
    out = sparse_divergence(kind, ids, lp, d, temperature=1.3, beta=0.3, chunk_tokens=5)
    d64 = d0.double().requires_grad_()
    expect = ref_sparse(kind, ids, lp, d64, temperature=1.3, beta=0.3)
    torch.testing.assert_close(out.double(), expect.detach(), rtol=1e-4, atol=1e-5)
    (out * weights).sum().backward()
    (expect * weights.double()).sum().backward()
    torch.testing.assert_close(d.grad.double(), d64.grad, rtol=1e-4, atol=1e-6)
    assert (d.grad[0, 1] == 0).all()


def test_sparse_full_k_gradient_equals_exact():
    t, d0 = logits_pair((4, 31), seed=12)
    ids, lp = topk_teacher(t, 31)
    d1, d2 = d0.clone().requires_grad_(), d0.clone().requires_grad_()
    sparse_divergence("fkl", ids, lp, d1).sum().backward()
    forward_kl(t, d2).sum().backward()
    torch.testing.assert_close(d1.grad, d2.grad, rtol=1e-4, atol=1e-6)


def test_sparse_error_shrinks_with_k():
    # peaky, LM-like: Zipf-shaped logits in a random order per position, a draft that roughly agrees
    g = torch.Generator().manual_seed(13)
    vocab, n = 4096, 32
    zipf = -1.2 * torch.log(torch.arange(1, vocab + 1, dtype=torch.float32)) * 3
    t = torch.stack([zipf[torch.randperm(vocab, generator=g)] for _ in range(n)])
    t = t + 0.5 * torch.randn(n, vocab, generator=g)
    d = t + 1.5 * torch.randn(n, vocab, generator=g)
    exact = forward_kl(t, d)
    errors = []
    for k in (20, 64, 256, vocab):
        ids, lp = topk_teacher(t, k)
        errors.append((sparse_divergence("fkl", ids, lp, d) - exact).abs().mean().item())
    # measured here: fkl mean |error| ~1.5e-4, 8e-6, 2e-7 at K = 20, 64, 256 (exact mean 0.24); K = V is
    # exact up to fp32 rounding
    assert errors[0] > errors[1] > errors[2]
    assert errors[3] < 1e-6


def test_topk_teacher_and_sparse_arguments():
    t, d = logits_pair((2, 3, 17), seed=14)
    ids, lp = topk_teacher(t, 4, temperature=2.0)
    assert ids.shape == (2, 3, 4) and ids.dtype == torch.long and lp.dtype == torch.float32
    full = torch.log_softmax(t / 2.0, -1)
    torch.testing.assert_close(lp, full.gather(-1, ids))
    assert (lp[..., :-1] >= lp[..., 1:]).all()
    with pytest.raises(AdaspecError, match="top-k"):
        topk_teacher(t, 18)
    with pytest.raises(AdaspecError, match="do not match"):
        sparse_divergence("fkl", ids[:1], lp[:1], d)
    # bf16 cached log-probs are accepted (computed in fp32)
    out = sparse_divergence("fkl", ids, lp.bfloat16(), d, temperature=2.0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# ---- acceptance-aligned losses (LK) and gradcheck ----


def test_lk_losses_in_terms_of_acceptance():
    t, d = logits_pair((4, 7, 53), seed=16)
    tvd, fkl = total_variation(t, d).double(), forward_kl(t, d).double()
    alpha = 1 - tvd  # sum min(p, q) = 1 - TVD on the simplex
    torch.testing.assert_close(lk(t, d).double(), -alpha.log(), rtol=1e-4, atol=1e-5)
    lam = torch.exp(-LK_ETA * alpha)
    torch.testing.assert_close(lk_kl(t, d).double(), lam * fkl + (1 - lam) * tvd, rtol=1e-4, atol=1e-5)
    assert DIVERGENCES["lk"] is lk and DIVERGENCES["lk_kl"] is lk_kl
    # a better-aligned draft has a higher acceptance, so a lower LK
    assert (lk(t, t + 0.1 * (d - t)) < lk(t, d)).all()


def test_lk_disjoint_supports_are_floored_and_finite():
    t = torch.full((2, 6), float("-inf"))
    d = torch.full((2, 6), float("-inf"))
    t[:, :3] = torch.randn(2, 3, generator=torch.Generator().manual_seed(17))
    d[:, 3:] = 0.0  # no token both can emit: alpha = 0
    d = d.requires_grad_()
    out = per_token_divergence("lk", t, d)
    torch.testing.assert_close(out, torch.full((2,), -math.log(LK_EPS)))
    out.sum().backward()
    assert torch.isfinite(d.grad).all() and (d.grad == 0).all()  # the floor is flat
    torch.testing.assert_close(
        per_token_divergence("lk_kl", t, d.detach()), per_token_divergence("fkl", t, d.detach())
    )  # alpha = 0: all KL


# lk_kl's blend weight is a stop-gradient, which finite differences cannot see: its gradient is checked as the
# blend of the (gradchecked) fkl and tvd gradients instead
GRADCHECKED = [k for k in KINDS if k != "lk_kl"]


@pytest.mark.parametrize("kind", GRADCHECKED)
def test_gradcheck_dense_float64(kind):
    t, d = logits_pair((2, 3, 7), seed=18, scale=1.0)
    d = d.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: per_token_divergence(kind, t.double(), x, temperature=1.3, beta=0.3, chunk_tokens=2), (d,)
    )


@pytest.mark.parametrize("kind", GRADCHECKED)
def test_gradcheck_sparse_float64(kind):
    t, d = logits_pair((2, 3, 11), seed=19, scale=1.0)
    ids, lp = topk_teacher(t.double(), 4, temperature=1.3)
    assert lp.dtype == torch.float32  # the cache's dtype; the sparse path computes in the draft's
    d = d.double().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x: sparse_divergence(kind, ids, lp.double(), x, temperature=1.3, beta=0.3, chunk_tokens=2), (d,)
    )


@pytest.mark.parametrize("sparse", [False, True])
def test_lk_kl_gradient_is_the_blend_of_kl_and_tvd_gradients(sparse):
    t, d0 = logits_pair((3, 4, 13), seed=20, scale=1.0)
    ids, lp = topk_teacher(t, 5)

    def div(kind, d):
        return sparse_divergence(kind, ids, lp, d) if sparse else per_token_divergence(kind, t, d)

    grads = {}
    for kind in ("lk_kl", "fkl", "tvd"):
        d = d0.double().requires_grad_()
        div(kind, d).sum().backward()
        grads[kind] = d.grad
    lam = torch.exp(-LK_ETA * (1 - div("tvd", d0.double()))).unsqueeze(-1)
    torch.testing.assert_close(grads["lk_kl"], lam * grads["fkl"] + (1 - lam) * grads["tvd"])
