"""What tree a drafter hangs below the root each step: a static shape, an EAGLE-2 dynamic one, or adaptive.

- `TreeShape.static(paths)`: fixed rank paths (Medusa's `medusa_choices`, e.g. [[0], [1], [0, 0]]): node
  [r_1..r_d] is the r_d-th most probable child its drafter gives the parent (adaspec.core.tree
  `build_static_tree`); `cartesian_paths((3, 2))` is every path with rank < 3 at depth 1 and < 2 at depth 2.
- `TreeShape.dynamic(top_k, depth, total_tokens)`: EAGLE-2's tree, re-shaped every step by the draft's
  confidence (`build_dynamic_tree`).
- `AdaptiveTree(max_nodes, max_depth, max_width)`: a static shape chosen per step from measured costs and
  running acceptance (adaspec.core.tree_policy).

`parse_tree_spec` reads the `--tree` option: "K,D,T" (dynamic), a JSON list of rank paths (static),
"cartesian:W1,W2,.." (static, every rank path below those widths) or "adaptive[:NODES,DEPTH,WIDTH]".
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

from adaspec.core.tree import Expand, Tree, build_dynamic_tree, build_static_tree, check_paths
from adaspec.errors import AdaspecError

# Every tree node is a row of each verification forward, its mask and the drafter's cache: the sizes a user
# types are bounded before anything is allocated (a `cartesian:1000,1000,1000` tree would hold 10^9 nodes).
# Measured trees pay only up to a few dozen nodes (results/benchmarks/tree_*.json), far below these.
MAX_TREE_NODES = 1024
MAX_TREE_DEPTH = 64
MAX_TREE_WIDTH = 64


def _check_bound(what: str, value: int, limit: int) -> None:
    if value > limit:
        raise AdaspecError(
            f"{what} is {value:,}, above the limit of {limit:,} (every tree node is a row of each "
            f"verification forward and of the drafter's cache)"
        )


def cartesian_paths(widths: Sequence[int]) -> list[tuple[int, ...]]:
    """Every rank path whose rank at depth d is below widths[d-1] (a full Medusa tree of those widths)."""
    if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise AdaspecError(f"cartesian tree widths must be integers >= 1, got {list(widths)}")
    _check_bound("the tree depth", len(widths), MAX_TREE_DEPTH)
    nodes, level = 0, 1
    for w in widths:  # counted before any path is built
        level *= w
        nodes += level
        _check_bound(f"the node count of cartesian:{','.join(map(str, widths))}", nodes, MAX_TREE_NODES)
    return [p for d in range(1, len(widths) + 1) for p in itertools.product(*(range(w) for w in widths[:d]))]


@dataclass(frozen=True)
class TreeShape:
    """A static tree (`paths`) or an EAGLE-2 dynamic one (`top_k`, `depth`, `total_tokens`)."""

    paths: tuple[tuple[int, ...], ...] | None = None
    top_k: int = 0
    depth: int = 0
    total_tokens: int = 0

    def __post_init__(self) -> None:
        if self.paths is not None:
            _check_bound("the tree's node count", len(self.paths), MAX_TREE_NODES)
            object.__setattr__(self, "paths", tuple(check_paths(self.paths)))
            object.__setattr__(self, "depth", len(self.paths[-1]))
            object.__setattr__(self, "top_k", 1 + max(max(p) for p in self.paths))
            object.__setattr__(self, "total_tokens", len(self.paths))
            return
        for name in ("top_k", "depth", "total_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AdaspecError(f"tree {name} must be an integer >= 1, got {value!r}")
        _check_bound("the tree's top_k", self.top_k, MAX_TREE_WIDTH)
        _check_bound("the tree's depth", self.depth, MAX_TREE_DEPTH)
        _check_bound("the tree's total_tokens", self.total_tokens, MAX_TREE_NODES)

    @classmethod
    def static(cls, paths: Sequence[Sequence[int]]) -> TreeShape:
        return cls(paths=tuple(tuple(p) for p in paths))

    @classmethod
    def dynamic(cls, top_k: int, depth: int, total_tokens: int) -> TreeShape:
        return cls(top_k=top_k, depth=depth, total_tokens=total_tokens)

    @classmethod
    def chain(cls, gamma: int) -> TreeShape:
        return cls.static([(0,) * d for d in range(1, gamma + 1)])

    @property
    def is_static(self) -> bool:
        return self.paths is not None

    @property
    def max_nodes(self) -> int:
        """The most nodes a tree of this shape has."""
        if self.paths is not None:
            return len(self.paths)
        return min(self.total_tokens, self.top_k + (self.depth - 1) * self.top_k**2)

    def build(self, expand: Expand) -> Tree:
        if self.paths is not None:
            return build_static_tree(expand, self.paths)
        return build_dynamic_tree(expand, self.top_k, self.depth, self.total_tokens)

    def clipped(self, room: int) -> TreeShape | None:
        """The shape cut to at most `room` nodes and rows in a drafter's cache (None: no tree fits), so the
        last steps of a generation stay inside the context: depth and nodes <= room, and for dynamic trees
        the frontier rows fed over all depths, top_k * (depth - 1), as well."""
        if room < 1:
            return None
        if self.paths is not None:
            if len(self.paths) <= room:
                return self
            return TreeShape.static(self.paths[:room])  # sorted by depth: every kept path's parent is kept
        depth = min(self.depth, room)
        top_k = min(self.top_k, room // (depth - 1)) if depth > 1 else min(self.top_k, room)
        if (depth, top_k, min(self.total_tokens, room)) == (self.depth, self.top_k, self.total_tokens):
            return self
        return TreeShape.dynamic(max(top_k, 1), depth, min(self.total_tokens, room))

    def spec(self) -> str:
        """The `--tree` text of this shape."""
        if self.paths is not None:
            return json.dumps([list(p) for p in self.paths], separators=(",", ":"))
        return f"{self.top_k},{self.depth},{self.total_tokens}"


@dataclass(frozen=True)
class AdaptiveTree:
    """Choose a static tree per step (adaspec.core.tree_policy), within these bounds."""

    max_nodes: int = 24
    max_depth: int = 6
    max_width: int = 4

    def __post_init__(self) -> None:
        for name in ("max_nodes", "max_depth", "max_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AdaspecError(f"adaptive tree {name} must be an integer >= 1, got {value!r}")
        _check_bound("the adaptive tree's max_nodes", self.max_nodes, MAX_TREE_NODES)
        _check_bound("the adaptive tree's max_depth", self.max_depth, MAX_TREE_DEPTH)
        _check_bound("the adaptive tree's max_width", self.max_width, MAX_TREE_WIDTH)

    def spec(self) -> str:
        return f"adaptive:{self.max_nodes},{self.max_depth},{self.max_width}"


TreeSpec = TreeShape | AdaptiveTree

# The CPU default: the fastest fixed tree of the draft models and the EAGLE head in benchmarks/tree.py on the
# demo pair (results/benchmarks/tree_demo.json; the multi-token heads' best were as small: 3-4 nodes, depth 2),
# where verifying and drafting grow with every node. EAGLE's GPU setting is tree.EAGLE_TOP_K/DEPTH/TOTAL_TOKENS.
CPU_DEFAULT = TreeShape.dynamic(2, 2, 3)


def _ints(text: str, what: str, count: int | None = None) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise AdaspecError(f"--tree {what} must be comma-separated integers, got {text!r}") from None
    if count is not None and len(values) != count:
        raise AdaspecError(f"--tree {what} needs {count} integers, got {text!r}")
    return values


def parse_tree_spec(text: str) -> TreeSpec:
    """The `--tree` option (see the module docstring); AdaspecError in one line for a bad spec."""
    text = text.strip()
    if text.startswith("["):
        try:
            paths = json.loads(text)
        except ValueError:
            raise AdaspecError(
                f"--tree paths must be a JSON list of rank lists like [[0],[0,0],[1]], got {text!r}"
            ) from None
        if not isinstance(paths, list) or not all(
            isinstance(p, list) and all(isinstance(r, int) and not isinstance(r, bool) for r in p) for p in paths
        ):
            raise AdaspecError(f"--tree paths must be a JSON list of rank lists like [[0],[0,0],[1]], got {text!r}")
        return TreeShape.static(paths)
    if text.startswith("cartesian:"):
        return TreeShape.static(cartesian_paths(_ints(text[len("cartesian:") :], "cartesian:W1,W2,..")))
    if text == "adaptive":
        return AdaptiveTree()
    if text.startswith("adaptive:"):
        return AdaptiveTree(*_ints(text[len("adaptive:") :], "adaptive:NODES,DEPTH,WIDTH", 3))
    if "," in text:
        return TreeShape.dynamic(*_ints(text, "TOP_K,DEPTH,TOTAL", 3))
    raise AdaspecError(
        f"--tree must be TOP_K,DEPTH,TOTAL, a JSON list of rank paths, cartesian:W1,W2,.. or "
        f"adaptive[:NODES,DEPTH,WIDTH]; got {text!r}"
    )
