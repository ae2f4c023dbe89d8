"""Token trees: static and dynamic builders, attention mask and position ids."""

from __future__ import annotations

import pytest
import torch

from adaspec.core.tree import Tree, build_dynamic_tree
from adaspec.errors import AdaspecError

#        root
#       /  |  \
#      0   1   2        depth 1 (node ids 0, 1, 2)
#     / \  |
#    3   4 5            depth 2
#    |
#    6                  depth 3
PATHS = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0]]
CANDIDATES = torch.tensor([[10, 11, 12], [20, 21, 22], [30, 31, 32]])


def test_from_paths_orders_nodes_by_depth_then_rank():
    tree = Tree.from_paths(list(reversed(PATHS)), CANDIDATES)
    assert tree.tokens.tolist() == [10, 11, 12, 20, 21, 20, 30]
    assert tree.parents.tolist() == [-1, -1, -1, 0, 0, 1, 3]
    assert tree.depths.tolist() == [1, 1, 1, 2, 2, 2, 3]
    assert tree.children() == [[0, 1, 2], [3, 4], [5], [], [6], [], [], []]
    assert tree.ancestors()[6] == [0, 3, 6]
    assert tree.leaves() == [2, 4, 5, 6]
    assert tree.depth == 3


def test_mask_and_positions():
    tree = Tree.from_paths(PATHS, CANDIDATES)
    mask = tree.attention_mask()
    expected = torch.zeros(8, 8, dtype=torch.bool)
    for row, seen in enumerate([[0], [0, 1], [0, 2], [0, 3], [0, 1, 4], [0, 1, 5], [0, 2, 6], [0, 1, 4, 7]]):
        expected[row, seen] = True
    assert torch.equal(mask, expected)
    assert tree.position_ids(5).tolist() == [5, 6, 6, 6, 7, 7, 7, 8]


def test_chain_is_a_tree_of_width_one():
    chain = Tree.chain(torch.tensor([4, 5, 6]))
    assert chain.parents.tolist() == [-1, 0, 1] and chain.is_chain
    assert not Tree.from_paths(PATHS, CANDIDATES).is_chain
    assert torch.equal(chain.attention_mask(), torch.ones(4, 4, dtype=torch.bool).tril())
    assert chain.position_ids(2).tolist() == [2, 3, 4, 5]


@pytest.mark.parametrize(
    "paths, message",
    [
        ([[0, 0]], "no parent path"),
        ([[0], [3]], "beyond"),
        ([[]], "empty"),
    ],
)
def test_from_paths_rejects_bad_paths(paths, message):
    with pytest.raises(AdaspecError, match=message):
        Tree.from_paths(paths, CANDIDATES)


def test_tree_rejects_nodes_before_their_parent():
    with pytest.raises(AdaspecError, match="after their parent"):
        Tree(torch.tensor([1, 2]), torch.tensor([1, -1]), torch.tensor([2, 1]))
    with pytest.raises(AdaspecError, match="depth"):
        Tree(torch.tensor([1, 2]), torch.tensor([-1, 0]), torch.tensor([1, 3]))


def _draft_logp(path: tuple[int, ...], vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash(path) % (2**31))
    return torch.log_softmax(2 * torch.randn(vocab, generator=g), -1)


def _expand_from(vocab: int, top_k: int, calls: list):
    def expand(nodes: torch.Tensor, tree: Tree, k: int):
        paths = tree.ancestors()
        rows = [_draft_logp(tuple(tree.tokens[paths[i]].tolist()) if i >= 0 else (), vocab) for i in nodes.tolist()]
        logp, tokens = torch.stack(rows).topk(top_k, dim=-1)
        calls.append(nodes.numel())
        return tokens, logp

    return expand


def _reference_dynamic(vocab: int, top_k: int, depth: int, total: int) -> set[tuple[int, ...]]:
    """EAGLE-2 by enumeration: token paths of the kept nodes."""
    pool: dict[tuple[int, ...], float] = {}
    frontier = [((), 0.0)]
    for _ in range(depth):
        layer = []
        for path, score in frontier:
            logp, tokens = _draft_logp(path, vocab).topk(top_k)
            layer += [(path + (t,), score + lp) for t, lp in zip(tokens.tolist(), logp.tolist())]
        pool.update(layer)
        frontier = sorted(layer, key=lambda e: -e[1])[:top_k]
    return set(sorted(pool, key=lambda p: -pool[p])[:total])


@pytest.mark.parametrize("top_k, depth, total", [(3, 3, 8), (4, 4, 30), (2, 5, 100), (10, 7, 60)])
def test_dynamic_tree_matches_eagle2_by_enumeration(top_k, depth, total):
    vocab, calls = 40, []
    tree = build_dynamic_tree(_expand_from(vocab, top_k, calls), top_k=top_k, depth=depth, total_tokens=total)
    paths = {tuple(tree.tokens[a].tolist()) for a in tree.ancestors()}
    assert paths == _reference_dynamic(vocab, top_k, depth, total)
    assert calls == [1] + [top_k] * (depth - 1)  # the root, then a top_k frontier per depth
    assert tree.size == min(total, top_k + (depth - 1) * top_k * top_k)
    for kids in tree.children():  # siblings in draft order, most probable first
        if kids:
            path = tree.ancestors()[tree.parents[kids[0]]] if tree.parents[kids[0]] >= 0 else []
            logp = _draft_logp(tuple(tree.tokens[path].tolist()), vocab)
            assert logp[tree.tokens[kids]].diff().le(0).all()


def test_dynamic_tree_rejects_bad_settings():
    with pytest.raises(AdaspecError, match="depth"):
        build_dynamic_tree(_expand_from(8, 2, []), top_k=2, depth=0)
    with pytest.raises(AdaspecError, match="expand returned"):
        build_dynamic_tree(_expand_from(8, 3, []), top_k=2, depth=2)


def test_mask_of_a_large_dynamic_tree_matches_its_ancestor_lists():
    tree = build_dynamic_tree(_expand_from(30, 4, []), top_k=4, depth=6, total_tokens=40)
    expected = torch.zeros(tree.size + 1, tree.size + 1, dtype=torch.bool)
    expected[:, 0] = True
    for i, path in enumerate(tree.ancestors()):
        expected[i + 1, [j + 1 for j in path]] = True
    assert torch.equal(tree.attention_mask(), expected)
    assert tree.depth == 6
