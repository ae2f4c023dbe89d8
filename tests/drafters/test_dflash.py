"""The DFlash block drafter: its one-forward block equals the training forward at the same anchor, decoding
through the engine is lossless (greedy identical to the target on Llama, GPT-NeoX and GPT-2; sampling, with
and without top-p, follows the target's distribution: χ²), trees are lossless, checkpoints round-trip."""

from __future__ import annotations

import pytest
import torch
from sampling_check import chi2_pvalue, exact_joint
from transformers import AutoModelForCausalLM, LlamaConfig

from adaspec import AdaspecError
from adaspec.core.tree_shape import TreeShape
from adaspec.decoding.generate import speculative_generate
from adaspec.decoding.tree_generate import tree_speculative_generate
from adaspec.drafters import DRAFTERS, Drafter
from adaspec.drafters.dflash import DFlashConfig, DFlashDrafter, DFlashHead
from adaspec.drafters.dflash.model import default_target_layers
from adaspec.drafters.target_parts import target_parts
from adaspec.models import build_model
from adaspec.models.target import CachedLM

from .feature_helpers import PRESETS, V

BLOCK = 4


def make_drafter(target, block: int = BLOCK, seed: int = 3, **overrides) -> DFlashDrafter:
    cfg = DFlashConfig.for_target(target, block_size=block, **overrides)
    head = DFlashHead.from_target(target, cfg, seed=seed)
    with torch.no_grad():  # larger weights than the default init, so the head's proposals vary
        for p in head.parameters():
            if p.dim() == 2:
                p.mul_(4)
    return DFlashDrafter(head, target)


def hf_greedy(target, ids, max_new_tokens: int) -> torch.Tensor:
    return target.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_one_block_forward_equals_the_training_forward(preset):
    """What the drafter computes after seq[:n] (its context cache filled step by step, as the engine does)
    is the training forward's block at anchor n-1."""
    target = build_model(preset, V, seed=1)
    drafter = make_drafter(target)
    head, layers = drafter.head, drafter.hidden_layers
    seq = torch.randint(0, V, (12,), generator=torch.Generator().manual_seed(2))
    _, hidden = CachedLM(target, V, "target", layers).forward(seq)  # [layers, T, H]
    drafter.prefill(seq[:5], hidden[:, :4])
    for n in (5, 7, 8, 11):
        if n > 5:
            drafter.accept(n, hidden[:, drafter.lean.length : n - 1])
        got = drafter.block_logits(seq, n, BLOCK - 1)
        feats = hidden.permute(1, 0, 2).reshape(1, len(seq), -1)
        want = head(target_parts(target), feats, seq[None], torch.tensor([[n - 1]]))[0, 0]
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_greedy_matches_target(preset):
    target = build_model(preset, V, seed=1)
    drafter = make_drafter(target)
    gen = torch.Generator().manual_seed(0)
    for ids in [torch.randint(0, V, (1, length), generator=gen) for length in (1, 2, 9)]:
        expected = hf_greedy(target, ids, 20)
        for gamma in range(1, BLOCK):
            out, stats = speculative_generate(target, drafter, ids, max_new_tokens=20, gamma=gamma)
            assert torch.equal(out, expected), (preset, ids.shape[1], gamma)
            assert stats.emitted == 20


def test_trees_match_target_greedy():
    target = build_model("tiny-llama", V, seed=1)
    drafter = make_drafter(target)
    ids = torch.randint(0, V, (1, 6), generator=torch.Generator().manual_seed(4))
    expected = hf_greedy(target, ids, 16)
    for shape in (TreeShape.dynamic(2, BLOCK - 1, 6), TreeShape.static([(0,), (1,), (0, 0), (1, 0)])):
        out, _ = tree_speculative_generate(target, drafter, ids, 16, tree=shape)
        assert torch.equal(out, expected), shape


def test_gamma_above_the_block_is_refused():
    target = build_model("tiny-llama", V, seed=1)
    with pytest.raises(AdaspecError, match=f"at most {BLOCK - 1} tokens per step") as err:
        speculative_generate(target, make_drafter(target), torch.tensor([[1, 2]]), gamma=BLOCK)
    assert len(str(err.value).splitlines()) == 1


def _tiny_llama(vocab: int):
    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)  # peaky, so distributions are told apart
    return model


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_sampling_matches_target_distribution(top_p):
    vocab, samples, temperature = 8, 600, 1.0
    target = _tiny_llama(vocab)
    drafter = make_drafter(target, block=3, seed=5)
    prompt = [3, 5]
    exact = exact_joint(target, prompt, vocab, temperature, top_p)
    counts = torch.zeros(vocab, vocab, vocab)
    gen = torch.Generator().manual_seed(7)
    totals = None
    for _ in range(samples):
        out, stats = speculative_generate(
            target,
            drafter,
            torch.tensor([prompt]),
            max_new_tokens=3,
            gamma=2,
            temperature=temperature,
            top_p=top_p,
            generator=gen,
        )
        x1, x2, x3 = out[0, 2:].tolist()
        counts[x1, x2, x3] += 1
        totals = stats if totals is None else totals + stats
    assert all(h > 10 for h in totals.accept_hist), totals.accept_hist  # rejections, partial, full
    assert chi2_pvalue(counts, exact) > 1e-3
    # the test tells the target's distribution from a slightly hotter one
    assert chi2_pvalue(counts, exact_joint(target, prompt, vocab, 1.3 * temperature, top_p)) < 1e-4


def test_checkpoint_round_trip_and_registry(tmp_path):
    target = build_model("tiny-gpt2", V, seed=1)
    drafter = make_drafter(target, block=3, num_layers=2)
    drafter.head.save_pretrained(tmp_path)
    loaded = DFlashDrafter.load(str(tmp_path), target)
    assert loaded.head.config == drafter.head.config
    for a, b in zip(loaded.head.state_dict().values(), drafter.head.state_dict().values()):
        assert torch.equal(a, b)
    assert DRAFTERS["dflash"] is DFlashDrafter and isinstance(loaded, Drafter)


def test_default_target_layers_follow_the_reference():
    assert default_target_layers(36, 5) == (1, 9, 17, 25, 33)  # z-lab's build_target_layer_ids
    assert default_target_layers(8, 1) == (4,)
    assert default_target_layers(2, 3) == (0, 1)  # a shallow target: clamped, each layer once


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"block_size": 1}, "block size must be in 2.."),
        ({"block_size": 10_000}, "block size must be in 2.."),
        ({"num_layers": 0}, "1..32 layers"),
        ({"target_layers": (1, 0)}, "strictly increasing"),
        ({"target_layers": (5,)}, "out of range"),
        ({"mask_token_id": V}, "mask token id"),
    ],
)
def test_config_refuses_bad_sizes_in_one_line(overrides, message):
    target = build_model("tiny-llama", V, seed=1)
    with pytest.raises(AdaspecError, match=message) as err:
        DFlashConfig.for_target(target, **overrides)
    assert len(str(err.value).splitlines()) == 1


def test_export_writes_the_names_vllm_loads(tmp_path):
    """vLLM 0.32's DFlashQwen3ForCausalLM.load_weights (qwen3_dflash.py) prefixes these names with "model." and
    stacks q/k/v and gate/up; no embedding or head (vLLM shares the target's); the mask embedding beside."""
    import json

    from safetensors.torch import load_file

    from adaspec.drafters.dflash.export import MASK_EMBEDDING, export_dflash

    target = build_model("tiny-llama", V, seed=1)
    head = make_drafter(target, num_layers=2, target_layers=(0, 1)).head
    export_dflash(head, tmp_path, torch.float32)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["DFlashDraftModel"] and config["num_hidden_layers"] == 2
    assert config["dflash_config"] == {"mask_token_id": V - 1, "target_layer_ids": [0, 1], "block_size": BLOCK}
    layer = {
        "input_layernorm",
        "post_attention_layernorm",
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "self_attn.q_norm",
        "self_attn.k_norm",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    }
    assert set(load_file(str(tmp_path / "model.safetensors"))) == {"fc.weight", "hidden_norm.weight", "norm.weight"} | {
        f"layers.{i}.{n}.weight" for i in range(2) for n in layer
    }
    mask = torch.load(tmp_path / MASK_EMBEDDING, weights_only=True)
    assert mask["mask_token_id"] == V - 1 and torch.equal(mask["embedding"], head.mask_embedding.detach())
