"""The lean decode path against the HF model it reads: logits, hidden states, cache reuse and rollback,
tree attention, keep_path, fallback, greedy decoding and greedy speculative decoding.

Tolerance: float32 logits and hidden states within 1e-4 (absolute) of the HF forward; measured ~1e-7.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, OPTConfig

import adaspec.decoding.lm as lm_drafter
from adaspec import AdaspecError
from adaspec.decoding.generate import speculative_generate, target_only_generate
from adaspec.models import build_model
from adaspec.models.lean import LeanLM, cached_lm, lean_supported

V = 96
TOL = 1e-4
PRESETS = ["tiny-llama", "tiny-neox", "tiny-gpt2"]


def tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids[None]).logits[0].float()


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and float((a.detach() - b.detach()).abs().max()) < TOL


@pytest.fixture(scope="module", params=PRESETS)
def model(request):
    return build_model(request.param, V, seed=3)


@pytest.mark.parametrize("length", [1, 2, 7, 33])
def test_prefill_logits_match_hf(model, length):
    ids = tokens(length, seed=length)
    logits, hidden = LeanLM(model, V, "t").forward(ids, keep=length)
    assert hidden is None
    assert logits.dtype == torch.float32
    assert close(logits, hf_logits(model, ids))


def test_cache_reuse_over_incremental_forwards(model):
    ids = tokens(40, seed=1)
    ref = hf_logits(model, ids)
    lm, start = LeanLM(model, V, "t"), 0
    for chunk in [7, 1, 1, 4, 16, 1, 10]:
        logits, _ = lm.forward(ids[start : start + chunk], keep=chunk)
        assert close(logits, ref[start : start + chunk])
        start += chunk
    assert lm.seen == 40


def test_crop_then_refeed(model):
    ids, other = tokens(30, seed=2), tokens(30, seed=4)
    lm = LeanLM(model, V, "t")
    lm.forward(ids[:20])
    lm.crop(12)
    assert lm.seen == 12
    logits, _ = lm.forward(other[12:30], keep=18)
    assert close(logits, hf_logits(model, torch.cat([ids[:12], other[12:30]]))[12:])
    lm.crop(50)  # cropping beyond what is cached changes nothing
    assert lm.seen == 30


def test_hidden_states_match_hf(model):
    ids = tokens(19, seed=5)
    layers = model.base_model.layers if hasattr(model.base_model, "layers") else model.base_model.h
    captured = []
    hook = layers[-1].register_forward_hook(
        lambda mod, args, out: captured.append(out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            ref = model(ids[None], output_hidden_states=True)
    finally:
        hook.remove()
    last = len(layers) - 1
    lm = LeanLM(model, V, "t", hidden_layers=(-1, 0, last))
    a, ha = lm.forward(ids[:11])
    b, hb = lm.forward(ids[11:], keep=8)
    hidden = torch.cat([ha, hb], dim=1)
    assert hidden.shape == (3, 19, model.config.hidden_size)
    assert close(hidden[0], ref.hidden_states[-1][0])  # -1: the final normed state
    assert close(hidden[1], ref.hidden_states[1][0])  # 0: output of decoder layer 0
    # HF's hidden_states[L] is the normed state, so the last layer's raw output comes from a hook
    assert close(hidden[2], captured[0][0])
    with pytest.raises(AdaspecError, match="hidden layer 5 is out of range"):
        LeanLM(model, V, "t", hidden_layers=(5,))


def test_reads_the_same_weights(model):
    m = copy.deepcopy(model)
    lm = LeanLM(m, V, "t")
    ids = tokens(9, seed=6)
    before, _ = lm.forward(ids, keep=9)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(1.5)
    lm.crop(0)
    after, _ = lm.forward(ids, keep=9)
    assert not close(before, after)
    assert close(after, hf_logits(m, ids))


def test_output_vocab_is_sliced_or_padded(model):
    ids = tokens(5, seed=7)
    small, _ = LeanLM(model, V - 10, "t").forward(ids)
    large, _ = LeanLM(model, V + 3, "t").forward(ids)
    ref = hf_logits(model, ids)[-1:]
    assert close(small, ref[:, : V - 10])
    assert close(large[:, :V], ref) and torch.isinf(large[:, V:]).all()


# ---- Llama variants: grouped-query attention, biases, static rope scaling, growth past the context ----


@pytest.mark.parametrize(
    "extra",
    [
        dict(num_key_value_heads=2),
        dict(num_key_value_heads=1, attention_bias=True, mlp_bias=True),
        dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
        dict(head_dim=16),
    ],
)
def test_llama_variants_match_hf(extra):
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        **extra,
    )
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(config).eval()
    assert lean_supported(m) is None
    ids = tokens(21, seed=8)
    lm = LeanLM(m, V, "t")
    a, _ = lm.forward(ids[:13], keep=13)
    b, _ = lm.forward(ids[13:], keep=8)
    assert close(torch.cat([a, b]), hf_logits(m, ids))


@pytest.mark.parametrize(
    "config",
    [
        GPTNeoXConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            use_parallel_residual=False,
            rotary_pct=1.0,
            attention_bias=False,
        ),
        GPTNeoXConfig(
            vocab_size=V,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            rotary_pct=0.5,
            hidden_act="gelu_new",
        ),
        GPT2Config(
            vocab_size=V,
            n_embd=32,
            n_layer=3,
            n_head=4,
            n_inner=48,
            scale_attn_by_inverse_layer_idx=True,
            activation_function="relu",
        ),
    ],
    ids=["neox-sequential-full-rotary", "neox-half-rotary-gelu-new", "gpt2-layer-scaled-relu"],
)
def test_neox_and_gpt2_variants_match_hf(config):
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(config).eval()
    ids = tokens(21, seed=8)
    lm = LeanLM(m, V, "t")
    a, _ = lm.forward(ids[:13], keep=13)
    b, _ = lm.forward(ids[13:], keep=8)
    assert close(torch.cat([a, b]), hf_logits(m, ids))


def test_rotary_cache_grows_past_the_context_and_learned_positions_stop():
    llama = build_model("tiny-llama", V, seed=1)  # context 256
    ids = tokens(300, seed=9)
    lm = LeanLM(llama, V, "t")
    lm.forward(ids[:250])
    logits, _ = lm.forward(ids[250:], keep=50)
    assert close(logits, hf_logits(llama, ids)[250:])
    gpt2 = LeanLM(build_model("tiny-gpt2", V, seed=1), V, "t")
    gpt2.forward(ids[:250])
    with pytest.raises(AdaspecError, match="256-token limit"):
        gpt2.forward(ids[250:])


def test_forward_outside_inference_mode_restores_the_onednn_switch(model):
    ids = tokens(9, seed=12)
    lm, before = LeanLM(model, V, "t"), torch.backends.mkldnn.enabled
    logits, _ = lm.forward(ids, keep=9)  # entered without torch.inference_mode
    assert torch.backends.mkldnn.enabled == before and not logits.requires_grad
    assert close(logits, hf_logits(model, ids))
    if model.config.model_type == "gpt2":  # an error raised inside the forward restores it too
        with pytest.raises(AdaspecError, match="learned positions"):
            lm.forward(ids[:1], positions=torch.tensor([10_000]))
        assert torch.backends.mkldnn.enabled == before


def test_bfloat16_follows_the_model_dtype():
    m = build_model("tiny-neox", V, seed=2).to(torch.bfloat16)
    ids = tokens(12, seed=10)
    lm = LeanLM(m, V, "t")
    assert lm.cache.data.dtype == torch.bfloat16
    logits, _ = lm.forward(ids, keep=12)
    assert float((logits - hf_logits(m, ids)).abs().max()) < 0.05


# ---- trees ----

PARENTS = [-1, 0, 0, 1, 1, 2, 5, 3]  # node i's parent among the new tokens (-1: hangs off the prefix)


def tree_inputs(start: int):
    depth, ancestors = [], []
    for i, p in enumerate(PARENTS):
        depth.append(0 if p < 0 else depth[p] + 1)
        ancestors.append({i} | (ancestors[p] if p >= 0 else set()))
    mask = torch.tensor([[j in ancestors[i] for j in range(len(PARENTS))] for i in range(len(PARENTS))])
    paths = [sorted(ancestors[i], key=lambda j: depth[j]) for i in range(len(PARENTS)) if i not in PARENTS]
    return torch.tensor(depth) + start, mask, paths


def test_tree_forward_equals_a_chain_forward_of_each_path(model):
    prefix, nodes = tokens(10, seed=11), tokens(len(PARENTS), seed=12)
    positions, mask, paths = tree_inputs(10)
    lm = LeanLM(model, V, "t")
    lm.forward(prefix)
    tree_logits, _ = lm.forward(nodes, keep=len(PARENTS), positions=positions, tree_mask=mask)
    for path in paths:
        ref = hf_logits(model, torch.cat([prefix, nodes[path]]))[10:]
        assert close(tree_logits[path], ref)


def test_keep_path_leaves_the_cache_of_a_fresh_forward_on_the_path(model):
    prefix, nodes = tokens(10, seed=13), tokens(len(PARENTS), seed=14)
    positions, mask, paths = tree_inputs(10)
    path = max(paths, key=len)  # e.g. [0, 1, 3, 7]
    lm = LeanLM(model, V, "t", hidden_layers=(0,))
    lm.forward(prefix)
    lm.forward(nodes, positions=positions, tree_mask=mask)
    lm.keep_path(10, path)
    assert lm.seen == 10 + len(path)
    fresh = LeanLM(model, V, "t", hidden_layers=(0,))
    fresh.forward(torch.cat([prefix, nodes[path]]))
    n = lm.seen
    assert float((lm.cache.data[:, :, :, :n] - fresh.cache.data[:, :, :, :n]).abs().max()) < TOL
    nxt = tokens(3, seed=15)
    a, ha = lm.forward(nxt, keep=3)
    b, hb = fresh.forward(nxt, keep=3)
    assert close(a, b) and close(ha, hb)
    lm.keep_path(n, torch.tensor([2]))  # tensor offsets: keep only the third new token
    assert lm.seen == n + 1
    with pytest.raises(AdaspecError, match="outside"):
        lm.keep_path(n, [0, 1])


# ---- fallback ----


def test_unsupported_models_fall_back_to_hf_with_one_notice(capsys):
    dynamic = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=V,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=64,
            rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
        )
    ).eval()
    opt = AutoModelForCausalLM.from_config(
        OPTConfig(
            vocab_size=V, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32
        )
    ).eval()
    for m, reason in [(dynamic, "rope type 'dynamic'"), (opt, "OPTForCausalLM is not one of")]:
        assert reason in lean_supported(m)
        lm = cached_lm(m, V, "draft")
        assert not isinstance(lm, LeanLM)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "draft" in err and reason in err
        ids = tokens(6, seed=16)
        logits, hidden = lm.forward(ids, keep=6)
        assert hidden is None and close(logits, hf_logits(m, ids))
        with pytest.raises(AdaspecError, match="lean decode path"):
            cached_lm(m, V, "draft", lean=True)
    assert isinstance(cached_lm(build_model("tiny-gpt2", V), V, "target"), LeanLM)
    assert not isinstance(cached_lm(build_model("tiny-gpt2", V), V, "target", lean=False), LeanLM)
    assert capsys.readouterr().err == ""  # supported or explicitly HF: no notice


# ---- decoding ----


@torch.inference_mode()
def lean_greedy(lm: LeanLM, prompt: torch.Tensor, new: int) -> list[int]:
    seq = prompt.tolist()
    logits, _ = lm.forward(prompt)
    for _ in range(new):
        seq.append(int(logits[0].argmax()))
        logits, _ = lm.forward(torch.tensor(seq[-1:]))
    return seq


def test_greedy_decoding_equals_hf_generate(model):
    prompt = tokens(9, seed=17)
    with torch.no_grad():
        ref = model.generate(prompt[None], do_sample=False, max_new_tokens=30, pad_token_id=0)[0].tolist()
    ours = lean_greedy(LeanLM(model, V, "t"), prompt, 30)
    assert ours[: len(ref)] == ref and len(ref) > 9


@torch.inference_mode()
def greedy_speculative(target: LeanLM, draft: LeanLM, prompt: torch.Tensor, new: int, gamma: int) -> list[int]:
    """The engine's cache invariant (interfaces.md): target cache holds seq[:n-1] between steps."""
    seq = prompt.tolist()
    target.forward(prompt[:-1])
    draft.forward(prompt[:-1])
    while len(seq) < len(prompt) + new:
        n, feed, proposals = len(seq), torch.tensor(seq[draft.seen :]), []
        for _ in range(gamma):
            logits, _ = draft.forward(feed)
            feed = logits[0].argmax().view(1)
            proposals.append(int(feed))
        logits, _ = target.forward(torch.tensor(seq[-1:] + proposals), keep=gamma + 1)
        best = logits.argmax(-1).tolist()
        k = 0
        while k < gamma and proposals[k] == best[k]:
            k += 1
        seq += proposals[:k] + [best[k]]
        target.crop(len(seq) - 1)
        draft.crop(len(seq) - 1)
        assert n < len(seq)
    return seq[: len(prompt) + new]


@pytest.mark.parametrize("target_preset,draft_preset", [("tiny-neox", "tiny-llama"), ("tiny-gpt2", "tiny-neox")])
def test_greedy_speculative_decoding_on_lean_models_equals_target_greedy(target_preset, draft_preset):
    target = build_model(target_preset, V, seed=5)
    draft = copy.deepcopy(target)
    with torch.no_grad():  # a draft that agrees often but not always, so both branches run
        gen = torch.Generator().manual_seed(0)
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3 * p.abs().mean())
    other = build_model(draft_preset, V, seed=6)
    prompt = tokens(8, seed=18)
    with torch.no_grad():
        ref = target.generate(prompt[None], do_sample=False, max_new_tokens=40, min_new_tokens=40, pad_token_id=0)[
            0
        ].tolist()
    for d in (draft, other):
        ours = greedy_speculative(LeanLM(target, V, "target"), LeanLM(d, V, "draft"), prompt, 40, gamma=3)
        assert ours == ref


def test_the_engine_on_lean_target_and_draft_gives_the_target_greedy_output():
    target = build_model("tiny-llama", V, seed=7)
    draft = copy.deepcopy(target)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3 * p.abs().mean())
    prompt = tokens(6, seed=19)[None]
    with torch.no_grad():
        ref = target.generate(prompt, do_sample=False, max_new_tokens=40, min_new_tokens=40, pad_token_id=0)
    drafter = lm_drafter.LMDrafter(draft, V, lean=True)
    # lean=True: the target must run on the lean path (an error otherwise)
    seq, stats = speculative_generate(target, drafter, prompt, max_new_tokens=40, gamma=4, lean=True)
    assert seq.tolist() == ref.tolist() and 0 < stats.alpha < 1 and isinstance(drafter.lm, LeanLM)
    assert target_only_generate(target, prompt, max_new_tokens=40, lean=True)[0].tolist() == ref.tolist()
    # the default picks the lean path by itself and decodes the same
    assert speculative_generate(target, draft, prompt, max_new_tokens=40, gamma=4)[0].tolist() == ref.tolist()


def test_tree_step_matches_mains_hf_tree_forward_and_compaction(model):
    """The HF tree path (CachedLM with a tree mask, models.tree_target) and LeanLM agree: logits of root and
    nodes, and after compaction (keep_path on each) the next forward."""
    from adaspec.core.tree import Tree
    from adaspec.models.target import CachedLM

    prefix, nxt = tokens(9, seed=20), tokens(2, seed=21)
    tree = Tree(tokens(6, seed=22), torch.tensor([-1, -1, 0, 0, 1, 3]), torch.tensor([1, 1, 2, 2, 2, 3]))
    root, path = prefix[-1:], torch.tensor([0, 3, 5])
    hf = CachedLM(model, V, "t")
    with torch.no_grad():
        hf.forward(prefix[:-1])
        ref, _ = hf.forward(
            torch.cat([root, tree.tokens]),
            keep=tree.size + 1,
            positions=tree.position_ids(8),
            tree_mask=tree.attention_mask(),
        )
        hf.keep_path(9, path)
        length = hf.seen
        ref_next = hf.forward(nxt, keep=2)[0]
    lm = LeanLM(model, V, "t")
    lm.forward(prefix[:-1])
    logits, _ = lm.forward(
        torch.cat([root, tree.tokens]),
        keep=tree.size + 1,
        positions=tree.position_ids(8),
        tree_mask=tree.attention_mask(),
    )
    assert close(logits, ref)
    lm.keep_path(9, path)
    assert lm.seen == length
    assert close(lm.forward(nxt, keep=2)[0], ref_next)
