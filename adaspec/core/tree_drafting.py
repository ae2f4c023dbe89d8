"""Pieces every drafter's `propose_tree` shares (adaspec.decoding.drafter.TreeDrafter).

- `top_children`: a node's top-k children and their draft log-probabilities (at the run's temperature /
  top-p, so the tree's scores are the draft's own sampling distribution; greedy uses temperature 1).
- `TreeRows`: where each tree node fed to a drafter with its own KV cache (a draft LM, an EAGLE head) sits
  in that cache, and which rows each new frontier node may see: the cached prefix, the rows of its own
  ancestors and itself, never its cached siblings or cousins (tree attention in the drafter's own layers).
- `per_depth_expand`: an Expand for drafters whose candidates at depth d do not depend on the parent
  (Medusa heads; MTP modules run along their top-1 chain).
"""

from __future__ import annotations

import torch
from torch import Tensor

from adaspec.core.sampling import Sampling, logits_to_probs
from adaspec.core.tree import Expand, Tree


def top_children(logits: Tensor, k: int, sampling: Sampling) -> tuple[Tensor, Tensor]:
    """(ids [F, k], log-probs [F, k]) of the k most probable tokens of each row of logits [F, V]."""
    k, temperature, top_p = min(k, logits.shape[-1]), sampling.temperature, sampling.top_p
    if top_p >= 1.0 and temperature in (0.0, 1.0):  # the plain softmax: one log_softmax, no probabilities
        values, ids = torch.log_softmax(logits.float(), -1).topk(k, dim=-1)
        return ids, values
    values, ids = logits_to_probs(logits.float(), 1.0 if temperature == 0 else temperature, top_p).topk(k, dim=-1)
    return ids, torch.log(values)


class TreeRows:
    """Cache rows of the tree nodes fed so far, after a `prefix` of rows every node sees.

    Nodes are named by their token path from the root (siblings have distinct tokens), because the
    dynamic builder renumbers the nodes it keeps after the drafter has fed them.
    """

    def __init__(self, prefix: int):
        self.prefix = prefix
        self.slot: dict[tuple[int, ...], int] = {}  # token path -> its row in the drafter's cache

    def visibility(self, tree: Tree, nodes: list[int], cached: int) -> Tensor:
        """[F, cached + F] bool for feeding `nodes` of `tree` after `cached` rows (the prefix and earlier
        tree rows); records the new rows as the nodes' slots."""
        visible = torch.zeros(len(nodes), cached + len(nodes), dtype=torch.bool)
        visible[:, : self.prefix] = True
        paths = _token_paths(tree)
        rows, cols = [], []  # one index_put for every (node, visible tree row) pair
        for row, node in enumerate(nodes):
            path = paths[node]
            seen = [self.slot[path[:d]] for d in range(1, len(path))] + [cached + row]
            rows.extend([row] * len(seen))
            cols.extend(seen)
            self.slot[path] = cached + row
        visible[rows, cols] = True
        return visible

    def continues_chain(self, tree: Tree, nodes: list[int], cached: int) -> bool:
        """True (and the node's slot recorded) when `nodes` is one node whose proper ancestors are exactly
        the tree rows fed so far, right after them: plain causal attention over the cache is then its tree
        attention, and the drafter can feed it as a chain step (no mask, default positions)."""
        if len(nodes) != 1 or cached != self.prefix + len(self.slot):
            return False
        path = _token_paths(tree)[nodes[0]]
        if len(self.slot) != len(path) - 1 or any(path[:d] not in self.slot for d in range(1, len(path))):
            return False
        self.slot[path] = cached
        return True

    def fed_prefix(self, tree: Tree, path: list[int]) -> list[int]:
        """The cache rows of the accepted `path`'s nodes that were fed, from its start (leaves never are)."""
        tokens = tree.tokens[path].tolist() if path else []
        rows = []
        for d in range(1, len(tokens) + 1):
            row = self.slot.get(tuple(tokens[:d]))
            if row is None:
                break
            rows.append(row)
        return rows


def _token_paths(tree: Tree) -> list[tuple[int, ...]]:
    tokens: list[int] = tree.tokens.tolist()
    out: list[tuple[int, ...]] = []
    for i, p in enumerate(tree.parents.tolist()):
        out.append((out[p] if p >= 0 else ()) + (tokens[i],))
    return out


def per_depth_expand(logits: list[Tensor], sampling: Sampling) -> Expand:
    """Expand that gives every node at depth d-1 the top-k of logits[d-1] [V] as its children."""
    cache: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def expand(nodes: Tensor, tree: Tree, k: int) -> tuple[Tensor, Tensor]:
        first = int(nodes[0])
        d = 0 if first < 0 else int(tree.depths[first])
        if (d, k) not in cache:
            cache[(d, k)] = top_children(logits[d][None], k, sampling)
        ids, logp = cache[(d, k)]
        return ids.expand(nodes.shape[0], -1), logp.expand(nodes.shape[0], -1)

    return expand
