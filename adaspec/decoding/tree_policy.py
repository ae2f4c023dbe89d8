"""The adaptive tree size: per step, the static tree with the most expected tokens per unit of time.

Model. A drafter's candidates are ranked (its top-k), so a node is a rank path [r_1..r_d]. Whatever the
tree, the target accepts the rank-r child of an accepted node at depth d-1 with a probability a[d][r]
that does not depend on which other nodes are in the tree: under greedy decoding the child is accepted iff
its token is the target's argmax; under the deterministic-candidates rule (adaspec.decoding.tree_verify)
child j is accepted with probability p(x_j) in total, whatever the siblings tried before it. So

    E[tokens per step] = 1 + sum over nodes [r_1..r_d] of a[1][r_1] * ... * a[d][r_d]

(the 1 is the bonus/correction token), and a step costs, in target forwards of one token,

    cost = depth * draft_cost + verify_cost[nodes] + step_cost

(one draft forward per depth; verifying the root and the nodes; `step_cost` the loop's own work). For a
fixed size the best tree holds the paths with the largest products, which is prefix-closed because every
factor is <= 1; `best_tree` grows it greedily (a heap of candidate paths: each added path offers its
first child and its next sibling, so siblings come in rank order) once per depth bound and keeps the
prefix with the best E / cost. This is Sequoia's tree construction (Chen et al. 2024) with per-depth
acceptance and CPU costs. A chain of γ is the special case max_width = 1: then the choice is γ.

`TreeController` keeps a[d][r] from the run (exponentially decayed counts, with an optimistic prior so
that ranks not tried yet get tried), a step-cost model fitted to the run's measured step times
(`StepCosts`, linear in depth and nodes, starting from the measured verification costs), and re-plans
every few steps.
"""

from __future__ import annotations

import heapq
from typing import Sequence

import torch

from adaspec.decoding.tree import Tree
from adaspec.decoding.tree_shape import AdaptiveTree, TreeShape
from adaspec.errors import AdaspecError

Paths = tuple[tuple[int, ...], ...]


def expected_tokens(paths: Sequence[Sequence[int]], acceptance: Sequence[Sequence[float]]) -> float:
    """1 + the sum over the tree's rank paths of the product of a[d][r] along each path."""
    total = 1.0
    for p in paths:
        prob = 1.0
        for d, r in enumerate(p):
            prob *= acceptance[d][r]
        total += prob
    return total


def best_tree(acceptance: Sequence[Sequence[float]], verify_cost: Sequence[float], draft_cost: float,
              step_cost: float = 0.0, max_nodes: int | None = None) -> tuple[Paths, float]:
    """(rank paths, expected tokens per unit cost) of the best tree (see the module docstring).

    acceptance[d][r]: probability in [0, 1] that the rank-r child of an accepted depth-d node (d = 0: the
    root) is accepted; its shape [depth bound, width bound] bounds the tree. verify_cost[i]: cost of
    verifying the root and i nodes, relative to one target forward of one token (verify_cost[0] = 1
    usually); its length bounds the nodes, as does max_nodes. Ties go to the smaller tree.
    """
    depth_max, width = len(acceptance), len(acceptance[0]) if acceptance else 0
    if depth_max < 1 or width < 1 or any(len(row) != width for row in acceptance):
        raise AdaspecError("acceptance must be a non-empty [depth, width] table")
    if any(not 0.0 <= a <= 1.0 for row in acceptance for a in row):
        raise AdaspecError("acceptance probabilities must be in [0, 1]")
    if draft_cost < 0 or step_cost < 0 or any(c <= 0 for c in verify_cost):
        raise AdaspecError("costs must be positive (draft and step costs >= 0)")
    limit = len(verify_cost) - 1 if max_nodes is None else min(max_nodes, len(verify_cost) - 1)
    best: tuple[Paths, float] = ((), 1.0 / (verify_cost[0] + step_cost))
    for depth_bound in range(1, depth_max + 1):
        heap = [(-acceptance[0][0], (0,), 1.0)]  # (-probability of the path, path, its parent's probability)
        chosen: list[tuple[int, ...]] = []
        gain, depth = 1.0, 0
        while heap and len(chosen) < limit:
            negative, path, parent = heapq.heappop(heap)
            chosen.append(path)
            gain -= negative
            depth = max(depth, len(path))
            value = gain / (depth * draft_cost + verify_cost[len(chosen)] + step_cost)
            if value > best[1] * (1 + 1e-12):
                best = (tuple(chosen), value)
            d, r = len(path) - 1, path[-1]
            if r + 1 < width:
                heapq.heappush(heap, (-parent * acceptance[d][r + 1], path[:-1] + (r + 1,), parent))
            if len(path) < depth_bound:
                heapq.heappush(heap, (negative * acceptance[d + 1][0], path + (0,), -negative))
    return best


def interpolate_costs(measured: dict[int, float], nodes: int) -> list[float]:
    """verify_cost[i] for i = 0..nodes from costs measured at some token counts (tokens = i + 1), linear
    in between and flat past the last one measured."""
    points = sorted(measured.items())
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


class StepCosts:
    """A step's time in target forwards of one token, linear in the tree: w0 + w1 * depth + w2 * nodes.

    Fitted online to the measured step times (drafting, verification and the loop's own work together,
    since all three grow with the tree: a wider frontier per draft forward, more nodes to verify and to
    walk) by ridge regression with exponentially decayed weights, around a prior: w0 + w2 * nodes the
    least-squares line through the measured verification costs, w1 = `draft_cost` per draft forward.
    The prior carries `weight` steps' worth of evidence, so directions the run has not explored (a
    controller that keeps one shape sees a single point) stay where the measurements put them.
    """

    def __init__(self, verify_cost: Sequence[float], draft_cost: float, weight: float = 4.0, decay: float = 0.98):
        nodes = torch.arange(len(verify_cost), dtype=torch.float64)
        design = torch.stack([torch.ones_like(nodes), nodes], dim=1)
        line = torch.linalg.lstsq(design, torch.tensor(verify_cost, dtype=torch.float64)[:, None]).solution[:, 0]
        self.prior = torch.tensor([float(line[0]), draft_cost, float(line[1])], dtype=torch.float64)
        self.weight, self.decay = weight, decay
        self.xtx = torch.zeros(3, 3, dtype=torch.float64)
        self.xty = torch.zeros(3, dtype=torch.float64)

    def update(self, depth: int, nodes: int, cost: float) -> None:
        x = torch.tensor([1.0, depth, nodes], dtype=torch.float64)
        self.xtx = self.decay * self.xtx + torch.outer(x, x)
        self.xty = self.decay * self.xty + cost * x

    @property
    def weights(self) -> tuple[float, float, float]:
        eye = torch.eye(3, dtype=torch.float64) * self.weight
        w = torch.linalg.solve(self.xtx + eye, self.xty + self.weight * self.prior)
        return float(w[0]), float(w[1]), float(w[2])

    def plan_inputs(self, max_nodes: int) -> tuple[list[float], float]:
        """(verify_cost [0..max_nodes], draft_cost) for best_tree: the fitted step cost split as it takes it."""
        w0, w1, w2 = self.weights
        return [max(w0 + w2 * i, 1e-3) for i in range(max_nodes + 1)], max(w1, 0.0)


class TreeController:
    """Running acceptance per (depth, rank) and step costs; `shape()` is the tree for the next step.

    `verify_cost` (measured once, see tree_generate.measure_verify_costs) is relative to a target forward
    of one token taking `target_1_s` seconds; with `draft_cost` (per draft forward, the same unit) it is
    the prior of the step-cost model (`StepCosts`), which the run's measured step times then refine.
    Acceptance counts decay by `decay` per step, starting from a prior of `prior` * 0.5^rank with weight
    `prior_weight`.
    """

    def __init__(self, options: AdaptiveTree, verify_cost: Sequence[float], target_1_s: float,
                 draft_cost: float = 0.3, replan_every: int = 8, decay: float = 0.98, prior: float = 0.8,
                 prior_weight: float = 2.0, max_depth: int | None = None):
        depth = options.max_depth if max_depth is None else min(options.max_depth, max_depth)
        self.options, self.target_1_s = options, target_1_s
        self.costs = StepCosts(list(verify_cost[: options.max_nodes + 1]), draft_cost, decay=decay)
        self.replan_every, self.decay = replan_every, decay
        prior_row = [prior * 0.5 ** r for r in range(options.max_width)]
        self.hits = torch.tensor([prior_row] * depth, dtype=torch.float64) * prior_weight
        self.trials = torch.full((depth, options.max_width), prior_weight, dtype=torch.float64)
        self.steps, self._shape = 0, None

    @property
    def max_depth(self) -> int:
        return self.trials.shape[0]

    @property
    def acceptance(self) -> list[list[float]]:
        return torch.nan_to_num(self.hits / self.trials, nan=0.0).clamp(0.0, 1.0).tolist()

    def shape(self) -> TreeShape | None:
        """The tree for the next step; None when drafting is expected not to pay (the target alone steps)."""
        if self.steps % self.replan_every == 0:
            verify, draft = self.costs.plan_inputs(self.options.max_nodes)
            paths, _ = best_tree(self.acceptance, verify, draft)
            self._shape = TreeShape.static(paths) if paths else None
        return self._shape

    def update(self, tree: Tree, path: torch.Tensor, seconds: float, draft_forwards: int) -> None:
        """Count the step: every node whose parent was accepted (the root, then the path) was judged; the
        one on the path was accepted. `seconds`: the whole step, drafting to accepting."""
        self.steps += 1
        self.hits *= self.decay
        self.trials *= self.decay
        on_path = set(path.tolist())
        judged = {-1} | on_path
        rank: dict[int, int] = {}
        depth_max, width = self.trials.shape
        for i, (parent, d) in enumerate(zip(tree.parents.tolist(), tree.depths.tolist())):
            r = rank.get(parent, 0)
            rank[parent] = r + 1
            if parent in judged and d <= depth_max and r < width:
                self.trials[d - 1, r] += 1
                self.hits[d - 1, r] += i in on_path
        self.costs.update(draft_forwards, tree.size, seconds / self.target_1_s)
