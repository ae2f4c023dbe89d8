"""The adaptive tree size: per step, the static tree with the most expected tokens per unit of time.

Model. A drafter's candidates are ranked (its top-k), so a node is a rank path [r_1..r_d]. Whatever the
tree, the target accepts the rank-r child of an accepted node at depth d-1 with a probability a[d][r]
that does not depend on which other nodes are in the tree: under greedy decoding the child is accepted iff
its token is the target's argmax; under the deterministic-candidates rule (adaspec.core.tree_verify)
child j is accepted with probability p(x_j) in total, whatever the siblings tried before it. So

    E[tokens per step] = 1 + sum over nodes [r_1..r_d] of a[1][r_1] * ... * a[d][r_d]

(the 1 is the bonus/correction token), and a step costs, in target forwards of one token,

    cost = draft_cost * sum over depths d of V(F_d) + V(nodes + 1) + step_cost

where V(t) is the measured cost of one target forward over t tokens (verify_cost[t - 1]), F_d the nodes
the drafter feeds to expand depth d (the root for d = 1, then the depth-(d-1) nodes with children), so a
draft forward over F tokens is taken to grow as the target's does, and `step_cost` is the loop's own
work. A chain of γ costs γ * draft_cost + V(γ + 1) + step_cost. For a fixed size the best tree holds the
paths with the largest products, which is prefix-closed because every factor is <= 1; `best_tree` grows
it greedily (a heap of candidate paths: each added path offers its first child and its next sibling, so
siblings come in rank order) once per depth bound and keeps the prefix with the best E / cost. This is
Sequoia's tree construction (Chen et al. 2024) with per-depth acceptance and CPU costs; max_width = 1
makes it the choice of γ.

`TreeController` keeps a[d][r] from the run (exponentially decayed counts, with an optimistic prior so
that ranks not tried yet get tried), draft_cost as the run's measured draft time over its draft work
(sum of V(F_d)) and step_cost as its measured time outside the drafter and the target forward, and
re-plans every few steps; it is plain Python (a few list operations per step), not torch.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from adaspec.core.tree import Tree
from adaspec.core.tree_shape import AdaptiveTree, TreeShape
from adaspec.errors import AdaspecError

Paths = tuple[tuple[int, ...], ...]


def best_tree(
    acceptance: Sequence[Sequence[float]],
    verify_cost: Sequence[float],
    draft_cost: float,
    step: float = 0.0,
    max_nodes: int | None = None,
    allow_empty: bool = True,
) -> tuple[Paths, float]:
    """(rank paths, expected tokens per unit cost) of the best tree (see the module docstring).

    acceptance[d][r]: probability in [0, 1] that the rank-r child of an accepted depth-d node (d = 0: the
    root) is accepted; its shape [depth bound, width bound] bounds the tree. verify_cost[i]: cost of one
    target forward over i + 1 tokens relative to one token (verify_cost[0] = 1 usually); its length
    bounds the nodes, as does max_nodes. Ties go to the smaller tree. Without `allow_empty` the best tree
    of at least one node (when drafting would not pay, the least bad).
    """
    depth_max, width = len(acceptance), len(acceptance[0]) if acceptance else 0
    if depth_max < 1 or width < 1 or any(len(row) != width for row in acceptance):
        raise AdaspecError("acceptance must be a non-empty [depth, width] table")
    if any(not 0.0 <= a <= 1.0 for row in acceptance for a in row):
        raise AdaspecError("acceptance probabilities must be in [0, 1]")
    if draft_cost < 0 or step < 0 or any(c <= 0 for c in verify_cost):
        raise AdaspecError("costs must be positive (draft and step costs >= 0)")
    limit = len(verify_cost) - 1 if max_nodes is None else min(max_nodes, len(verify_cost) - 1)
    best: tuple[Paths, float] = ((), 1.0 / (verify_cost[0] + step) if allow_empty else -1.0)
    for depth_bound in range(1, depth_max + 1):
        heap: list[tuple[float, tuple[int, ...], float]] = [
            (-acceptance[0][0], (0,), 1.0)
        ]  # (-probability of the path, path, its parent's probability)
        chosen: list[tuple[int, ...]] = []
        owners: list[set[tuple[int, ...]]] = [set() for _ in range(depth_bound)]
        gain, draft_work = 1.0, 0.0
        while heap and len(chosen) < limit:
            negative, path, parent = heapq.heappop(heap)
            chosen.append(path)
            gain -= negative
            level = owners[len(path) - 1]
            if path[:-1] not in level:  # one more node fed to expand this depth
                draft_work += verify_cost[len(level)] - (verify_cost[len(level) - 1] if level else 0.0)
                level.add(path[:-1])
            value = gain / (draft_cost * draft_work + verify_cost[len(chosen)] + step)
            if value > best[1] + 1e-12 * abs(best[1]):
                best = (tuple(chosen), value)
            d, r = len(path) - 1, path[-1]
            if r + 1 < width:
                heapq.heappush(heap, (-parent * acceptance[d][r + 1], path[:-1] + (r + 1,), parent))
            if len(path) < depth_bound:
                heapq.heappush(heap, (negative * acceptance[d + 1][0], path + (0,), -negative))
    return best


def interpolate_costs(measured: dict[int, float], nodes: int) -> list[float]:
    """verify_cost[i] for i = 0..nodes from costs measured at some token counts (tokens = i + 1): made
    non-decreasing first (pool adjacent violators: more tokens never cost less, so a dip is noise), then
    linear in between and flat past the last one measured."""
    points = _monotone(sorted(measured.items()))
    out = []
    for i in range(nodes + 1):
        t = i + 1
        lower = max((p for p in points if p[0] <= t), default=points[0])
        upper = min((p for p in points if p[0] >= t), default=points[-1])
        if upper[0] == lower[0]:
            out.append(lower[1])
        else:
            w = (t - lower[0]) / (upper[0] - lower[0])
            out.append(lower[1] + w * (upper[1] - lower[1]))
    return out


def _monotone(points: list[tuple[int, float]]) -> list[tuple[int, float]]:
    """The least-squares non-decreasing fit of the values (pool adjacent violators), at the same sizes."""
    blocks: list[list[float]] = []  # [sum, count]
    for _, value in points:
        blocks.append([value, 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    values = [b[0] / b[1] for b in blocks for _ in range(int(b[1]))]
    return [(size, v) for (size, _), v in zip(points, values)]


class TreeController:
    """Running acceptance per (depth, rank) and measured costs; `shape()` is the tree for the next step.

    `verify_cost` (measured once, see tree_generate.measure_verify_costs) is relative to a target forward
    of one token taking `target_1_s` seconds; draft and step costs come from the run's own timings
    (`update`), `draft_cost` until the first step with a tree. Acceptance counts decay by `decay` per step
    (applied in bulk at each re-plan), starting from a prior of `prior` * 0.5^rank with weight
    `prior_weight`. Every `explore_every`-th plan drafts a tree even when none is expected to pay.
    """

    def __init__(
        self,
        options: AdaptiveTree,
        verify_cost: Sequence[float],
        target_1_s: float,
        draft_cost: float = 0.3,
        replan_every: int = 8,
        decay: float = 0.98,
        prior: float = 0.8,
        prior_weight: float = 2.0,
        max_depth: int | None = None,
        explore_every: int = 4,
    ):
        depth = options.max_depth if max_depth is None else min(options.max_depth, max_depth)
        self.options, self.target_1_s = options, target_1_s
        self.verify_cost = list(verify_cost[: options.max_nodes + 1])
        self.draft_cost, self.step = draft_cost, 0.0
        self.replan_every, self.decay = replan_every, decay
        width = options.max_width
        self.hits = [[prior * 0.5**r * prior_weight for r in range(width)] for _ in range(depth)]
        self.trials = [[prior_weight] * width for _ in range(depth)]
        self._new_hits = [[0.0] * width for _ in range(depth)]
        self._new_trials = [[0.0] * width for _ in range(depth)]
        self.steps, self.replans, self.explore_every = 0, 0, explore_every
        self._shape: TreeShape | None = None
        self.draft_s = self.draft_work = self.other_s = 0.0

    @property
    def max_depth(self) -> int:
        return len(self.trials)

    @property
    def acceptance(self) -> list[list[float]]:
        return [
            [min(max(h / t, 0.0), 1.0) if t > 0 else 0.0 for h, t in zip(hr, tr)]
            for hr, tr in zip(self.hits, self.trials)
        ]

    def shape(self) -> TreeShape | None:
        """The tree for the next step; None when drafting is expected not to pay (the target alone steps)."""
        if self.steps % self.replan_every == 0:
            keep = self.decay**self.replan_every if self.steps else 1.0
            for total, new in ((self.hits, self._new_hits), (self.trials, self._new_trials)):
                for row, add in zip(total, new):
                    for r in range(len(row)):
                        row[r] = row[r] * keep + add[r]
                        add[r] = 0.0
            self.replans += 1
            # every `explore_every`-th plan drafts even when no tree is expected to pay, so that
            # acceptance and draft costs keep being measured (an estimate never tried again is never fixed)
            explore = self.replans % self.explore_every == 0
            paths, _ = best_tree(self.acceptance, self.verify_cost, self.draft_cost, self.step, allow_empty=not explore)
            self._shape = TreeShape.static(paths) if paths else None
        return self._shape

    def update(self, tree: Tree, path: list[int], draft_s: float, other_s: float) -> None:
        """Count the step: every node whose parent was accepted (the root, then the path) was judged; the
        one on the path was accepted. Costs: draft seconds over the step's draft work (sum of V(F_d)) and
        the loop's seconds outside the drafter and the target forward, both over `target_1_s`."""
        self.steps += 1
        on_path = set(path)
        judged = {-1} | on_path
        rank: dict[int, int] = {}
        owners: dict[int, set[int]] = {}
        depth_max, width = len(self.trials), len(self.trials[0])
        for i, (parent, d) in enumerate(zip(tree.parents.tolist(), tree.depths.tolist())):
            r = rank.get(parent, 0)
            rank[parent] = r + 1
            owners.setdefault(d, set()).add(parent)
            if parent in judged and d <= depth_max and r < width:
                self._new_trials[d - 1][r] += 1.0
                self._new_hits[d - 1][r] += float(i in on_path)
        work = sum(self.verify_cost[min(len(o), len(self.verify_cost)) - 1] for o in owners.values())
        if work:
            self.draft_s += draft_s
            self.draft_work += work
            self.draft_cost = self.draft_s / self.draft_work / self.target_1_s
        self.other_s += other_s
        self.step = self.other_s / self.steps / self.target_1_s
