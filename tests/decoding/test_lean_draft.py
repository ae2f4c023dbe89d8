"""The folded draft layer against the HF model: logits over chains, crops, mixed widths and the tree form;
where it does not apply it is LeanLM's own layer. Tolerance: the lean path's (1e-4 absolute, float32 logits)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig

from adaspec.decoding.lm import LMDrafter
from adaspec.models import build_model
from adaspec.models.lean import DraftLeanLM

V = 96
TOL = 1e-4


@torch.no_grad()
def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids[None]).logits[0].float()


def tokens(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def test_steps_match_hf_over_crops_and_mixed_widths():
    model = build_model("tiny-neox", V, seed=3)
    lm = DraftLeanLM(model, V, "draft")
    assert lm._folded is not None
    ids, other = tokens(40, seed=1), tokens(40, seed=2)
    lm.forward(ids[:9])
    steps = [lm.forward(ids[i : i + 1])[0] for i in range(9, 20)]
    assert float((torch.cat(steps) - hf_logits(model, ids[:20])[9:]).abs().max()) < TOL
    lm.crop(14)  # roll back, then a two-token catch-up (the exact path) and one-token steps on the same cache
    mixed = torch.cat([ids[:14], other[14:30]])
    first, _ = lm.forward(mixed[14:16], keep=2)
    steps = [lm.forward(mixed[i : i + 1])[0] for i in range(16, 30)]
    ref = hf_logits(model, mixed)
    assert float((torch.cat([first, *steps]) - ref[14:30]).abs().max()) < TOL


def test_tree_form_of_a_chain_matches_hf():
    model = build_model("tiny-neox", V, seed=8)
    lm, ids = DraftLeanLM(model, V, "draft"), tokens(15, seed=9)
    lm.forward(ids[:10])
    logits, _ = lm.forward(
        ids[10:], keep=5, positions=torch.arange(10, 15), tree_mask=torch.ones(5, 5, dtype=torch.bool).tril()
    )
    assert float((logits - hf_logits(model, ids)[10:]).abs().max()) < TOL


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gpt2", "sequential-neox"])
def test_other_layers_take_the_lean_path(preset):
    if preset == "sequential-neox":
        model = AutoModelForCausalLM.from_config(
            GPTNeoXConfig(
                vocab_size=V,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=64,
                use_parallel_residual=False,
            )
        ).eval()
    else:
        model = build_model(preset, V, seed=4)
    lm = DraftLeanLM(model, V, "draft")
    assert lm._folded is None
    ids = tokens(12, seed=5)
    lm.forward(ids[:6])
    steps = [lm.forward(ids[i : i + 1])[0] for i in range(6, 12)]
    assert float((torch.cat(steps) - hf_logits(model, ids)[6:]).abs().max()) < TOL


def test_draft_models_take_the_folded_step_and_see_changed_weights_next_time():
    model = build_model("tiny-neox", V, seed=6)
    assert isinstance(LMDrafter(model, V).lm, DraftLeanLM)
    with torch.no_grad():
        model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight.mul_(1.5)
    lm = DraftLeanLM(model, V, "draft")  # built after the change: folds the new weights
    ids = tokens(8, seed=7)
    lm.forward(ids[:7])
    assert float((lm.forward(ids[7:8])[0] - hf_logits(model, ids)[7:]).abs().max()) < TOL
