"""Every drafter's token trees equal a no-cache reference through random acceptance patterns: the draft LM and
EAGLE heads (tree attention on their own caches, with and without keeping the accepted rows), MTP modules
along their top-1 chain and Medusa heads (top-k per depth), static and dynamic shapes, three families."""

from __future__ import annotations

import copy

import pytest
import torch

from adaspec import AdaspecError
from adaspec.core.sampling import Sampling
from adaspec.core.tree import Tree
from adaspec.core.tree_drafting import TreeRows, per_depth_expand, top_children
from adaspec.core.tree_shape import TreeShape
from adaspec.decoding.lm import LMDrafter
from adaspec.drafters.eagle.drafter import EagleDrafter
from adaspec.drafters.eagle.model import EagleConfig, EagleHead
from adaspec.drafters.medusa.model import MedusaDrafter, build_medusa
from adaspec.drafters.mtp.model import MTPDrafter, build_mtp
from adaspec.drafters.target_parts import target_parts
from adaspec.models import build_model

from .feature_helpers import causal_attend

V = 48
PRESETS = ["tiny-llama", "tiny-neox", "tiny-gpt2"]
STATIC = TreeShape.static([[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 1, 0]])
DYNAMIC = TreeShape.dynamic(3, 3, 7)


def _features(target, seq: list[int], layers: tuple[int, ...]) -> torch.Tensor:
    """[layers, len(seq), H]: adaspec layer i = transformers hidden_states[i + 1]; -1 = the final normed state."""
    with torch.no_grad():
        out = target(torch.tensor([seq]), output_hidden_states=True)
    return torch.stack([out.hidden_states[-1 if i == -1 else i + 1][0] for i in layers])


def _drive(drafter, target, shape: TreeShape, reference, steps: int = 6, seed: int = 0, prompt=(3, 9, 1, 4)):
    """Propose / accept rounds as the engine runs them, a random accepted path and bonus token each round;
    every tree must equal shape.build(reference(seq, kept)) (kept: the previous round's fed path rows)."""
    gen = torch.Generator().manual_seed(seed)
    layers = drafter.hidden_layers
    seq = list(prompt)
    drafter.prefill(torch.tensor(seq), _features(target, seq, layers)[:, : len(seq) - 1] if layers else None)
    state = {"kept": []}
    lengths = set()
    for _ in range(steps):
        n = len(seq)
        with torch.no_grad():
            tree, rows = drafter.propose_tree(torch.tensor(seq), n, shape, Sampling())
            expected = shape.build(reference(seq, state))
        assert rows is None
        assert tree.tokens.tolist() == expected.tokens.tolist(), (seq, tree.tokens, expected.tokens)
        assert tree.parents.tolist() == expected.parents.tolist()
        node = int(torch.randint(-1, tree.size, (1,), generator=gen))
        path = tree.ancestors()[node] if node >= 0 else []
        lengths.add(len(path))
        has_children = set(tree.parents.tolist())
        fed = []  # the accepted nodes the drafter fed (static trees: those with children), from the root on
        for i in path:
            if i not in has_children:
                break
            fed.append(int(tree.tokens[i]))
        state["kept"] = fed
        seq = seq + tree.tokens[path].tolist() + [int(torch.randint(0, V, (1,), generator=gen))]
        hidden = _features(target, seq, layers)[:, n - 1 : len(seq) - 1] if layers else None
        drafter.accept_tree(len(seq), torch.tensor(path, dtype=torch.long), hidden)
    assert len(lengths) >= 2


def _lm_reference(draft):
    def reference(seq, state):
        def expand(nodes, tree, k):
            paths = tree.ancestors()
            rows = [
                draft(input_ids=torch.tensor([seq + (tree.tokens[paths[i]].tolist() if i >= 0 else [])])).logits[0, -1]
                for i in nodes.tolist()
            ]
            return top_children(torch.stack(rows), k, Sampling())

        return expand

    return reference


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("shape", [STATIC, DYNAMIC], ids=["static", "dynamic"])
def test_draft_lm_trees_match_full_forwards(preset, keep, shape):
    draft = build_model(preset, V, seed=2)
    _drive(LMDrafter(draft, V, keep_tree_rows=keep), draft, shape, _lm_reference(draft), seed=1)


def _eagle_reference(head: EagleHead, target, keep: bool):
    """The head run from scratch: its inputs are the target's projected features, except (keep) at the
    positions whose draft rows the drafter kept, where they are the head's own outputs."""
    inputs: list[torch.Tensor] = []  # hidden input per position
    last: dict[str, list] = {}

    def outputs_along(seq, path_tokens):
        """The head's outputs at positions n-2, n-1, ... as it drafts `path_tokens` after seq."""
        n = len(seq)
        hidden = torch.stack(inputs[: n - 1])[None]
        tokens = list(seq[1:n])
        out = head.step(torch.tensor([tokens]), hidden, torch.arange(len(tokens)), causal_attend)
        outs = [out[0, -1]]
        for t in path_tokens:
            hidden = torch.cat([hidden, outs[-1][None, None]], dim=1)
            tokens.append(t)
            out = head.step(torch.tensor([tokens]), hidden, torch.arange(len(tokens)), causal_attend)
            outs.append(out[0, -1])
        return outs

    def reference(seq, state):
        n = len(seq)
        feats = head.project(_features(target, seq, head.config.hidden_layers).permute(1, 0, 2).reshape(n, -1))
        if keep and last:
            kept = outputs_along(last["seq"], state["kept"])[: len(state["kept"])]
            del inputs[len(last["seq"]) - 1 :]
            inputs.extend(kept)
        del inputs[len(inputs) if keep else 0 :]
        inputs.extend(feats[len(inputs) : n - 1])
        last["seq"] = list(seq)

        def expand(nodes, tree, k):
            paths = tree.ancestors()
            rows = [outputs_along(seq, tree.tokens[paths[i]].tolist() if i >= 0 else [])[-1] for i in nodes.tolist()]
            ids, logp = top_children(head.logits(torch.stack(rows)), k, Sampling())
            return head.draft_to_target(ids), logp

        return expand

    return reference


@pytest.mark.parametrize(
    "preset,variant,draft_vocab",
    [("tiny-llama", "eagle3", None), ("tiny-gpt2", "eagle3", 40), ("tiny-neox", "eagle1", None)],
)
@pytest.mark.parametrize("keep", [False, True])
def test_eagle_trees_match_the_head_run_from_scratch(preset, variant, draft_vocab, keep):
    target = build_model(preset, V, seed=1)
    overrides = {} if draft_vocab is None else {"draft_vocab_size": draft_vocab}
    tokens = (
        None
        if draft_vocab is None
        else torch.randperm(V, generator=torch.Generator().manual_seed(0))[:draft_vocab].sort().values
    )
    head = EagleHead.from_target(
        target, EagleConfig.for_target(target, variant, **overrides), seed=3, draft_tokens=tokens
    ).eval()
    # kept rows are those of fed nodes, which a static tree names (its nodes with children)
    for shape in (STATIC,) if keep else (STATIC, DYNAMIC):
        _drive(EagleDrafter(head, keep_tree_rows=keep), target, shape, _eagle_reference(head, target, keep), seed=2)


def _mtp_reference(heads, target):
    parts = target_parts(target)

    def reference(seq, state):
        n = len(seq)
        prev = _features(target, seq, (-1,))[0][None, : n - 1]
        chain, logits = [], []
        for k in range(1, heads.cfg.depth + 1):
            ext = torch.tensor([seq + chain])
            prev = heads.mtp[k - 1](prev, parts.embed(ext[:, k : n - 1 + k]))
            logits.append(parts.logits(prev[0, -1]).float())
            chain.append(int(logits[-1].argmax()))
        return per_depth_expand(logits, Sampling())

    return reference


def _medusa_reference(heads, target):
    parts = target_parts(target)
    return lambda seq, state: per_depth_expand(
        [x.float() for x in heads(parts, _features(target, seq, (-1,))[0][len(seq) - 2], None)], Sampling()
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_mtp_and_medusa_trees_match_direct_recomputation(preset):
    target = build_model(preset, V, seed=1)
    mtp = build_mtp(target, depth=3, seed=2)
    medusa = build_medusa(target, heads=3)
    with torch.no_grad():
        for p in medusa.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    for shape in (STATIC, DYNAMIC):
        _drive(MTPDrafter(mtp, target), target, shape, _mtp_reference(mtp, target), seed=3)
        _drive(MedusaDrafter(medusa, target), target, shape, _medusa_reference(medusa, target), seed=4)


def test_per_depth_candidates_give_medusas_from_paths_tree():
    candidates = torch.tensor([[10, 11, 12], [20, 21, 22], [30, 31, 32]])
    logits = [torch.full((40,), -5.0).index_fill(0, row, 0.0) + torch.linspace(0, -1e-3, 40) for row in candidates]
    paths = STATIC.paths
    tree = STATIC.build(per_depth_expand(logits, Sampling()))
    expected = Tree.from_paths(paths, candidates)
    assert tree.tokens.tolist() == expected.tokens.tolist() and tree.parents.tolist() == expected.parents.tolist()


def test_tree_rows_show_each_node_only_its_ancestors():
    tree = Tree.from_paths([[0], [1], [0, 0], [0, 1], [1, 0], [0, 0, 0]], torch.arange(9).view(3, 3))
    rows = TreeRows(prefix=5)
    first = rows.visibility(tree, [0, 1], cached=5)
    assert first.tolist() == [[True] * 5 + [True, False], [True] * 5 + [False, True]]
    second = rows.visibility(tree, [2, 3, 4], cached=7)
    assert second[:, 5:].int().tolist() == [[1, 0, 1, 0, 0], [1, 0, 0, 1, 0], [0, 1, 0, 0, 1]]
    rows.visibility(tree, [5], cached=10)
    assert rows.fed_prefix(tree, [0, 2, 5]) == [5, 7, 10] and rows.fed_prefix(tree, [1, 4]) == [6, 9]
    assert rows.fed_prefix(tree, [0, 3]) == [5, 8]


def test_heads_refuse_trees_deeper_than_their_depth():
    target = build_model("tiny-llama", V, seed=1)
    deep = TreeShape.dynamic(2, 4, 6)
    for drafter in (
        MTPDrafter(build_mtp(target, depth=3), target),
        MedusaDrafter(build_medusa(target, heads=3), target),
    ):
        drafter.prefill(torch.tensor([1, 2]), _features(target, [1, 2], (-1,))[:, :1])
        with pytest.raises(AdaspecError, match="at most 3 tokens per step") as err:
            drafter.propose_tree(torch.tensor([1, 2]), 2, deep, Sampling())
        assert len(str(err.value).splitlines()) == 1


def test_one_token_prompts_give_empty_trees_for_feature_drafters():
    target = build_model("tiny-gpt2", V, seed=1)
    head = EagleHead.from_target(copy.deepcopy(target), EagleConfig.for_target(target)).eval()
    for drafter in (
        EagleDrafter(head),
        MTPDrafter(build_mtp(target), target),
        MedusaDrafter(build_medusa(target, heads=2), target),
    ):
        drafter.prefill(torch.tensor([4]), None)
        tree, rows = drafter.propose_tree(torch.tensor([4]), 1, TreeShape.dynamic(2, 2, 3), Sampling())
        assert tree.size == 0 and rows is None


def test_a_single_node_after_all_its_ancestors_continues_a_chain():
    tree = Tree.from_paths([[0], [1], [0, 0], [0, 0, 0]], torch.arange(9).view(3, 3))
    rows = TreeRows(prefix=5)
    assert not rows.continues_chain(tree, [0, 1], cached=5)  # two nodes need the tree mask
    assert rows.continues_chain(tree, [0], cached=5) and rows.slot == {(0,): 5}
    assert not rows.continues_chain(tree, [1], cached=6)  # its sibling's row would be visible
    assert rows.continues_chain(tree, [2], cached=6) and rows.continues_chain(tree, [3], cached=7)
    assert rows.fed_prefix(tree, [0, 2, 3]) == [5, 6, 7]
