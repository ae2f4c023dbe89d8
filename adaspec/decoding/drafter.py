"""What the speculative-decoding engine needs from a drafter, whatever proposes the tokens.

The engine keeps the accepted tokens `seq[:n]` and the target's KV cache over `seq[:n-1]`. A step asks
the drafter for γ proposals after `seq[:n]`, verifies them in one target forward (which also returns the
hidden states of the layers the drafter listed in `hidden_layers`), and tells the drafter what was kept.
A separate draft LM needs nothing from the target; feature heads (EAGLE, MTP, Medusa) read its hidden
states, so they never run a second target forward.

Token trees (adaspec.decoding.tree_generate): `propose_tree` hangs a tree below seq[n-1] in the shape
asked for (adaspec.core.tree_shape) instead of a chain; the target verifies it in one forward and
`accept_tree` gets the accepted path's node ids and the target's features of the root and the path,
which are again the positions n-1 .. n'-2 kept in the sequence (the same `hidden` a chain's `accept`
gets). Every drafter here implements both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import Tensor

if TYPE_CHECKING:
    from adaspec.core.sampling import Sampling
    from adaspec.core.tree import Tree
    from adaspec.core.tree_shape import TreeShape


@runtime_checkable
class Drafter(Protocol):
    hidden_layers: tuple[int, ...]  # target layers read (adaspec.models.target indices); () for a draft LM
    max_gamma: int | None  # most proposals per step (MTP: its depth D); None = unbounded

    def prefill(self, prompt: Tensor, hidden: Tensor | None) -> None:
        """Start a sequence: `prompt` [n]; `hidden` the target's features of prompt[:n-1], [layers, n-1, H]
        (None when no layers were asked for or n == 1)."""

    def propose(self, seq: Tensor, n: int, gamma: int, sampling: Sampling) -> tuple[Tensor, Tensor | None]:
        """Up to γ proposals continuing seq[:n], as target token ids [g] (g <= γ), and, unless sampling is
        greedy, the distributions they were sampled from [g, V] (zero outside a reduced draft vocabulary)."""

    def accept(self, n: int, hidden: Tensor | None) -> None:
        """The engine kept seq[:n]; roll state back to a prefix of it. `hidden`: the target's features of the
        m positions this step verified and kept, n-1-m .. n-2, as [layers, m, H] (None without layers)."""


@runtime_checkable
class TreeDrafter(Drafter, Protocol):
    def propose_tree(self, seq: Tensor, n: int, shape: TreeShape, sampling: Sampling) -> tuple[Tree, Tensor | None]:
        """A tree below seq[n-1] of the given shape (its depth <= max_gamma) in target ids, and the
        distributions its nodes were sampled from [N, V], or None when its children are the drafter's
        top-k (deterministic candidates; adaspec.core.tree_verify)."""

    def accept_tree(self, n: int, path: Tensor, hidden: Tensor | None) -> None:
        """The engine kept seq[:n] after a tree step that accepted the nodes `path` (root-to-node order);
        `hidden` as for `accept`: the target's features of the root and the path positions it kept."""
