"""Tree shapes: static rank paths through any drafter's expansion, the --tree grammar, clipping to the room."""

from __future__ import annotations

import pytest
import torch

from adaspec.core.tree import Tree, build_static_tree
from adaspec.core.tree_shape import AdaptiveTree, TreeShape, cartesian_paths, parse_tree_spec
from adaspec.errors import AdaspecError


def _expand_by_path(calls: list):
    """Children of a node = tokens 10 * (its depth + 1) + rank, offset by the parent's token (parent-dependent)."""

    def expand(nodes: torch.Tensor, tree: Tree, k: int):
        calls.append((nodes.tolist(), k))
        rows = []
        for i in nodes.tolist():
            base = 0 if i < 0 else int(tree.tokens[i]) * 100
            d = 1 if i < 0 else int(tree.depths[i]) + 1
            rows.append([base + 10 * d + r for r in range(k)])
        return torch.tensor(rows), torch.zeros(len(rows), k)

    return expand


def test_static_tree_takes_each_nodes_rank_from_its_parents_expansion():
    calls = []
    paths = [[1, 0], [0], [1], [0, 2], [0, 2, 0]]
    tree = build_static_tree(_expand_by_path(calls), paths)
    assert tree.tokens.tolist() == [10, 11, 1022, 1120, 102230]
    assert tree.parents.tolist() == [-1, -1, 0, 1, 2]
    assert calls == [([-1], 2), ([0, 1], 3), ([2], 1)]  # one expansion per depth, k = largest rank + 1


def test_cartesian_paths_and_shapes():
    assert cartesian_paths((2, 1)) == [(0,), (1,), (0, 0), (1, 0)]
    shape = TreeShape.static(cartesian_paths((3, 2, 1)))
    assert (shape.depth, shape.top_k, shape.max_nodes) == (3, 3, 3 + 6 + 6)
    assert TreeShape.chain(3).paths == ((0,), (0, 0), (0, 0, 0))
    assert TreeShape.dynamic(10, 7, 60).max_nodes == 60 and TreeShape.dynamic(2, 3, 60).max_nodes == 10


@pytest.mark.parametrize(
    "text,expected",
    [
        ("3,4,12", TreeShape.dynamic(3, 4, 12)),
        (" [[0],[1],[0,0]] ", TreeShape.static([[0], [1], [0, 0]])),
        ("cartesian:2,1", TreeShape.static([[0], [1], [0, 0], [1, 0]])),
        ("adaptive", AdaptiveTree()),
        ("adaptive:16,4,3", AdaptiveTree(16, 4, 3)),
    ],
)
def test_parse_tree_spec(text, expected):
    assert parse_tree_spec(text) == expected
    assert parse_tree_spec(expected.spec()) == expected


@pytest.mark.parametrize(
    "text,message",
    [
        ("3,4", "needs 3 integers"),
        ("a,b,c", "comma-separated"),
        ("3,0,4", "depth must be an integer >= 1"),
        ("[]", "at least one path"),
        ("[[]]", "must not be empty"),
        ("[[0,0]]", "no parent path"),
        ("[[-1]]", "negative rank"),
        ("[[true]]", "JSON list of rank lists"),
        ("adaptive:0,2,2", "max_nodes"),
        ("tree", "--tree must be"),
    ],
)
def test_bad_specs_are_one_line_errors(text, message):
    with pytest.raises(AdaspecError, match=message) as err:
        parse_tree_spec(text)
    assert len(str(err.value).splitlines()) == 1


def test_clipping_keeps_the_tree_inside_the_room():
    static = TreeShape.static([[0], [1], [0, 0], [1, 0], [0, 0, 0]])
    assert static.clipped(10) is static
    assert static.clipped(3).paths == ((0,), (1,), (0, 0))
    assert static.clipped(0) is None
    dynamic = TreeShape.dynamic(4, 5, 20)
    assert dynamic.clipped(100) is dynamic
    small = dynamic.clipped(6)
    assert small.depth == 5 and small.total_tokens == 6 and small.top_k * (small.depth - 1) <= 6
    assert dynamic.clipped(1) == TreeShape.dynamic(1, 1, 1)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cartesian:1000,1000,1000", "node count of cartesian:1000,1000,1000 is 1,001,000, above the limit of 1,024"),
        ("adaptive:100000,1000,1000", "adaptive tree's max_nodes is 100,000, above the limit of 1,024"),
        ("2,100,3", "tree's depth is 100, above the limit of 64"),
        ("100,2,3", "tree's top_k is 100, above the limit of 64"),
    ],
)
def test_tree_sizes_a_user_types_are_bounded_before_anything_is_built(spec, message):
    with pytest.raises(AdaspecError, match=message):
        parse_tree_spec(spec)
