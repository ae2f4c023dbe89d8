"""Target forward over a token tree on the KV cache, and cache compaction, on three model families: the
transformers path of the tree engine (CachedLM.forward with a tree mask, CachedLM.keep_path)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from adaspec.core.tree import Tree
from adaspec.errors import AdaspecError
from adaspec.models import build_model
from adaspec.models.target import CachedLM
from adaspec.models.tree_target import check_tree_attention, masked_forward

VOCAB = 50
FAMILIES = ["tiny-llama", "tiny-neox", "tiny-gpt2"]
PATHS = [[0], [1], [2], [0, 0], [0, 1], [1, 0], [0, 0, 0], [0, 0, 1], [2, 0], [0, 1, 0]]


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return build_model(request.param, VOCAB, seed=0)


def _forward(model, tokens: torch.Tensor, cache=None):
    return model(input_ids=tokens[None], cache=cache, use_cache=cache is not None).logits[0].float()


def _setup(model, prefix_len: int = 6, seed: int = 0, layers: tuple[int, ...] = ()):
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(0, VOCAB, (prefix_len,), generator=g)
    root = torch.randint(0, VOCAB, (), generator=g)
    tree = Tree.from_paths(PATHS, torch.randint(0, VOCAB, (3, 3), generator=g))
    lm = CachedLM(model, VOCAB, "target", layers)
    lm.forward(prefix)
    return prefix, root, tree, lm


def _tree_step(lm: CachedLM, root: torch.Tensor, tree: Tree):
    """Root and nodes in one forward, as the tree engine feeds them: rows 0 (after the root) and i + 1 (node i)."""
    return lm.forward(
        torch.cat([root.view(1), tree.tokens]),
        keep=tree.size + 1,
        positions=tree.position_ids(lm.seen),
        tree_mask=tree.attention_mask(),
    )


@torch.inference_mode()
def test_tree_logits_equal_chain_forwards_on_every_path(model):
    prefix, root, tree, lm = _setup(model)
    logits, _ = _tree_step(lm, root, tree)
    assert logits.shape == (tree.size + 1, VOCAB)
    assert lm.seen == lm.cache.get_seq_length() == prefix.numel() + 1 + tree.size
    for leaf in tree.leaves():
        path = tree.ancestors()[leaf]
        chain = _forward(model, torch.cat([prefix, root.view(1), tree.tokens[path]]))[prefix.numel() :]
        torch.testing.assert_close(logits[[0] + [i + 1 for i in path]], chain, atol=1e-5, rtol=1e-5)


def _layers(model):
    base = model.base_model
    return base.layers if hasattr(base, "layers") else base.h


@torch.inference_mode()
def test_captured_hidden_states_equal_a_chain_forwards(model):
    last = len(_layers(model)) - 1
    prefix, root, tree, lm = _setup(model, seed=3, layers=(0, last))
    logits, hidden = _tree_step(lm, root, tree)
    assert hidden.shape == (2, tree.size + 1, model.config.hidden_size)
    path = tree.ancestors()[tree.leaves()[-1]]
    rows = [0] + [i + 1 for i in path]
    kept: list[torch.Tensor] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out: kept.append(out[0] if isinstance(out, tuple) else out))
        for m in (_layers(model)[0], _layers(model)[last])
    ]
    _forward(model, torch.cat([prefix, root.view(1), tree.tokens[path]]))
    for h in handles:
        h.remove()
    chain = torch.stack([k[0, prefix.numel() :] for k in kept])
    torch.testing.assert_close(hidden[:, rows], chain, atol=1e-5, rtol=1e-5)
    _, none = _tree_step(CachedLM(model, VOCAB, "target"), root, tree)
    assert none is None


@torch.inference_mode()
@pytest.mark.parametrize("accepted_leaf", [None, 0, 1, 2])  # None: nothing accepted
def test_compacted_cache_equals_a_fresh_forward_of_the_accepted_path(model, accepted_leaf):
    prefix, root, tree, lm = _setup(model, seed=1)
    _tree_step(lm, root, tree)
    path = [] if accepted_leaf is None else tree.ancestors()[tree.leaves()[accepted_leaf]]
    lm.keep_path(prefix.numel(), [0] + [i + 1 for i in path])  # the root, then the accepted nodes
    kept = torch.cat([prefix, root.view(1), tree.tokens[path]])
    assert lm.seen == lm.cache.get_seq_length() == kept.numel()
    fresh = DynamicCache(config=model.config)
    _forward(model, kept, fresh)
    for ours, theirs in zip(lm.cache.layers, fresh.layers):
        torch.testing.assert_close(ours.keys, theirs.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.values, theirs.values, atol=1e-5, rtol=1e-5)
    nxt = torch.tensor([7])  # decoding continues from the compacted cache as from the fresh one
    torch.testing.assert_close(lm.forward(nxt)[0][0], _forward(model, nxt, fresh)[0], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_eager_attention_takes_the_tree_mask_too():
    model = build_model("tiny-llama", VOCAB, seed=2)
    model.config._attn_implementation = "eager"
    prefix, root, tree, lm = _setup(model, seed=2)
    logits, _ = _tree_step(lm, root, tree)
    path = tree.ancestors()[tree.leaves()[-1]]
    chain = _forward(model, torch.cat([prefix, root.view(1), tree.tokens[path]]))[prefix.numel() :]
    torch.testing.assert_close(logits[[0] + [i + 1 for i in path]], chain, atol=1e-5, rtol=1e-5)


def test_attention_without_custom_masks_is_refused_in_one_line():
    model = build_model("tiny-neox", VOCAB, seed=0)
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(AdaspecError, match="attn_implementation='sdpa'") as err:
        check_tree_attention(model)
    assert "\n" not in str(err.value)


def test_a_family_without_mask_support_is_refused_in_one_line():
    from transformers import AutoModelForCausalLM, MambaConfig

    model = AutoModelForCausalLM.from_config(
        MambaConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=1, state_size=2)
    )
    with pytest.raises(AdaspecError, match="mamba models cannot verify token trees") as err:
        check_tree_attention(model)
    assert "\n" not in str(err.value)


@torch.inference_mode()
def test_visibility_and_kept_rows_are_checked(model):
    prefix, root, tree, lm = _setup(model)
    with pytest.raises(AdaspecError, match=r"visibility must be \[2, 8\]"):
        masked_forward(model, lm.cache, torch.tensor([1, 2]), torch.tensor([6, 7]), torch.ones(2, 7, dtype=torch.bool))
    _tree_step(lm, root, tree)
    with pytest.raises(AdaspecError, match="outside the"):
        lm.keep_path(prefix.numel(), [0, tree.size + 1])


@torch.inference_mode()
def test_sliding_window_layers_are_refused():
    from transformers import AutoModelForCausalLM, MistralConfig

    model = AutoModelForCausalLM.from_config(
        MistralConfig(
            vocab_size=VOCAB,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            sliding_window=4,
        )
    )
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([[1, 2, 3]]), cache=cache, use_cache=True)
    with pytest.raises(AdaspecError, match="sliding-window"):
        masked_forward(model, cache, torch.tensor([4, 5]), torch.tensor([3, 4]), torch.ones(2, 5, dtype=torch.bool))
