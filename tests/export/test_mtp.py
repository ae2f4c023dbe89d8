"""MTP export: adaspec's checkpoint loads back with identical logits; the DeepSeek-V3 naming matches a
spec written from vLLM's deepseek_mtp.py loader and computes what that layer computes."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from adaspec import AdaspecError
from adaspec.drafters.block import DecoderBlock
from adaspec.drafters.mtp.export import export_mtp_deepseek, load_mtp, save_mtp
from adaspec.drafters.mtp.model import MTPDrafter, build_mtp
from adaspec.drafters.target_parts import target_parts
from adaspec.models import build_model

V = 64


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-neox", "tiny-gpt2"])
def test_adaspec_checkpoint_round_trip(tmp_path, preset):
    target = build_model(preset, V, seed=1)
    heads = build_mtp(target, depth=3, seed=5)
    save_mtp(heads, tmp_path)
    loaded = load_mtp(tmp_path)
    assert loaded.cfg == heads.cfg
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(0))
    parts = target_parts(target)
    with torch.no_grad():
        hidden = target(ids, output_hidden_states=True).hidden_states[-1]
        for a, b in zip(heads(parts, hidden, ids), loaded(parts, hidden, ids)):
            assert torch.equal(a, b)
    assert MTPDrafter.load(str(tmp_path), target).max_gamma == 3
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AdaspecError, match="not an adaspec MTP checkpoint"):
        load_mtp(tmp_path)


# SPEC written from vLLM's loader, vllm-project/vllm vllm/model_executor/models/deepseek_mtp.py at
# 4f7c14402630b97c8c078523fca8edef287ed2cf (DeepSeekMultiTokenPredictorLayer, _rewrite_spec_layer_name;
# the same names at 03356f8cb59ba27f3d0ce8866d7516b5e32cff65, where embed_tokens became model-level and
# is read from layer L only) and get_spec_layer_idx_from_weight_name in
# vllm/model_executor/models/deepseek_v2.py at 002d6073aa034d4f5545d45021b0e56d1f3c3593 (commits of the
# stored file versions read; the 1.1 GB repository could not be fetched for `git log -1 -- <file>`).
# Block tensors: DeepseekV2DecoderLayer's norms and dense DeepseekV2MLP (gate/up stacked into gate_up_proj
# by the loader's stacked_params_mapping) and o_proj; q/k/v_proj are plain multi-head attention, which
# this loader does not map (DeepSeek-V3's block is MLA), see adaspec/drafters/mtp/export.py.
MTP_LAYER_NAMES = ("embed_tokens", "enorm", "hnorm", "eh_proj", "shared_head")  # _rewrite_spec_layer_name


def deepseek_mtp_spec(config: dict) -> dict[str, tuple[int, ...]]:
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    spec = {}
    base = config["num_hidden_layers"]
    for idx in range(base, base + config["num_nextn_predict_layers"]):
        p = f"model.layers.{idx}."
        spec.update(
            {
                p + "embed_tokens.weight": (v, h),
                p + "enorm.weight": (h,),
                p + "hnorm.weight": (h,),
                p + "eh_proj.weight": (h, 2 * h),
                p + "shared_head.norm.weight": (h,),
                p + "shared_head.head.weight": (v, h),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
                p + "self_attn.o_proj.weight": (h, h),
            }
        )
        spec.update({p + f"self_attn.{x}_proj.weight": (h, h) for x in "qkv"})
    return spec


def spec_layer(config: dict, name: str) -> int | None:
    """get_spec_layer_idx_from_weight_name."""
    base = config["num_hidden_layers"]
    for k in range(config["num_nextn_predict_layers"]):
        if name.startswith(f"model.layers.{base + k}."):
            return base + k
    return None


def rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def test_deepseek_naming_matches_vllm_spec(tmp_path):
    target = build_model("tiny-llama", V, seed=1)
    heads = build_mtp(target, depth=2, seed=6)
    export_mtp_deepseek(heads, target, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert {k: tuple(t.shape) for k, t in tensors.items()} == deepseek_mtp_spec(config)
    assert config["num_hidden_layers"] == 2 and config["num_nextn_predict_layers"] == 2
    assert all(spec_layer(config, k) is not None for k in tensors)
    # vLLM's layer, from the exported tensors: eh_proj([enorm(e); hnorm(h)]) -> block -> shared_head
    parts = target_parts(target)
    ids = torch.randint(0, V, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = target(ids, output_hidden_states=True).hidden_states[-1]
        ours = heads(parts, hidden, ids)[0]
        p = "model.layers.2."
        e = torch.nn.functional.embedding(ids[:, 1:], tensors[p + "embed_tokens.weight"])
        h = rms(hidden[:, :-1], tensors[p + "hnorm.weight"])
        x = torch.cat([rms(e, tensors[p + "enorm.weight"]), h], -1) @ tensors[p + "eh_proj.weight"].T
        block = DecoderBlock(heads.cfg.block)  # vLLM's mtp_block: a fresh layer from the remaining tensors
        block.load_state_dict(
            {
                k.removeprefix(p): t
                for k, t in tensors.items()
                if k.startswith(p) and not any(n in k for n in MTP_LAYER_NAMES)
            }
        )
        y = rms(block(x), tensors[p + "shared_head.norm.weight"], target.config.rms_norm_eps)
        torch.testing.assert_close(y @ tensors[p + "shared_head.head.weight"].T, ours, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-neox", "tiny-gpt2"])
def test_deepseek_naming_refuses_layernorm_targets(tmp_path, preset):
    target = build_model(preset, V, seed=1)
    with pytest.raises(AdaspecError, match="needs an RMSNorm final norm"):
        export_mtp_deepseek(build_mtp(target, depth=1), target, tmp_path)
