"""Medusa export: every tensor name and shape equals what vLLM's Medusa loader expects, the config carries
the fields its MedusaConfig reads, the weights compute what vLLM computes, and adaspec loads them back."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from adaspec.drafters.medusa.export import load_medusa, save_medusa
from adaspec.drafters.medusa.model import MedusaDrafter, build_medusa
from adaspec.drafters.target_parts import target_parts
from adaspec.models import build_model

V = 64

# SPEC written from vLLM's loader, vllm-project/vllm:
#   vllm/model_executor/models/medusa.py at 09cddad8f0324594022359cd2b07e962a14b895f (same ResidualBlock,
#     Medusa.__init__ and load_weights at 01dbb08195ca9c70ac9044786a906a353e07fcdf)
#   vllm/transformers_utils/configs/medusa.py at 0531c2226a6a25cd96ccc856f3bda3f0bb4efb5f
# (commits of the stored file versions that were read; the repository itself, 1.1 GB, could not be
# fetched for `git log -1 -- <file>`).
CONFIG_FIELDS = (
    "hidden_size",
    "vocab_size",
    "num_heads",
    "num_hidden_layers",
    "max_paths",
    "topk",
    "truncated_vocab_size",
)


def medusa_config_from_pretrained(d: dict) -> dict:
    """MedusaConfig.from_pretrained's key renaming: any key with "num" and "heads" becomes num_heads, with
    "num" and "layers" num_hidden_layers."""
    d = dict(d)
    for k in list(d):
        if "num" in k:
            if "heads" in k:
                d["num_heads"] = d.pop(k)
            elif "layers" in k:
                d["num_hidden_layers"] = d.pop(k)
    return d


def vllm_medusa_spec(config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of Medusa.named_parameters() that load_weights fills from a checkpoint."""
    c = medusa_config_from_pretrained(config)
    h, vocab = c["hidden_size"], c.get("truncated_vocab_size") or c["vocab_size"]
    spec = {}
    for head in range(c["num_heads"]):  # self.blocks = [ResidualBlock(num_layers=num_hidden_layers)]
        for layer in range(c["num_hidden_layers"]):
            spec[f"blocks.{head}.layers.{layer}.weight"] = (h, h)
            if c.get("medusa_fc_bias", False):  # nn.Linear(bias=getattr(config, "medusa_fc_bias", False))
                spec[f"blocks.{head}.layers.{layer}.bias"] = (h,)
    if c.get("original_lm_head", False):  # one ParallelLMHead, loaded from "lm_heads.0.weight"
        spec["lm_heads.0.weight"] = (vocab, h)
    else:
        for head in range(c["num_heads"]):
            spec[f"lm_heads.{head}.weight"] = (vocab, h)
    return spec


def vllm_forward(tensors: dict, config: dict, hidden: torch.Tensor) -> list[torch.Tensor]:
    """Medusa.forward + compute_logits from the exported tensors alone."""
    c = medusa_config_from_pretrained(config)
    out = []
    for head in range(c["num_heads"]):
        x = hidden
        for layer in range(c["num_hidden_layers"]):
            bias = tensors.get(f"blocks.{head}.layers.{layer}.bias")
            x = x + torch.nn.functional.silu(
                torch.nn.functional.linear(x, tensors[f"blocks.{head}.layers.{layer}.weight"], bias)
            )
        w = tensors["lm_heads.0.weight" if c.get("original_lm_head") else f"lm_heads.{head}.weight"]
        out.append(x @ w.T)
    return out


@pytest.mark.parametrize("layers,bias,shared", [(1, True, False), (2, False, False), (2, True, True)])
def test_export_matches_vllm_spec_and_loads_back(tmp_path, layers, bias, shared):
    target = build_model("tiny-llama", V, seed=1)
    heads = build_medusa(target, heads=3, layers=layers, bias=bias, shared_head=shared)
    with torch.no_grad():
        for p in heads.blocks.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.2)
    save_medusa(heads, tmp_path, target)
    config = json.loads((tmp_path / "config.json").read_text())
    tensors = load_file(str(tmp_path / "model.safetensors"))
    spec = vllm_medusa_spec(config)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == spec
    assert all(field in config for field in CONFIG_FIELDS)
    assert config["truncated_vocab_size"] == config["vocab_size"] == V  # vLLM asserts this without token_map
    assert config["medusa_fc_bias"] is bias and config["original_lm_head"] is shared
    renamed = medusa_config_from_pretrained(config)
    assert renamed["num_heads"] == 3 and renamed["num_hidden_layers"] == layers

    parts = target_parts(target)
    hidden = torch.randn(5, 32, generator=torch.Generator().manual_seed(0))
    loaded = load_medusa(tmp_path)
    with torch.no_grad():
        ours = heads(parts, hidden, None)
        for a, b, c in zip(ours, vllm_forward(tensors, config, hidden), loaded(parts, hidden, None)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            assert torch.equal(a, c)
    assert MedusaDrafter.load(str(tmp_path), target).max_gamma == 3
