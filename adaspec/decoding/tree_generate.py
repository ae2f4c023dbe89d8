"""Speculative decoding with token trees, for every drafter, in the same engine and on the same decode path
as chains.

One step, with seq[:n] accepted and the target cache holding seq[:n-1] (the engine's invariant):
the drafter hangs a tree below seq[n-1] (`TreeDrafter.propose_tree`, in the shape asked for); the target
runs ONE forward over [seq[n-1], nodes] with the tree mask and position ids n-1+depth; `verify_tree` picks
the accepted root-to-node path and the distribution of the next token; the target's cache keeps
seq[:n-1] + seq[n-1] + the path (`keep_path`: rows moved, nothing recomputed), which is the new
seq[:n'-1] (n' = n + k + 1), so the invariant holds again; the drafter gets the path and the target's
features of the kept positions (`accept_tree`).

The loop around the steps (set-up, stopping, stats) is adaspec.decoding.engine's, shared with chains:
`TreeSteps` is the tree's step kind. The target runs through `cached_lm` as for chains: the lean path
(adaspec.models.lean) where the family supports it, else the transformers path with a 4-D mask
(adaspec.models.tree_target, which refuses families that cannot take one), so tree and chain timings
compare like with like.

Sampling: children chosen as the drafter's top-k (every drafter here) are deterministic candidates, and
the verification rule for those is lossless at any temperature / top-p (adaspec.core.tree_verify).
Random draws per sampling step: `torch.rand(N)` for the nodes, then one sample of the next token.

Adaptive size (`AdaptiveTree`): the loop measures, once before decoding unless `costs` are passed in, the
target's forward over n tokens relative to one (`measure_verify_costs`), and a `TreeController` chooses
each step's static tree from those costs, the run's measured draft and loop times and its acceptance per
(depth, rank) (adaspec.core.tree_policy).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec.core.metrics import SpecStats
from adaspec.core.tree import Tree
from adaspec.core.tree_policy import TreeController, interpolate_costs
from adaspec.core.tree_shape import CPU_DEFAULT, AdaptiveTree, TreeShape, TreeSpec
from adaspec.core.tree_verify import verify_tree
from adaspec.decoding.drafter import Drafter, TreeDrafter
from adaspec.decoding.engine import Engine, OnTokens, Step, as_drafter, kept_features, sampling_for
from adaspec.errors import AdaspecError
from adaspec.models.lean import LeanLM
from adaspec.models.target import CachedLM, Clock
from adaspec.models.tree_target import check_tree_attention

COST_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # tokens per verification measured


@dataclass(frozen=True)
class TreeCosts:
    """verify[t] = time of one target forward over t tokens (a tree) / over 1 token; target_1_s = that one."""

    verify: dict[int, float]
    target_1_s: float


def measure_verify_costs(
    tgt: LeanLM | CachedLM, root: torch.Tensor, sizes: Iterable[int] = COST_SIZES, reps: int = 5
) -> TreeCosts:
    """Time target forwards over a root and t-1 children (a star tree) after the cached prefix, which is
    left as it was: every size once per repeat (so load drifts hit all sizes alike), each timed right
    after an untimed forward of the same size (so no size pays for the caches the previous one left),
    the fastest of `reps` (on a shared CPU other work only ever adds time), relative to 1 token."""
    clock, seen = Clock(tgt.device), tgt.seen
    inputs = {}
    for t in sorted(set(sizes) | {1}):
        tree = Tree(root.new_zeros(t - 1).long(), torch.full((t - 1,), -1), torch.ones(t - 1, dtype=torch.long))
        inputs[t] = (
            torch.cat([root.reshape(1), tree.tokens]).to(tgt.device),
            tree.position_ids(seen),
            tree.attention_mask(),
        )
    samples: dict[int, list[float]] = {t: [] for t in inputs}
    for _ in range(reps):
        for t, (tokens, positions, mask) in inputs.items():
            tgt.forward(tokens, keep=t, positions=positions, tree_mask=mask)  # untimed: the same size warms up
            tgt.crop(seen)
            t0 = clock()
            tgt.forward(tokens, keep=t, positions=positions, tree_mask=mask)
            samples[t].append(clock() - t0)
            tgt.crop(seen)
    times = {t: min(x) for t, x in samples.items()}
    return TreeCosts({t: times[t] / times[1] for t in times}, times[1])


def _tree_drafter(drafter: Drafter) -> TreeDrafter:
    if not isinstance(drafter, TreeDrafter):
        raise AdaspecError(f"{type(drafter).__name__} cannot propose token trees (no propose_tree / accept_tree)")
    return drafter


@dataclass
class TreeStep(Step):
    nodes: Tree
    path: torch.Tensor  # the accepted nodes, root-to-node order
    path_list: list[int]  # the same on the host
    forwards: int  # drafter forwards
    verified_at: float  # clock time after the target forward


class TreeSteps:
    """The engine's tree steps: one tree per step, of a fixed shape or chosen by a TreeController."""

    def __init__(self, drafter: TreeDrafter, tree: TreeSpec | TreeController, depth: int, costs: TreeCosts | None):
        self.drafter, self.tree, self.costs = drafter, tree, costs
        self.gamma = depth  # the deepest tree asked for
        self.controller = tree if isinstance(tree, TreeController) else None

    def prefill(self, engine: Engine, hidden: torch.Tensor | None) -> None:
        self.drafter.prefill(engine.seq[: engine.n], hidden)  # the first tree's root is the prompt's last token
        if isinstance(self.tree, AdaptiveTree):  # costs measured after the prompt, in the prefill time
            tree = self.tree
            sizes = [t for t in COST_SIZES if t <= tree.max_nodes] + [tree.max_nodes + 1]
            costs = self.costs or measure_verify_costs(engine.tgt, engine.seq[engine.n - 1], sizes)
            self.controller = TreeController(
                tree,
                interpolate_costs(costs.verify, tree.max_nodes),
                costs.target_1_s,
                max_depth=self.drafter.max_gamma,
            )

    def step(self, engine: Engine, n: int) -> TreeStep:
        """Hang a tree below seq[n-1] (none: the target alone takes the step) and verify it in one forward."""
        tgt, seq, sampling, clock = engine.tgt, engine.seq, engine.sampling, engine.clock
        s0 = clock()
        if self.controller:
            shape = self.controller.shape()
        else:
            assert isinstance(self.tree, TreeShape)  # an AdaptiveTree or a TreeController gives a controller
            shape = self.tree
        shape = shape.clipped(engine.total - n) if shape is not None else None
        if shape is None:
            nodes, rows = Tree(*(seq.new_zeros(0) for _ in range(3))), None
        else:
            nodes, rows = self.drafter.propose_tree(seq, n, shape, sampling)
        s1 = clock()
        size = nodes.size
        fed = torch.cat([seq[n - 1 : n], nodes.tokens.to(seq.device)])
        if nodes.is_chain:  # causal attention is its tree attention: the chain's own forward
            logits, hidden = tgt.forward(fed, keep=size + 1)
        else:
            logits, hidden = tgt.forward(
                fed, keep=size + 1, positions=nodes.position_ids(n - 1), tree_mask=nodes.attention_mask()
            )
        s2 = clock()
        # greedy: verify_tree and the next token need only the argmax, which the logits have already
        probs = logits if sampling.greedy else sampling.probs(logits)
        uniforms = None if sampling.greedy else torch.rand(size, generator=sampling.generator, device=probs.device)
        path, nxt = verify_tree(probs, nodes, None if rows is None else rows.to(probs.device), uniforms)
        token = nxt.argmax(-1, keepdim=True) if sampling.greedy else sampling.draw(nxt)
        values = nodes.tokens[path].tolist() + token.tolist()
        forwards = shape.depth if shape is not None and size else 0
        return TreeStep(
            torch.tensor(values, dtype=torch.long, device=seq.device),
            values,
            hidden,
            s1 - s0,
            s2 - s1,
            nodes,
            path,
            path.tolist(),
            forwards,
            s2,
        )

    def record(self, step: TreeStep, emitted: int, stats: SpecStats) -> None:
        depths, parents = step.nodes.depths.tolist(), step.nodes.parents.tolist()
        depth_nodes = [0] * (max(depths) if depths else 0)
        for d in depths:
            depth_nodes[d - 1] += 1
        rejected = (step.path_list[-1] if step.path_list else -1) in parents  # the last accepted node had children
        stats.record_tree_step(depth_nodes, step.accepted, emitted, rejected, step.forwards)

    def accept(self, engine: Engine, step: TreeStep, n: int, emitted: int) -> None:
        # The target's cache keeps the step's start, the root and the path (rows moved, nothing recomputed):
        # seq[:n-1] again; the drafter gets the target's features of the kept positions.
        kept = [0] + [i + 1 for i in step.path_list]
        engine.tgt.keep_path(n - emitted - 1, kept)
        hidden = None if step.hidden is None else step.hidden[:, kept]
        self.drafter.accept_tree(n, step.path, kept_features(hidden, min(step.accepted + 1, emitted)))
        if self.controller:
            self.controller.update(step.nodes, step.path_list, step.draft_s, engine.clock() - step.verified_at)


@torch.inference_mode()
def tree_speculative_generate(
    target: PreTrainedModel,
    draft: PreTrainedModel | Drafter,
    input_ids: torch.Tensor,
    max_new_tokens: int = 128,
    tree: TreeSpec | TreeController = CPU_DEFAULT,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    on_tokens: OnTokens | None = None,
    lean: bool | None = None,
    costs: TreeCosts | None = None,
) -> tuple[torch.Tensor, SpecStats]:
    """Generate after one prompt with tree verification; returns (sequence [1, n], stats).

    `draft` is a draft causal LM or any tree drafter (adaspec.drafters); `tree` a TreeShape (static paths
    or EAGLE-2 dynamic), an AdaptiveTree (a static tree chosen per step; `costs` as measured by
    `measure_verify_costs`, else measured here before decoding, in the prefill time) or a TreeController
    (adaptive, and what it learns about acceptance and step costs carries over to the next call: one
    per drafter, as a server keeps it). Greedy
    (temperature 0) output is the target's greedy decoding; otherwise the target's temperature / top-p
    distribution exactly. `tokenizer`, `on_tokens`, `lean` as for speculative_generate. Stats count one
    step per tree (SpecStats.record_tree_step).
    """
    sampling = sampling_for(target, temperature, top_p, generator, seed)
    if not isinstance(tree, (TreeShape, AdaptiveTree, TreeController)):
        raise AdaspecError(f"tree must be a TreeShape, an AdaptiveTree or a TreeController, got {type(tree).__name__}")
    drafter, bounded = as_drafter(draft, target, tokenizer, lean, None)
    drafter = _tree_drafter(drafter)
    limit = drafter.max_gamma
    if isinstance(tree, TreeShape):
        asked = tree.depth
        if limit is not None and asked > limit:
            raise AdaspecError(f"this drafter drafts at most {limit} tokens deep; got a tree of depth {asked}")
    elif isinstance(tree, TreeController):
        asked = tree.max_depth
        if limit is not None and asked > limit:
            raise AdaspecError(f"this drafter drafts at most {limit} tokens deep; the controller plans {asked}")
    else:
        asked = tree.max_depth if limit is None else min(tree.max_depth, limit)
    engine = Engine(
        target,
        input_ids,
        max_new_tokens,
        sampling,
        models=bounded,
        layers=drafter.hidden_layers,
        lean=lean,
        eos_token_id=eos_token_id,
        on_tokens=on_tokens,
    )
    if isinstance(engine.tgt, CachedLM):
        check_tree_attention(target)
    return engine.speculate(TreeSteps(drafter, tree, asked, costs))
