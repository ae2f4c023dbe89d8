"""Lossless verification of a token tree: which root-to-node path is accepted, and what to sample next.

Inputs, with N nodes and the root first (see adaspec.core.tree):
- target_probs [N+1, V]: row 0 the target's distribution after the root, row i+1 after node i
  (temperature / top-p applied, as adaspec.core.verify.verify_chain takes them);
- draft_probs [N, V] or None: row i the distribution node i's token was drawn from, conditional on its
  parent's path and on its earlier siblings; None when the children are chosen deterministically (top-k);
- uniforms [N] U[0, 1) or None: uniforms[i] decides node i when it is tried; None = greedy.
Output: (accepted node ids [k] long, root-to-node order; distribution [V] to sample the token after them).

## The rule (one round per tried child), and why it is lossless
At an accepted node u (first the root) with target distribution p = p(. | path to u), its children
c_1, c_2, ... are tried in order. Round j has a current target p_j (p_1 = p) and child c_j with token
x_j ~ q_j. Accept c_j with probability min(1, p_j(x_j) / q_j(x_j)); then continue at c_j. Otherwise
p_{j+1} = norm(max(0, p_j - q_j)) and go to the next child; after the last child is rejected, sample the
next token from p_{J+1}. Claim: from round j on, the token emitted at u (an accepted child's token or
the final sample) has distribution p_j; for j = 1 that is p. Round j emits y by acceptance with probability
sum_x q_j(x) [x = y] min(1, p_j(y)/q_j(y)) = min(p_j(y), q_j(y)), and rejects with probability
beta = 1 - sum_y min(p_j(y), q_j(y)) = sum_y max(0, p_j(y) - q_j(y)); if every later round emits exactly
p_{j+1} = max(0, p_j - q_j) / beta, whatever x_j was, the total is min(p_j, q_j) + max(0, p_j - q_j) = p_j.
The last "round" (sampling from p_{J+1}) emits p_{J+1} exactly, so by induction backwards over j round 1
emits p. This needs x_{j+1} to be distributed as q_{j+1} given everything before (earlier siblings and
coins), which is what "the distribution node i was drawn from" means. Descending into the accepted
child then repeats the argument with the target's next conditional, so the whole output follows the
target exactly (the deeper nodes only decide how many tokens one forward yields, not which).

Three ways of choosing the children, one rule:
- Deterministic candidates (top-k of a draft, Medusa heads, static trees): q_j is a point mass on x_j,
  so acceptance has probability min(1, p_j(x_j)) = p_j(x_j) and max(0, p_j - q_j) is p_j with x_j
  removed. Hence p_j = p with the already rejected siblings removed and renormalised,
  p_j(x_j) = p(x_j) / (1 - sum_{i<j} p(x_i)), so c_j is accepted iff u_j (1 - sum_{i<j} p(x_i)) < p(x_j)
  (one gather of p at every node's token, then scalar work); after all J are rejected, sample from p with
  every child removed, renormalised. (Top-k siblings are distinct; a repeated token, which a static
  tree with repeated candidates could have, is rejected outright: its mass is already removed.)
  Using the draft's softmax q as q_j here (the chain rule min(1, p/q)) is wrong: the children were
  not drawn from q, and the output is biased (the tests show a chi-square test rejecting it).
- Children drawn i.i.d. from the draft's q at the parent (SpecInfer's multi-draft recursive rejection
  sampling): q_j = q for every j, duplicates allowed.
- Children drawn from q without replacement: q_j = q with x_1..x_{j-1} removed, renormalised.
A chain (width 1) with q_j the draft's distribution is exactly the chain rule of verify_chain: accept
x_j iff u_j q_j(x_j) < p_j(x_j), residual norm(max(0, p_k - q_k)), and p_k itself after all are accepted.
Greedy (uniforms None): follow the child whose token is the target's argmax, then return the target's
row there (one-hot when greedy), as verify_chain does. verify_chain treats draft_probs None as greedy
while verify_tree with uniforms given treats it as deterministic candidates: on one-hot target rows the
two coincide (the argmax child is accepted surely, any other surely rejected).
"""

from __future__ import annotations

import torch

from adaspec.core.tree import Tree
from adaspec.errors import AdaspecError


def verify_tree(
    target_probs: torch.Tensor,
    tree: Tree,
    draft_probs: torch.Tensor | None = None,
    uniforms: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(accepted node ids [k] long, distribution [V] of the correction/bonus token); see the module doc."""
    n = tree.size
    if target_probs.dim() != 2 or target_probs.shape[0] != n + 1:
        raise AdaspecError(
            f"target_probs must be [N+1, V] = [{n + 1}, V] for a tree of {n} nodes, got {tuple(target_probs.shape)}"
        )
    if uniforms is not None and uniforms.shape != (n,):
        raise AdaspecError(f"uniforms must be [{n}] (one per node), got {tuple(uniforms.shape)}")
    if draft_probs is not None and draft_probs.shape != (n, target_probs.shape[1]):
        raise AdaspecError(f"draft_probs must be [{n}, {target_probs.shape[1]}], got {tuple(draft_probs.shape)}")
    children = tree.children()
    tokens = tree.tokens.tolist()
    if uniforms is None:
        path, node = _greedy(target_probs, children, tokens)
        return _ids(path, target_probs), target_probs[node + 1]
    if draft_probs is None:
        return _deterministic(target_probs, tree, children, tokens, uniforms)
    return _sampled(target_probs, children, tokens, draft_probs, uniforms)


def _ids(path: list[int], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(path, dtype=torch.long, device=like.device)


def _greedy(target_probs: torch.Tensor, children: list[list[int]], tokens: list[int]) -> tuple[list[int], int]:
    best = target_probs.argmax(-1).tolist()
    path: list[int] = []
    node = -1
    while True:
        nxt = next((c for c in children[node + 1] if tokens[c] == best[node + 1]), None)
        if nxt is None:
            return path, node
        path.append(nxt)
        node = nxt


def _deterministic(
    target_probs: torch.Tensor, tree: Tree, children: list[list[int]], tokens: list[int], uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # p(x_c) at c's parent for every node c, in one gather; the walk is then scalar work on the host.
    dev = target_probs.device
    own = target_probs[tree.parents.to(dev) + 1, tree.tokens.to(dev)].tolist()
    u = uniforms.tolist()
    path: list[int] = []
    node = -1
    while True:
        removed, gone = 0.0, set()  # target mass and tokens of the siblings rejected so far at this node
        accepted = None
        for c in children[node + 1]:
            if tokens[c] in gone:  # a repeated candidate has probability 0 once its first copy is rejected
                continue
            if own[c] > 0 and u[c] * max(1.0 - removed, 0.0) < own[c]:  # rounding can push removed past 1
                accepted = c
                break
            removed += own[c]
            gone.add(tokens[c])
        if accepted is None:
            break
        path.append(accepted)
        node = accepted
    row = target_probs[node + 1]
    tried = [tokens[c] for c in children[node + 1]]
    if tried:
        row = row.clone()
        row[tried] = 0.0
    return _ids(path, target_probs), _normalised(row, target_probs[node + 1])


def _sampled(
    target_probs: torch.Tensor,
    children: list[list[int]],
    tokens: list[int],
    draft_probs: torch.Tensor,
    uniforms: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    path: list[int] = []
    node = -1
    while True:
        p = target_probs[node + 1]
        if not children[node + 1]:  # a leaf: the bonus token, normalised as the chain rule does it
            return _ids(path, target_probs), _normalised(p, p)
        accepted = None
        for c in children[node + 1]:
            q, x = draft_probs[c], tokens[c]
            # the chain rule's test, u q(x) < p(x), in the same float arithmetic, on the current residual
            if bool(uniforms[c] * q[x] < p[x]):
                accepted = c
                break
            p = _normalised((p - q).clamp_min(0.0), p)
        if accepted is None:
            return _ids(path, target_probs), p
        path.append(accepted)
        node = accepted


def _normalised(row: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    # A residual with no mass has probability zero of being reached (some child would have been accepted
    # surely); it can still be reached through rounding, and then the row it came from is the best stand-in.
    mass = row.sum()
    return row / mass if float(mass) > 0 else fallback
