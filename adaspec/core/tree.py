"""Token trees for speculative decoding: several candidate continuations verified in one target forward.

A `Tree` hangs below the root, the last accepted token seq[n-1]. Node i (0-based) has a token, a parent
(-1 = the root) and a depth (1 = child of the root). Nodes are in topological order (a parent comes
before its children) and the children of one node are in the order verification tries them (most
probable first). Index 0 of the [N+1]-sized arrays below (mask, target rows) is the root, index i+1 is
node i.

Builders:
- `Tree.from_paths`: a static sparse tree (Medusa): each path is a list of top-k ranks, one per depth, e.g.
  [[0], [0, 0], [1], [0, 1]]; node [r_1..r_d] carries candidates[d-1][r_d], the r_d-th candidate of the
  depth-d head (Medusa heads propose per depth, independently of the parent).
- `build_static_tree`: the same rank paths for any drafter, through `expand`: node [r_1..r_d] carries the
  r_d-th most probable child the drafter gives its parent [r_1..r_{d-1}] (for Medusa heads, whose children
  do not depend on the parent, this is exactly `from_paths`).
- `build_dynamic_tree`: EAGLE-2's dynamic tree (Li et al. 2024): expand the current frontier's top-k
  children, keep the top-k of them by cumulative draft log-probability as the next frontier, stop at a
  depth, then keep the best `total_tokens` nodes overall. The reference defaults (top-k 10, depth 7, 60
  tokens: EAGLE's eagle/model/ea_model.py `from_pretrained`) are sized for a GPU, where verifying 60
  tokens costs about as much as verifying one; on a CPU the cost grows with the number of tokens, and the
  CPU default (adaspec.core.tree_shape.CPU_DEFAULT) is the one the tree benchmark measured fastest.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from adaspec.errors import AdaspecError

# EAGLE's reference settings (GPU); see the module docstring for the CPU default.
EAGLE_TOP_K, EAGLE_DEPTH, EAGLE_TOTAL_TOKENS = 10, 7, 60

# expand(nodes, tree, k) -> (tokens [F, k] long, log-probs [F, k]): the draft's top-k children of each
# frontier node (-1 = the root), most probable first; `tree` holds every node created so far.
Expand = Callable[[torch.Tensor, "Tree", int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Tree:
    tokens: torch.Tensor  # [N] long
    parents: torch.Tensor  # [N] long, -1 = child of the root
    depths: torch.Tensor  # [N] long, 1 = child of the root

    def __post_init__(self) -> None:
        n = self.tokens.shape[0]
        if self.tokens.dim() != 1 or self.parents.shape != (n,) or self.depths.shape != (n,):
            raise AdaspecError(
                f"tree tensors must all be 1-D of one length, got tokens {tuple(self.tokens.shape)}"
                f", parents {tuple(self.parents.shape)}, depths {tuple(self.depths.shape)}"
            )
        parents, depths = self.parents.tolist(), self.depths.tolist()
        for i, (p, d) in enumerate(zip(parents, depths)):
            if not -1 <= p < i:
                raise AdaspecError(f"tree node {i} has parent {p}: nodes must come after their parent")
            if d != (1 if p < 0 else depths[p] + 1):
                raise AdaspecError(
                    f"tree node {i} has depth {d}, but its parent {p} is at depth {0 if p < 0 else depths[p]}"
                )

    @classmethod
    def trusted(
        cls, tokens: torch.Tensor, parents: torch.Tensor, depths: torch.Tensor, mask: torch.Tensor | None = None
    ) -> Tree:
        """A tree from builders whose output is valid by construction: no checks (they cost Python loops
        over the nodes every step); `mask`, when known, is what attention_mask() returns."""
        tree = object.__new__(cls)
        for name, value in (("tokens", tokens), ("parents", parents), ("depths", depths)):
            object.__setattr__(tree, name, value)
        if mask is not None:
            object.__setattr__(tree, "_mask", mask)
        return tree

    @property
    def size(self) -> int:
        return self.tokens.shape[0]

    @property
    def is_chain(self) -> bool:
        """Width 1 everywhere: node i's parent is node i-1 (the empty tree included)."""
        return self.parents.tolist() == list(range(-1, self.size - 1))

    @property
    def depth(self) -> int:
        return int(self.depths.max()) if self.size else 0

    @classmethod
    def chain(cls, tokens: torch.Tensor) -> Tree:
        """A chain of proposals: the tree of width 1."""
        n = tokens.shape[0]
        return cls(tokens.long(), torch.arange(-1, n - 1), torch.arange(1, n + 1))

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[int]], candidates: torch.Tensor) -> Tree:
        """A static tree from Medusa-style rank paths and per-depth candidates [D, k] (token ids).

        Every prefix of a path must itself be a path. Nodes are ordered by (depth, path), so a parent
        comes first and siblings are tried by rank.
        """
        paths = check_paths(paths)
        index = {p: i for i, p in enumerate(paths)}
        for p in paths:
            if len(p) > candidates.shape[0] or max(p) >= candidates.shape[1]:
                raise AdaspecError(
                    f"tree path {list(p)} needs candidates beyond the "
                    f"{candidates.shape[0]} x {candidates.shape[1]} given"
                )
        depths = [len(p) for p in paths]
        parents = [index[p[:-1]] if len(p) > 1 else -1 for p in paths]
        device = candidates.device
        tokens = candidates[torch.tensor(depths) - 1, torch.tensor([p[-1] for p in paths])].long()
        return cls(
            tokens.to(device),
            torch.tensor(parents, dtype=torch.long, device=device),
            torch.tensor(depths, dtype=torch.long, device=device),
        )

    def ancestors(self) -> list[list[int]]:
        """For each node, the node ids on its root-to-node path, itself last."""
        out: list[list[int]] = []
        for i, p in enumerate(self.parents.tolist()):
            out.append((out[p] if p >= 0 else []) + [i])
        return out

    def children(self) -> list[list[int]]:
        """children()[0] = the root's children, children()[i+1] = node i's, in verification order."""
        out: list[list[int]] = [[] for _ in range(self.size + 1)]
        for i, p in enumerate(self.parents.tolist()):
            out[p + 1].append(i)
        return out

    def leaves(self) -> list[int]:
        has_child = set(self.parents.tolist())
        return [i for i in range(self.size) if i not in has_child]

    def attention_mask(self) -> torch.Tensor:
        """[N+1, N+1] bool, root first: entry (a, b) is True when b is a itself or one of its ancestors."""
        known = self.__dict__.get("_mask")
        if known is None:
            known = self._attention_mask()
            object.__setattr__(self, "_mask", known)
        return known

    def _attention_mask(self) -> torch.Tensor:
        n = self.size
        mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)
        mask[:, 0] = True
        rows: list[int] = []
        cols: list[int] = []
        for i, path in enumerate(self.ancestors()):  # one index_put for every (node, ancestor) pair
            rows.extend([i + 1] * len(path))
            cols.extend(j + 1 for j in path)
        if rows:
            mask[rows, cols] = True
        return mask.to(self.tokens.device)

    def position_ids(self, prefix_length: int) -> torch.Tensor:
        """[N+1] positions of root and nodes when the cache holds `prefix_length` tokens before the root."""
        depths = torch.cat([self.depths.new_zeros(1), self.depths])
        return depths + prefix_length


def build_dynamic_tree(
    expand: Expand, top_k: int = EAGLE_TOP_K, depth: int = EAGLE_DEPTH, total_tokens: int = EAGLE_TOTAL_TOKENS
) -> Tree:
    """EAGLE-2's dynamic tree: `depth` rounds of expansion of a top-k frontier, then the best nodes.

    Round 1 expands the root into its top_k children, which form the frontier. Each later round expands
    every frontier node into its top_k children and keeps the top_k of those k*k candidates, by
    cumulative draft log-probability (the sum along the path), as the next frontier. All candidates ever
    created are then ranked by cumulative log-probability and the best `total_tokens` kept. A child's
    score never exceeds its parent's (log-probabilities are <= 0) and ties are broken towards lower depth
    and earlier creation, so the kept set contains every kept node's ancestors. Kept nodes stay in
    creation order: depth by depth, siblings by draft probability.
    """
    for name, value in (("top_k", top_k), ("depth", depth), ("total_tokens", total_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AdaspecError(f"tree {name} must be an integer >= 1, got {value!r}")
    # Python lists: the tree has tens of nodes, and a torch op per step of the bookkeeping costs more
    # than the arithmetic at this scale
    tokens: list[int] = []
    parents: list[int] = []
    depths: list[int] = []
    scores: list[float] = []
    frontier, frontier_scores = [-1], [0.0]
    device = None
    for d in range(1, depth + 1):
        partial = _tree_of_lists(tokens, parents, depths, device)
        child_tokens, child_logp = expand(torch.tensor(frontier, dtype=torch.long), partial, top_k)
        k = child_tokens.shape[1]
        if child_tokens.shape != child_logp.shape or child_tokens.shape[0] != len(frontier) or k > top_k:
            raise AdaspecError(
                f"tree expand returned tokens {tuple(child_tokens.shape)} and log-probs "
                f"{tuple(child_logp.shape)} for {len(frontier)} nodes (top_k {top_k})"
            )
        device = child_tokens.device
        base = len(tokens)
        for node, score, row_tokens, row_logp in zip(
            frontier, frontier_scores, child_tokens.tolist(), child_logp.float().tolist()
        ):
            for token, logp in zip(row_tokens, row_logp):
                tokens.append(token)
                parents.append(node)
                depths.append(d)
                scores.append(score + min(logp, 0.0))
        # the next frontier: this depth's top_k by score (sorted() is stable: ties go to earlier nodes),
        # kept in creation order
        frontier = sorted(sorted(range(base, len(tokens)), key=lambda i: -scores[i])[:top_k])
        frontier_scores = [scores[i] for i in frontier]
    # Rank by (score desc, depth asc, creation asc): a stable sort on score of the creation-ordered nodes
    # (which are depth-major) gives exactly that, so ancestors precede descendants in the ranking.
    keep = sorted(sorted(range(len(tokens)), key=lambda i: -scores[i])[:total_tokens])
    new_index = {old: new for new, old in enumerate(keep)}
    return _tree_of_lists(
        [tokens[i] for i in keep],
        [new_index[parents[i]] if parents[i] >= 0 else -1 for i in keep],
        [depths[i] for i in keep],
        device,
    )


def _tree_of_lists(tokens: list[int], parents: list[int], depths: list[int], device: torch.device | None) -> Tree:
    def t(values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return Tree.trusted(t(tokens), t(parents), t(depths))


def check_paths(paths: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Rank paths sorted by (depth, ranks), duplicates dropped; AdaspecError unless they form a tree."""
    out = sorted({tuple(int(r) for r in p) for p in paths}, key=lambda p: (len(p), p))
    if not out:
        raise AdaspecError("a static tree needs at least one path")
    known = set(out)
    for p in out:
        if not p:
            raise AdaspecError("tree paths must not be empty (the root is implicit)")
        if min(p) < 0:
            raise AdaspecError(f"tree path {list(p)} has a negative rank")
        if len(p) > 1 and p[:-1] not in known:
            raise AdaspecError(f"tree path {list(p)} has no parent path {list(p[:-1])}")
    return out


def build_static_tree(expand: Expand, paths: Sequence[Sequence[int]]) -> Tree:
    """The tree of rank paths (see `Tree.from_paths`) with each node's token from its parent's expansion.

    One expansion per depth, of the nodes that have children in `paths`, with k = the largest child rank
    asked at that depth + 1. Nodes come out in `from_paths` order: by depth, then by path.
    """
    skeleton = _skeleton(tuple(tuple(int(r) for r in p) for p in paths))
    tokens: list[int] = []
    device = None
    for owners, k, picks in skeleton.levels:
        partial = Tree.trusted(
            torch.tensor(tokens, dtype=torch.long, device=device),
            skeleton.parents[: len(tokens)].to(device),
            skeleton.depths[: len(tokens)].to(device),
        )
        child_tokens, _ = expand(owners, partial, k)
        if child_tokens.shape[0] != owners.shape[0] or child_tokens.shape[1] < k:
            raise AdaspecError(
                f"tree expand returned tokens {tuple(child_tokens.shape)} for {owners.shape[0]} nodes (k {k})"
            )
        device = child_tokens.device
        table = child_tokens.tolist()
        tokens.extend(table[row][rank] for row, rank in picks)
    to = (lambda x: x) if device is None or device == skeleton.parents.device else (lambda x: x.to(device))
    return Tree.trusted(
        torch.tensor(tokens, dtype=torch.long, device=device),
        to(skeleton.parents),
        to(skeleton.depths),
        to(skeleton.mask),
    )


@dataclass(frozen=True)
class _Skeleton:
    parents: torch.Tensor
    depths: torch.Tensor
    mask: torch.Tensor
    levels: list[tuple[torch.Tensor, int, list[tuple[int, int]]]]  # (nodes to expand, k, (row, rank) per new node)


@functools.lru_cache(maxsize=64)
def _skeleton(paths: tuple[tuple[int, ...], ...]) -> _Skeleton:
    """What a static tree's shape fixes, computed once per shape: structure, mask, expansion plan."""
    ordered = check_paths(paths)
    index = {p: i for i, p in enumerate(ordered)}
    levels = []
    for d in range(1, len(ordered[-1]) + 1):
        level = [p for p in ordered if len(p) == d]
        owners = sorted({p[:-1] for p in level})
        rows = {o: r for r, o in enumerate(owners)}
        nodes = torch.tensor([index[o] if o else -1 for o in owners], dtype=torch.long)
        levels.append((nodes, max(p[-1] for p in level) + 1, [(rows[p[:-1]], p[-1]) for p in level]))
    tree = Tree(
        torch.zeros(len(ordered), dtype=torch.long),
        torch.tensor([index[p[:-1]] if len(p) > 1 else -1 for p in ordered], dtype=torch.long),
        torch.tensor([len(p) for p in ordered], dtype=torch.long),
    )
    return _Skeleton(tree.parents, tree.depths, tree.attention_mask(), levels)
