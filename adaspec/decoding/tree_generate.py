"""Speculative decoding with token trees, for every drafter, on the same decode path as the chain engine.

One step, with seq[:n] accepted and the target cache holding seq[:n-1] (the chain engine's invariant):
the drafter hangs a tree below seq[n-1] (`TreeDrafter.propose_tree`, in the shape asked for); the target
runs ONE forward over [seq[n-1], nodes] with the tree mask and position ids n-1+depth; `verify_tree` picks
the accepted root-to-node path and the distribution of the next token; the target's cache keeps
seq[:n-1] + seq[n-1] + the path (`keep_path`: rows moved, nothing recomputed), which is the new
seq[:n'-1] (n' = n + k + 1), so the invariant holds again; the drafter gets the path and the target's
features of the kept positions (`accept_tree`).

The target runs through `cached_lm` as in the chain engine: the lean path (adaspec.models.lean) where
the family supports it, else the transformers path with a 4-D mask (adaspec.models.tree_target, which
refuses families that cannot take one), so tree and chain timings compare like with like.

Sampling: children chosen as the drafter's top-k (every drafter here) are deterministic candidates, and
the verification rule for those is lossless at any temperature / top-p (adaspec.core.tree_verify).
Random draws per sampling step: `torch.rand(N)` for the nodes, then one sample of the next token.

Adaptive size (`AdaptiveTree`): the loop measures, once before decoding unless `costs` are passed in, the
target's forward over n tokens relative to one (`measure_verify_costs`), and a `TreeController` chooses
each step's static tree from those costs, the run's measured draft and loop times and its acceptance per
(depth, rank) (adaspec.core.tree_policy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec.decoding.generate import OnTokens, _as_drafter, _eos_set, _hidden_slice, _prompt, _truncate
from adaspec.models.lean import LeanLM, cached_lm
from adaspec.core.sampling import check_sampling, logits_to_probs, make_generator, sample
from adaspec.models.target import CachedLM, Clock
from adaspec.core.tree import Tree
from adaspec.core.tree_policy import TreeController, interpolate_costs
from adaspec.core.tree_shape import CPU_DEFAULT, AdaptiveTree, TreeShape, TreeSpec
from adaspec.models.tree_target import check_tree_attention
from adaspec.core.tree_verify import verify_tree
from adaspec.decoding.drafter import Drafter, TreeDrafter
from adaspec.errors import AdaspecError
from adaspec.core.metrics import SpecStats
from adaspec.models import output_vocab_size

COST_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)  # tokens per verification measured


@dataclass(frozen=True)
class TreeCosts:
    """verify[t] = time of one target forward over t tokens (a tree) / over 1 token; target_1_s = that one."""

    verify: dict[int, float]
    target_1_s: float


def measure_verify_costs(tgt: LeanLM | CachedLM, root: torch.Tensor, sizes: Iterable[int] = COST_SIZES,
                         reps: int = 5) -> TreeCosts:
    """Time target forwards over a root and t-1 children (a star tree) after the cached prefix, which is
    left as it was: every size once per repeat (so load drifts hit all sizes alike), each timed right
    after an untimed forward of the same size (so no size pays for the caches the previous one left),
    the fastest of `reps` (on a shared CPU other work only ever adds time), relative to 1 token."""
    clock, seen = Clock(tgt.device), tgt.seen
    inputs = {}
    for t in sorted(set(sizes) | {1}):
        tree = Tree(root.new_zeros(t - 1).long(), torch.full((t - 1,), -1), torch.ones(t - 1, dtype=torch.long))
        inputs[t] = (torch.cat([root.reshape(1), tree.tokens]).to(tgt.device), tree.position_ids(seen),
                     tree.attention_mask())
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


@torch.inference_mode()
def tree_speculative_generate(target: PreTrainedModel, draft: PreTrainedModel | Drafter, input_ids: torch.Tensor,
                              max_new_tokens: int = 128, tree: TreeSpec | TreeController = CPU_DEFAULT,
                              temperature: float = 0.0, top_p: float = 1.0,
                              eos_token_id: int | Iterable[int] | None = None,
                              generator: torch.Generator | None = None, seed: int | None = None,
                              tokenizer: PreTrainedTokenizerBase | None = None, on_tokens: OnTokens | None = None,
                              lean: bool | None = None, costs: TreeCosts | None = None
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
    check_sampling(temperature, top_p)
    if not isinstance(tree, (TreeShape, AdaptiveTree, TreeController)):
        raise AdaspecError(f"tree must be a TreeShape, an AdaptiveTree or a TreeController, got {type(tree).__name__}")
    vocab = output_vocab_size(target)
    drafter, bounded = _as_drafter(draft, target, tokenizer, vocab, lean, None)
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
    prompt = _prompt(input_ids, max_new_tokens, bounded)
    tgt = cached_lm(target, vocab, "target", drafter.hidden_layers, lean=lean)
    if isinstance(tgt, CachedLM):
        check_tree_attention(target)
    generator = make_generator(generator, seed, tgt.device)
    eos, clock = _eos_set(eos_token_id), Clock(tgt.device)
    stats = SpecStats(gamma=asked, sequences=1)

    n, total = prompt.numel(), prompt.numel() + max_new_tokens
    seq = torch.empty(total, dtype=torch.long, device=tgt.device)
    seq[:n] = prompt.to(tgt.device)
    t0 = clock()
    hidden = tgt.forward(seq[: n - 1])[1] if n > 1 else None  # the first tree's root is the prompt's last token
    drafter.prefill(seq[:n], hidden)
    controller = tree if isinstance(tree, TreeController) else None
    if isinstance(tree, AdaptiveTree):
        sizes = [t for t in COST_SIZES if t <= tree.max_nodes] + [tree.max_nodes + 1]
        costs = costs or measure_verify_costs(tgt, seq[n - 1], sizes)
        controller = TreeController(tree, interpolate_costs(costs.verify, tree.max_nodes), costs.target_1_s,
                                    max_depth=limit)
    t1 = clock()
    stats.prefill_time_s = t1 - t0
    while n < total:
        s0 = clock()
        shape = controller.shape() if controller else tree
        shape = shape.clipped(total - n) if shape is not None else None
        if shape is None:
            nodes, rows = Tree(*(seq.new_zeros(0) for _ in range(3))), None
        else:
            nodes, rows = drafter.propose_tree(seq, n, shape, temperature, top_p, generator)
        s1 = clock()
        size = nodes.size
        fed = torch.cat([seq[n - 1:n], nodes.tokens.to(seq.device)])
        if nodes.is_chain:  # causal attention is its tree attention: the chain engine's own forward
            logits, hidden = tgt.forward(fed, keep=size + 1)
        else:
            logits, hidden = tgt.forward(fed, keep=size + 1, positions=nodes.position_ids(n - 1),
                                         tree_mask=nodes.attention_mask())
        s2 = clock()
        # greedy: verify_tree and the next token need only the argmax, which the logits have already
        probs = logits if temperature == 0 else logits_to_probs(logits, temperature, top_p)
        uniforms = None if temperature == 0 else torch.rand(size, generator=generator, device=probs.device)
        path, nxt = verify_tree(probs, nodes, None if rows is None else rows.to(probs.device), uniforms)
        token = nxt.argmax(-1, keepdim=True) if temperature == 0 else sample(nxt, generator)
        path_list = path.tolist()
        tgt.keep_path(n - 1, [0] + [i + 1 for i in path_list])
        k = len(path_list)
        values = nodes.tokens[path].tolist() + token.tolist()
        new, stop = _truncate(values[: total - n], eos)
        m = len(new)
        seq[n:n + m] = torch.tensor(new, dtype=torch.long, device=seq.device)
        depths, parents = nodes.depths.tolist(), nodes.parents.tolist()
        depth_nodes = [0] * (max(depths) if depths else 0)
        for d in depths:
            depth_nodes[d - 1] += 1
        rejected = (path_list[-1] if path_list else -1) in parents  # the last accepted node had children
        forwards = shape.depth if shape is not None and size else 0
        stats.record_tree_step(depth_nodes, k, m, rejected, forwards)
        stats.draft_time_s += s1 - s0
        stats.target_time_s += s2 - s1
        n += m
        if on_tokens is not None:
            on_tokens(new)
        if stop:
            break
        kept = None if hidden is None else hidden[:, [0] + [i + 1 for i in path_list]]
        drafter.accept_tree(n, path, _hidden_slice(kept, min(k + 1, m)))
        if controller:
            controller.update(nodes, path_list, s1 - s0, clock() - s2)
    stats.decode_time_s = clock() - t1
    return seq[:n].unsqueeze(0), stats
