"""The adaptive tree policy: expected tokens, the best tree against brute force over every tree, chains as
the width-1 case, cost interpolation, and the controller's acceptance counts."""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from adaspec.core.tree import Tree
from adaspec.core.tree_policy import TreeController, best_tree, interpolate_costs
from adaspec.core.tree_shape import AdaptiveTree
from adaspec.errors import AdaspecError

# The policy's model (adaspec.core.tree_policy's docstring) written out directly, path by path: the reference
# best_tree's incremental sums are checked against.


def expected_tokens(paths: list, acceptance: list) -> float:
    """1 + the sum over the tree's rank paths of the product of a[d][r] along each path."""
    total = 1.0
    for p in paths:
        prob = 1.0
        for d, r in enumerate(p):
            prob *= acceptance[d][r]
        total += prob
    return total


def frontier_sizes(paths: list) -> list[int]:
    """F_d for d = 1..depth: the nodes fed to expand each depth (1 for the root, then the parents there)."""
    owners: dict[int, set[tuple[int, ...]]] = {}
    for p in paths:
        owners.setdefault(len(p), set()).add(tuple(p[:-1]))
    return [len(owners[d]) for d in sorted(owners)]


def step_cost(paths: list, verify_cost: list, draft_cost: float, step: float = 0.0) -> float:
    """The step's cost in target forwards of one token."""
    return draft_cost * sum(verify_cost[f - 1] for f in frontier_sizes(paths)) + verify_cost[len(paths)] + step


def _all_paths(depth: int, width: int) -> list[tuple[int, ...]]:
    return [p for d in range(1, depth + 1) for p in itertools.product(range(width), repeat=d)]


def _closed_trees(depth: int, width: int):
    paths = _all_paths(depth, width)
    for mask in range(1 << len(paths)):
        chosen = {p for i, p in enumerate(paths) if mask >> i & 1}
        if all(len(p) == 1 or p[:-1] in chosen for p in chosen):
            yield sorted(chosen)


def _value(paths, acceptance, verify, draft, step):
    return expected_tokens(paths, acceptance) / step_cost(paths, verify, draft, step)


def test_expected_tokens_sums_path_products():
    a = [[0.5, 0.25], [0.8, 0.1]]
    assert expected_tokens([], a) == 1.0
    assert expected_tokens([(0,), (1,), (0, 0), (0, 1), (1, 0)], a) == pytest.approx(
        1 + 0.5 + 0.25 + 0.5 * 0.8 + 0.5 * 0.1 + 0.25 * 0.8
    )


@pytest.mark.parametrize("seed", range(6))
def test_best_tree_is_the_best_of_every_tree_by_brute_force(seed):
    rng = random.Random(seed)
    depth, width = 3, 2
    acceptance = [sorted((rng.random() for _ in range(width)), reverse=True) for _ in range(depth)]
    verify = [1.0]
    for _ in range(len(_all_paths(depth, width))):
        verify.append(verify[-1] + rng.uniform(0.01, 0.3))
    draft, step = rng.uniform(0.0, 0.5), rng.uniform(0.0, 1.0)
    paths, value = best_tree(acceptance, verify, draft, step)
    brute = max(_value(t, acceptance, verify, draft, step) for t in _closed_trees(depth, width))
    assert value == pytest.approx(brute, rel=1e-9)
    assert _value(list(paths), acceptance, verify, draft, step) == pytest.approx(value, rel=1e-12)
    assert all(len(p) == 1 or p[:-1] in paths for p in paths)  # a tree


def test_width_one_chooses_the_best_chain_length():
    alpha = 0.7
    verify = [1.0 + 0.1 * i for i in range(9)]
    paths, _ = best_tree([[alpha]] * 8, verify, draft_cost=0.2)
    gamma = len(paths)
    assert paths == tuple((0,) * d for d in range(1, gamma + 1))
    rate = [sum(alpha**i for i in range(g + 1)) / (g * 0.2 + verify[g]) for g in range(9)]
    assert gamma == max(range(9), key=lambda g: rate[g])


def test_expensive_drafts_give_no_tree_and_node_bounds_hold():
    assert best_tree([[0.3, 0.1]] * 3, [1.0] * 10, draft_cost=5.0)[0] == ()
    assert best_tree([[0.3, 0.1]] * 3, [1.0] * 10, draft_cost=5.0, allow_empty=False)[0] == ((0,), (1,))
    paths, _ = best_tree([[0.99, 0.9]] * 4, [1.0] * 30, draft_cost=0.0, max_nodes=5)
    assert len(paths) == 5
    with pytest.raises(AdaspecError, match="in \\[0, 1\\]"):
        best_tree([[1.5]], [1.0, 1.0], 0.1)
    with pytest.raises(AdaspecError, match="costs must be positive"):
        best_tree([[0.5]], [1.0, 0.0], 0.1)


def test_interpolated_costs_are_linear_between_measured_sizes_and_flat_after():
    costs = interpolate_costs({1: 1.0, 3: 2.0, 5: 4.0}, 6)
    assert costs == pytest.approx([1.0, 1.5, 2.0, 3.0, 4.0, 4.0, 4.0])
    # a noisy dip is pooled with the spike before it: more tokens never cost less
    assert interpolate_costs({1: 1.0, 2: 2.7, 3: 1.1, 4: 0.9, 6: 3.0}, 5) == pytest.approx(
        [1.0, 1.5666667, 1.5666667, 1.5666667, 2.2833333, 3.0], abs=1e-6
    )


def test_frontier_sizes_and_step_cost():
    paths = [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0)]
    assert frontier_sizes(paths) == [1, 2, 1]  # the root; nodes 0 and 1; node [0, 0]
    verify = [1.0, 1.1, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8]
    assert step_cost(paths, verify, draft_cost=0.5, step=0.2) == pytest.approx(0.5 * (1.0 + 1.1 + 1.0) + 1.8 + 0.2)
    chain = [(0,), (0, 0), (0, 0, 0)]
    assert step_cost(chain, verify, 0.5) == pytest.approx(3 * 0.5 + 1.4)  # γ draft forwards + γ+1 verified


def test_controller_counts_judged_children_by_depth_and_rank():
    tree = Tree.from_paths([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]], torch.arange(9).view(3, 3))
    ctl = TreeController(AdaptiveTree(8, 3, 2), [1.0] * 9, target_1_s=0.01, decay=1.0, prior_weight=0.0)
    ctl.update(tree, [0, 3], draft_s=0.006, other_s=0.002)
    # judged: the root's children (ranks 0, 1), node 0's children (ranks 0, 1), node 3 has none
    assert ctl._new_trials == [[1, 1], [1, 1], [0, 0]] and ctl._new_hits == [[1, 0], [0, 1], [0, 0]]
    assert ctl.draft_cost == pytest.approx(0.6 / 3) and ctl.step == pytest.approx(0.2)  # 3 depths fed
    for _ in range(7):
        ctl.update(tree, [0, 3], draft_s=0.006, other_s=0.002)
    ctl.shape()  # re-plans: the counts are folded in
    assert ctl.trials == [[8, 8], [8, 8], [0, 0]] and ctl.acceptance[1] == [0.0, 1.0]
    assert ctl.shape() is None or ctl.shape().depth <= 3


def test_a_controller_that_stops_drafting_still_explores():
    ctl = TreeController(
        AdaptiveTree(8, 3, 2), [1.0] * 9, target_1_s=0.01, draft_cost=50.0, replan_every=1, explore_every=4
    )
    shapes = []
    for _ in range(8):
        shapes.append(ctl.shape())
        ctl.steps += 1
    assert [s is None for s in shapes] == [True, True, True, False] * 2
