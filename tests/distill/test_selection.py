import math

import pytest
import torch

from adaspec.distill.selection import (
    check_k,
    delta_selection,
    num_kept,
    reduce_loss,
    scheduled_k,
    select_tokens,
    soft_weights,
)
from adaspec.errors import AdaspecError


def selective_loss(draft_div, ref_div, mask, k, mode="top", normalize="response", group=None):
    """(loss, selected) as training computes them on one micro-batch: the selection, then the reduction."""
    selected = delta_selection(draft_div, ref_div, mask, k, mode, group=group)
    return reduce_loss(draft_div, mask, selected, normalize), selected


def batch(rows=4, cols=13, seed=0, prompt=3):
    g = torch.Generator().manual_seed(seed)
    delta = torch.randn(rows, cols, generator=g)
    mask = torch.ones(rows, cols, dtype=torch.bool)
    mask[:, :prompt] = False  # prompt
    mask[1, -4:] = False  # padding
    return delta, mask, g


@pytest.mark.parametrize("k", [0.05, 0.1, 0.25, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 10, 33, 100, 257])
@pytest.mark.parametrize("mode", ["top", "bottom", "random"])
def test_kept_fraction_is_k(k, n, mode):
    delta = torch.randn(n, generator=torch.Generator().manual_seed(n))
    mask = torch.ones(n, dtype=torch.bool)
    kept = int(select_tokens(delta, mask, k, mode, generator=torch.Generator().manual_seed(0)).sum())
    assert kept == num_kept(k, n)
    assert 1 <= kept <= n
    assert abs(kept - k * n) <= 0.5 or kept == 1


def test_num_kept_rounding():
    assert num_kept(0.4, 10) == 4
    assert num_kept(0.25, 10) == 3  # 2.5 rounds half up
    assert num_kept(0.01, 10) == 1  # at least one token
    assert num_kept(1.0, 7) == 7
    assert num_kept(0.5, 0) == 0


@pytest.mark.parametrize("k", [0.1, 0.3, 0.4, 0.6, 0.77])
def test_top_and_bottom_complement(k):
    delta, mask, _ = batch(seed=1)
    delta[0, 5] = delta[2, 7] = delta[3, 9] = 0.123  # ties must not break the complement
    n = int(mask.sum())
    assert k * n % 1 != 0.5
    top = select_tokens(delta, mask, k, "top")
    bottom = select_tokens(delta, mask, 1 - k, "bottom")
    assert not (top & bottom).any()
    assert torch.equal(top | bottom, mask)


def test_top_picks_largest_delta_and_bottom_smallest():
    delta, mask, _ = batch(seed=2)
    sel = select_tokens(delta, mask, 0.3, "top")
    assert delta[sel].min() >= delta[mask & ~sel].max()
    sel = select_tokens(delta, mask, 0.3, "bottom")
    assert delta[sel].max() <= delta[mask & ~sel].min()


def test_masked_tokens_never_selected():
    delta, mask, _ = batch(seed=3)
    delta[~mask] = 1e9  # tempting prompt/padding positions
    for mode in ("top", "bottom", "random", "all"):
        for per_sequence in (False, True):
            sel = select_tokens(delta, mask, 0.5, mode, per_sequence, torch.Generator().manual_seed(0))
            assert sel.shape == mask.shape and sel.dtype == torch.bool
            assert not (sel & ~mask).any()
    assert torch.equal(select_tokens(delta, mask, 0.5, "all"), mask)


def test_per_sequence_keeps_fraction_per_row():
    delta, mask, _ = batch(rows=5, cols=20, seed=4)
    mask[4] = False  # a row with no response tokens
    delta[0] += 100.0  # globally row 0 would take everything
    sel = select_tokens(delta, mask, 0.4, "top", per_sequence=True)
    for r in range(5):
        assert int(sel[r].sum()) == num_kept(0.4, int(mask[r].sum()))
        if mask[r].any():
            assert delta[r][sel[r]].min() >= delta[r][mask[r] & ~sel[r]].max()
    glob = select_tokens(delta, mask, 0.4, "top")
    assert int(glob.sum()) == num_kept(0.4, int(mask.sum()))
    assert int(glob[0].sum()) == int(mask[0].sum())


def test_random_is_seeded():
    delta, mask, _ = batch(seed=5)
    a = select_tokens(delta, mask, 0.4, "random", generator=torch.Generator().manual_seed(7))
    b = select_tokens(delta, mask, 0.4, "random", generator=torch.Generator().manual_seed(7))
    c = select_tokens(delta, mask, 0.4, "random", generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.sum()) == num_kept(0.4, int(mask.sum()))
    # random ignores delta: the same seed gives the same positions for other deltas
    d = select_tokens(-delta, mask, 0.4, "random", generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, d)


def test_deterministic_tie_break():
    delta = torch.zeros(2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    sel = select_tokens(delta, mask, 0.25, "top")
    assert sel.view(-1).nonzero().view(-1).tolist() == [0, 1, 2]
    sel = select_tokens(delta, mask, 0.25, "bottom")
    assert sel.view(-1).nonzero().view(-1).tolist() == [9, 10, 11]


def test_nan_delta_is_not_preferred():
    delta, mask, _ = batch(seed=6)
    delta[0, 5] = float("nan")
    assert not select_tokens(delta, mask, 0.5, "top")[0, 5]


@pytest.mark.parametrize("n", [5, 10, 37, 100])
@pytest.mark.parametrize("k", [0.1, 0.25, 0.4, 0.5, 0.9])
def test_relation_to_official_quantile_rule(n, k):
    # official: delta >= torch.quantile(delta, 1 - k) over the flattened response tokens
    delta = torch.randn(n, generator=torch.Generator().manual_seed(n))
    official = delta >= torch.quantile(delta, 1 - k)
    assert int(official.sum()) == 1 + math.floor(k * (n - 1) + 1e-9)
    ours = select_tokens(delta, torch.ones(n, dtype=torch.bool), k, "top")
    assert abs(int(ours.sum()) - int(official.sum())) <= 1
    assert torch.equal(ours & official, ours) or torch.equal(ours & official, official)


def test_all_equals_plain_kd_loss():
    g = torch.Generator().manual_seed(9)
    per_token = torch.rand(3, 8, generator=g)
    mask = torch.rand(3, 8, generator=g) > 0.3
    plain = (per_token * mask).sum() / mask.sum()
    for normalize in ("response", "kept"):
        loss, sel = selective_loss(per_token, None, mask, k=0.123, mode="all", normalize=normalize)
        torch.testing.assert_close(loss, plain)
        assert torch.equal(sel, mask)


def test_normalisations():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    mask = torch.tensor([[False, True, True, True], [True, True, False, False]])
    selected = torch.tensor([[True, True, False, True], [False, True, False, False]])
    # the selected-but-unmasked position 0 is dropped: kept = {2, 4, 6}
    assert reduce_loss(per_token, mask, selected, "response").item() == pytest.approx(12 / 5)
    assert reduce_loss(per_token, mask, selected, "kept").item() == pytest.approx(12 / 3)
    # a denominator counted over a whole gradient-accumulation step, as the official num_items_in_batch
    assert reduce_loss(per_token, mask, selected, "response", num_items=10).item() == pytest.approx(1.2)
    assert reduce_loss(per_token, mask, selected, "kept", num_items=10).item() == pytest.approx(4.0)
    with pytest.raises(AdaspecError, match="normalisation"):
        reduce_loss(per_token, mask, selected, "tokens")


def test_zero_response_tokens_gives_zero_with_graph():
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    for normalize in ("response", "kept"):
        per_token = torch.where(x < 0, float("inf"), x * 2)  # inf at masked positions is harmless
        loss, sel = selective_loss(per_token, per_token.detach(), mask, 0.5, normalize=normalize)
        assert loss.item() == 0.0 and not sel.any()
        assert loss.requires_grad
        loss.backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
        x.grad = None


def test_gradient_only_through_selected_tokens():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(3, 9, generator=g, requires_grad=True)
    draft_div = x.exp()
    ref_div = torch.rand(3, 9, generator=g, requires_grad=True)
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[:, :2] = False
    draft_div = torch.where(mask, draft_div, float("nan"))  # garbage at prompt positions must not leak
    loss, sel = selective_loss(draft_div, ref_div, mask, 0.4)
    loss.backward()
    assert ref_div.grad is None  # Delta is computed without gradient
    assert torch.isfinite(x.grad).all()
    assert (x.grad[~sel] == 0).all() and (x.grad[sel] != 0).all()
    torch.testing.assert_close(x.grad[sel], x.detach().exp()[sel] / mask.sum())


def test_adaspec_loss_selects_by_delta():
    g = torch.Generator().manual_seed(11)
    draft_div = torch.rand(2, 10, generator=g)
    ref_div = torch.rand(2, 10, generator=g)
    mask = torch.ones(2, 10, dtype=torch.bool)
    loss, sel = selective_loss(draft_div, ref_div, mask, 0.4, mode="top")
    assert torch.equal(sel, select_tokens(draft_div - ref_div, mask, 0.4, "top"))
    torch.testing.assert_close(loss, draft_div[sel].sum() / 20)
    loss_kept, _ = selective_loss(draft_div, ref_div, mask, 0.4, normalize="kept")
    torch.testing.assert_close(loss_kept, draft_div[sel].mean())


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.01, 2, float("nan"), float("inf")])
def test_check_k_errors(bad):
    with pytest.raises(AdaspecError, match=r"k must be in \(0, 1\], got"):
        check_k(bad)
    delta, mask, _ = batch()
    with pytest.raises(AdaspecError, match="k must be"):
        select_tokens(delta, mask, bad, "top")


def test_argument_errors():
    check_k(1)
    check_k(0.5)
    delta, mask, _ = batch()
    with pytest.raises(AdaspecError, match="unknown selection mode"):
        select_tokens(delta, mask, 0.5, "largest")
    with pytest.raises(AdaspecError, match="differ in shape"):
        select_tokens(delta[:, 1:], mask, 0.5)
    with pytest.raises(AdaspecError, match="reference"):
        selective_loss(delta, None, mask, 0.5, mode="top")


@pytest.mark.parametrize("group", [1, 2, 3, 5, 7, 40])
@pytest.mark.parametrize("mode", ["top", "bottom"])
@pytest.mark.parametrize("k", [0.2, 0.4, 0.75])
def test_group_selection_is_per_group_select_tokens(group, mode, k):
    """Groups of `group` consecutive rows, as the official code's quantile over each device's micro-batch."""
    delta, mask, _ = batch(rows=7, cols=11, seed=group)
    mask[4] = False  # a row with no response token
    sel = select_tokens(delta, mask, k, mode, group=group)
    for start in range(0, 7, group):
        rows = slice(start, start + group)
        n = int(mask[rows].sum())
        assert int(sel[rows].sum()) == num_kept(k, n)
        assert torch.equal(sel[rows], select_tokens(delta[rows], mask[rows], k, mode))
    assert not (sel & ~mask).any()


def test_group_defaults_and_limits():
    delta, mask, _ = batch(rows=6, cols=9)
    whole = select_tokens(delta, mask, 0.4)
    assert torch.equal(select_tokens(delta, mask, 0.4, group=6), whole)
    assert torch.equal(select_tokens(delta, mask, 0.4, group=100), whole)
    assert torch.equal(select_tokens(delta, mask, 0.4, group=1), select_tokens(delta, mask, 0.4, per_sequence=True))
    # random selection draws per group from the generator: reproducible from the seed
    a = select_tokens(delta, mask, 0.4, "random", generator=torch.Generator().manual_seed(3), group=2)
    b = select_tokens(delta, mask, 0.4, "random", generator=torch.Generator().manual_seed(3), group=2)
    assert torch.equal(a, b) and int(a[:2].sum()) == num_kept(0.4, int(mask[:2].sum()))
    loss, sel = selective_loss(delta, torch.zeros_like(delta), mask, 0.4, group=2)
    assert torch.equal(sel, select_tokens(delta, mask, 0.4, group=2))
    for bad in (dict(group=0), dict(group=2, per_sequence=True)):
        with pytest.raises(AdaspecError, match="selection group"):
            select_tokens(delta, mask, 0.4, **bad)


# ---- soft selection and the k schedule ----


def naive_soft_weights(values, k, tau):
    """Soft weights written out token by token: rank by value descending, ties by position."""
    n = len(values)
    order = sorted(range(n), key=lambda i: (-values[i], i))
    rank = {i: r for r, i in enumerate(order)}
    w = [1 / (1 + math.exp(-((1 - (rank[i] + 0.5) / n) - (1 - k)) / tau)) for i in range(n)]
    total = sum(w)
    return [x * num_kept(k, n) / total for x in w]


@pytest.mark.parametrize("n", [1, 2, 7, 33, 100])
@pytest.mark.parametrize("k", [0.1, 0.4, 0.75, 1.0])
@pytest.mark.parametrize("tau", [0.02, 0.1, 0.5])
def test_soft_weights_match_naive_reference(n, k, tau):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n))
    values[n // 2] = values[0]  # a tie, broken by position
    w = soft_weights(values, k, tau)
    assert w.dtype == torch.float32 and w.shape == (n,)
    torch.testing.assert_close(w, torch.tensor(naive_soft_weights(values.tolist(), k, tau)), rtol=1e-5, atol=1e-6)
    assert w.sum().item() == pytest.approx(num_kept(k, n), rel=1e-5)
    # a larger Delta never gets a smaller weight
    order = torch.sort(values, descending=True, stable=True).indices
    assert (w[order][:-1] >= w[order][1:] - 1e-7).all()


def test_soft_weights_sharpen_to_top_k():
    values = torch.randn(50, generator=torch.Generator().manual_seed(3))
    top = select_tokens(values, torch.ones(50, dtype=torch.bool), 0.4, "top")
    torch.testing.assert_close(soft_weights(values, 0.4, 1e-4), top.float())
    assert soft_weights(torch.zeros(0), 0.4).shape == (0,)
    nan = values.clone()
    nan[4] = float("nan")
    assert soft_weights(nan, 0.4)[4] == soft_weights(nan, 0.4).min()  # NaN ranks last, as for "top"
    with pytest.raises(AdaspecError, match="temperature"):
        soft_weights(values, 0.4, 0.0)


@pytest.mark.parametrize("group", [None, 1, 2, 3])
def test_soft_select_tokens_per_group(group):
    delta, mask, _ = batch(rows=6, cols=10, seed=12)
    mask[3] = False
    w = select_tokens(delta, mask, 0.4, "soft", group=group, soft_temperature=0.2)
    assert w.dtype == torch.float32 and (w[~mask] == 0).all() and (w[mask] > 0).all()
    size = group or 6
    for start in range(0, 6, size):
        rows = slice(start, start + size)
        torch.testing.assert_close(w[rows][mask[rows]], soft_weights(delta[rows][mask[rows]], 0.4, 0.2))
    ref = torch.zeros_like(delta)
    sel = delta_selection(delta + ref, ref, mask, 0.4, "soft", group=group, soft_temperature=0.2)
    torch.testing.assert_close(sel, w)


def test_reduce_loss_with_weights_matches_naive_sum():
    g = torch.Generator().manual_seed(13)
    x = torch.rand(3, 8, generator=g, requires_grad=True)
    per_token = x * 2
    mask = torch.rand(3, 8, generator=g) > 0.3
    weights = torch.rand(3, 8, generator=g)
    weights[0, :3] = 0.0
    per_token = torch.where(mask & (weights > 0), per_token, float("nan"))  # garbage where unused
    naive = sum(
        float(weights[i, j]) * float(per_token[i, j].detach())
        for i in range(3)
        for j in range(8)
        if mask[i, j] and weights[i, j] > 0
    )
    n_resp, w_sum = int(mask.sum()), float((weights * mask).sum())
    assert reduce_loss(per_token, mask, weights, "response").item() == pytest.approx(naive / n_resp, rel=1e-5)
    assert reduce_loss(per_token, mask, weights, "kept").item() == pytest.approx(naive / w_sum, rel=1e-5)
    assert reduce_loss(per_token, mask, weights, "response", num_items=10).item() == pytest.approx(naive / 10, rel=1e-5)
    loss = reduce_loss(per_token, mask, weights, "response")
    loss.backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad, torch.where(mask, 2 * weights, 0.0) / n_resp)
    # 0/1 weights are the hard selection
    hard = weights > 0.5
    torch.testing.assert_close(
        reduce_loss(per_token.nan_to_num(), mask, hard.float(), "kept"),
        reduce_loss(per_token.nan_to_num(), mask, hard, "kept"),
    )


def test_scheduled_k():
    assert scheduled_k(0.4, "constant", 7, 100) == 0.4
    assert scheduled_k(0.4, "linear", 0, 11) == 1.0
    assert scheduled_k(0.4, "linear", 5, 11) == pytest.approx(0.7)
    assert scheduled_k(0.4, "linear", 10, 11) == pytest.approx(0.4)
    assert scheduled_k(0.4, "linear", 50, 11) == pytest.approx(0.4)  # past the end: k
    assert scheduled_k(0.4, "linear", 0, 1) == 0.4
    ks = [scheduled_k(0.2, "linear", s, 9) for s in range(9)]
    assert all(a > b for a, b in zip(ks, ks[1:]))
    with pytest.raises(AdaspecError, match="k schedule"):
        scheduled_k(0.4, "cosine", 0, 10)
    with pytest.raises(AdaspecError, match="k must be"):
        scheduled_k(0.0, "linear", 0, 10)
