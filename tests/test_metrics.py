"""SpecStats counters, derived rates and the Leviathan formulas."""

from __future__ import annotations

import json
import math

import pytest

from adaspec import AdaspecError
from adaspec.core.metrics import SpecStats, expected_tokens_per_step, optimal_gamma, theoretical_speedup


def hand_made() -> SpecStats:
    return SpecStats(
        gamma=4,
        sequences=1,
        drafted=10,
        accepted=6,
        emitted=9,
        steps=4,
        rejections=3,
        target_forwards=4,
        draft_forwards=10,
        draft_depth=10,
        prefill_time_s=0.5,
        decode_time_s=3.5,
        draft_time_s=1.0,
        target_time_s=2.0,
        accept_hist=[1, 1, 1, 1],
        position_drafted=[4, 3, 2, 1],
        position_accepted=[3, 2, 1, 0],
    )


def test_derived_rates_from_counters():
    s = hand_made()
    assert s.alpha_drafted == pytest.approx(0.6)
    assert s.alpha == pytest.approx(6 / 9)
    assert s.tau == pytest.approx(9 / 4)
    assert s.mean_gamma == pytest.approx(2.5)
    assert s.c == pytest.approx((1.0 / 10) / (2.0 / 4))  # 0.2
    assert s.tokens_per_s == pytest.approx(9 / 4.0)
    assert s.decode_tokens_per_s == pytest.approx(9 / 3.5)
    assert s.position_acceptance == pytest.approx([0.75, 2 / 3, 0.5, 0.0])
    assert s.theoretical_speedup == pytest.approx(theoretical_speedup(6 / 9, 2.5, 0.2))
    assert s.speedup_from_tau == pytest.approx(2.25 / (2.5 * 0.2 + 1))


def test_empty_stats_give_undefined_rates_and_json_nulls():
    s = SpecStats()
    assert (
        math.isnan(s.alpha)
        and math.isnan(s.alpha_drafted)
        and math.isnan(s.tau)
        and math.isnan(s.c)
        and math.isnan(s.theoretical_speedup)
    )
    d = s.to_dict()
    assert d["alpha"] is None and d["alpha_drafted"] is None and d["tau"] is None and d["c"] is None
    json.dumps(d, allow_nan=False)
    assert "n/a" in s.format()


def test_record_step_counts():
    s = SpecStats(gamma=3)
    s.record_step(3, 3, 4)  # all accepted + bonus
    s.record_step(3, 1, 2)  # rejected at position 1
    s.record_step(2, 0, 1)  # shortened last step, rejected at once
    assert (s.steps, s.drafted, s.accepted, s.emitted) == (3, 8, 4, 7)
    assert (s.target_forwards, s.draft_forwards, s.rejections) == (3, 8, 2)
    assert s.accept_hist == [1, 1, 0, 1]
    assert s.gamma_hist == [0, 0, 1, 2]
    assert s.position_drafted == [3, 3, 2] and s.position_accepted == [2, 1, 1]
    assert s.alpha_drafted == pytest.approx(0.5) and s.tau == pytest.approx(7 / 3)
    assert s.alpha == pytest.approx(4 / 6)


def test_merge_adds_counters_and_pools_rates():
    a, b = (
        hand_made(),
        SpecStats(
            gamma=6,
            sequences=1,
            drafted=6,
            accepted=6,
            emitted=8,
            steps=2,
            target_forwards=2,
            draft_forwards=6,
            draft_time_s=0.5,
            target_time_s=1.0,
            accept_hist=[0, 0, 0, 2],
            position_drafted=[2, 2, 2],
            position_accepted=[2, 2, 2],
        ),
    )
    m = a + b
    assert (m.drafted, m.accepted, m.emitted, m.steps, m.sequences, m.gamma) == (16, 12, 17, 6, 2, 6)
    assert m.accept_hist == [1, 1, 1, 3]
    assert m.position_drafted == [6, 5, 4, 1] and m.position_accepted == [5, 4, 3, 0]
    assert m.alpha_drafted == pytest.approx(12 / 16)  # pooled, not the mean of 0.6 and 1.0
    assert m.draft_time_s == pytest.approx(1.5)
    assert a.drafted == 10 and b.drafted == 6  # inputs unchanged
    assert sum([a, b]).to_dict() == m.to_dict()
    assert a.merge(b).to_dict() == m.to_dict()


def test_expected_tokens_and_speedup_values():
    assert expected_tokens_per_step(0.8, 4) == pytest.approx((1 - 0.8**5) / 0.2)  # 3.3616
    assert expected_tokens_per_step(0.8, 4) == pytest.approx(3.3616)
    assert theoretical_speedup(0.8, 4, 0.0) == pytest.approx(3.3616)
    assert theoretical_speedup(0.8, 4, 0.1) == pytest.approx(3.3616 / 1.4)
    assert theoretical_speedup(0.5, 1, 0.5) == pytest.approx(1.5 / 1.5)
    assert expected_tokens_per_step(0.0, 5) == 1.0
    assert theoretical_speedup(0.0, 3, 0.2) == pytest.approx(1 / 1.6)


def test_alpha_one_limit():
    assert expected_tokens_per_step(1.0, 4) == 5.0
    assert theoretical_speedup(1.0, 4, 0.25) == pytest.approx(5 / 2)
    assert expected_tokens_per_step(1 - 1e-9, 4) == pytest.approx(5.0, rel=1e-6)  # continuous at α = 1


def test_optimal_gamma():
    assert optimal_gamma(0.0, 0.1, 10) == 1
    assert optimal_gamma(1.0, 0.0, 10) == 10
    assert optimal_gamma(1.0, 0.05, 7) == 7
    assert optimal_gamma(0.3, 0.5, 10) == 1
    # α = 0.8, c = 0.05: S(γ) = 1.714 (= 1.8 / 1.05), 2.218, 2.567, 2.801, 2.951, 3.040, 3.082, 3.092, 3.078
    assert optimal_gamma(0.8, 0.05, 10) == 8
    assert optimal_gamma(0.8, 0.05, 4) == 4
    assert optimal_gamma(1.5, 0.0, 3) == 3  # clipped to α = 1


def test_formula_argument_errors():
    with pytest.raises(AdaspecError, match="acceptance rate"):
        expected_tokens_per_step(1.2, 3)
    with pytest.raises(AdaspecError, match="gamma"):
        expected_tokens_per_step(0.5, -1)
    with pytest.raises(AdaspecError, match="cost ratio"):
        theoretical_speedup(0.5, 3, -0.1)
    with pytest.raises(AdaspecError, match="gamma_max"):
        optimal_gamma(0.5, 0.1, 0)


def test_to_dict_has_raw_and_derived():
    d = hand_made().to_dict()
    for key in (
        "drafted",
        "accepted",
        "emitted",
        "steps",
        "target_forwards",
        "draft_forwards",
        "accept_hist",
        "position_drafted",
        "position_accepted",
        "gamma",
        "alpha",
        "alpha_drafted",
        "tau",
        "c",
        "tokens_per_s",
        "theoretical_speedup",
        "position_acceptance",
    ):
        assert key in d
    assert d["alpha_drafted"] == pytest.approx(0.6)
    assert json.loads(json.dumps(d)) == d


def test_tree_steps_count_nodes_depth_and_the_accepted_path():
    s = SpecStats()
    s.record_tree_step([3, 4, 2], accepted=2, emitted=3, rejected=True, draft_forwards=3)
    s.record_tree_step([2, 2], accepted=2, emitted=3, rejected=False, draft_forwards=2)  # ended at a leaf
    s.record_tree_step([2], accepted=0, emitted=1, rejected=True, draft_forwards=1)
    assert (s.steps, s.tree_steps, s.drafted, s.accepted, s.emitted) == (3, 3, 15, 4, 7)
    assert s.alpha == pytest.approx(4 / (4 + 2))  # per judged depth: 2 steps ended by rejecting every child
    assert s.alpha_drafted == pytest.approx(4 / 15)  # share of nodes on the accepted path
    assert s.tau == pytest.approx(7 / 3) and s.mean_accepted == pytest.approx(4 / 3)
    assert s.mean_gamma == pytest.approx(5) and s.mean_depth == pytest.approx(2)
    assert s.depth_nodes == [7, 6, 2] and s.position_drafted == [3, 2, 1] and s.position_accepted == [2, 2]
    assert s.position_acceptance == pytest.approx([2 / 3, 1.0, 0.0])
    assert s.accept_hist == [1, 0, 2] and s.gamma_hist[9] == 1
    s.draft_time_s, s.target_time_s = 0.6, 0.3
    assert s.c == pytest.approx((0.6 / 6) / (0.3 / 3))
    assert s.theoretical_speedup == pytest.approx(expected_tokens_per_step(4 / 6, 2) / (2 * s.c + 1))
    assert "tree nodes per step: 5.00, depth 2.00, accepted path 1.33" in s.format()
    merged = s + s
    assert merged.depth_nodes == [14, 12, 4] and merged.tree_steps == 6


def test_a_chain_recorded_as_a_tree_counts_as_a_chain():
    chain, tree = SpecStats(), SpecStats()
    for g, k in ((4, 2), (4, 4), (3, 0)):
        chain.record_step(g, k, k + 1)
        tree.record_tree_step([1] * g, k, k + 1, k < g, g)
    for name in ("alpha", "alpha_drafted", "tau", "mean_gamma", "mean_depth", "position_acceptance"):
        assert getattr(tree, name) == getattr(chain, name), name
