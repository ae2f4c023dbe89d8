"""DFlash heads in the layout vLLM loads (`speculative_config={"method": "dflash", "model": DIR, ...}`).

Checked against vLLM 0.32.0, vllm/model_executor/models/qwen3_dflash.py (`DFlashQwen3ForCausalLM`, which
EAGLEConfig picks for architecture `DFlashDraftModel`) and vllm/v1/spec_decode/dflash.py:
- config.json: a Qwen3 config (model_type qwen3; hidden/intermediate sizes, heads, KV heads, head_dim,
  num_hidden_layers = the draft's layers, rms_norm_eps, rope_theta / rope_parameters, vocab_size) plus
  `dflash_config` = {mask_token_id, target_layer_ids, block_size}. vLLM reads target_layer_ids as layer
  outputs (adaspec's ids; it adds 1 for its capture index) and feeds the block [bonus, mask × K] for
  num_speculative_tokens = K, non-causal (layer_types all full_attention, so `_dflash_layer_causal` is False).
- weights: fc.weight, hidden_norm.weight, norm.weight, layers.N.{input_layernorm, post_attention_layernorm}
  .weight, layers.N.self_attn.{q,k,v,o}_proj.weight, layers.N.self_attn.{q,k}_norm.weight,
  layers.N.mlp.{gate,up,down}_proj.weight: the names `load_weights` prefixes with "model." and stacks into
  qkv_proj / gate_up_proj. No embed_tokens nor lm_head: vLLM then shares the target's (`has_own_*` False).
- mask_embedding.pt: {"mask_token_id", "embedding"}, which `_read_mask_embedding` loads and swaps in for
  every input equal to mask_token_id (a DFlash checkpoint must not ship a `mask_hidden` weight).
The target must expose auxiliary hidden states to vLLM (SupportsEagle3: adaspec.models.servable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from adaspec.drafters.dflash.model import DFlashConfig, DFlashHead
from adaspec.drafters.family import ExportRequest, Served
from adaspec.errors import AdaspecError, NotServable
from adaspec.models.servable import VLLM_VERSION, aux_hidden_problem, head_size_problem, warn_unservable

ARCH = "DFlashDraftModel"
WEIGHTS = "model.safetensors"
MASK_EMBEDDING = "mask_embedding.pt"


def target_problem(target_config: Any, drafter_config: Any = None) -> str | None:
    """Why vLLM cannot serve a DFlash head on this target (the family's `target_problem`), or None."""
    return head_size_problem(target_config) or aux_hidden_problem(target_config, "DFlash")


def serving_problems(cfg: DFlashConfig, target_config: Any | None) -> list[str | None]:
    """Why vLLM cannot serve this head (on this target, when given): a list of reasons or Nones."""
    problems = [head_size_problem({"head_dim": cfg.head_dim})]
    if target_config is not None:
        problems += [head_size_problem(target_config), aux_hidden_problem(target_config, "DFlash")]
    return problems


def vllm_config(cfg: DFlashConfig, dtype: torch.dtype) -> dict[str, Any]:
    out: dict[str, Any] = {
        "architectures": [ARCH],
        "model_type": "qwen3",
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "num_hidden_layers": cfg.num_layers,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        # vLLM defaults a Qwen3 draft's rope theta to 1e6 unless the config names it (set_default_rope_theta)
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "max_position_embeddings": cfg.max_position_embeddings,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "block_size": cfg.block_size,
        "dflash_config": {
            "mask_token_id": cfg.mask_token_id,
            "target_layer_ids": list(cfg.hidden_layers),
            "block_size": cfg.block_size,
        },
    }
    out.update({k: v for k, v in cfg.extra.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    return out


def export_dflash(head: DFlashHead, out_dir: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write `head` as vLLM's DFlash draft directory (weights in `dtype`; default: as trained)."""
    from safetensors.torch import save_file

    cfg = head.config
    state = {
        k: (v.to(dtype) if dtype is not None else v).detach().cpu().contiguous() for k, v in head.state_dict().items()
    }
    mask = state.pop("mask_embedding")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = vllm_config(cfg, state["fc.weight"].dtype)
    config["adaspec"] = cfg.to_dict()
    config["adaspec_export"] = {"server": "vllm", "checked_with": f"vllm {VLLM_VERSION}"}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    torch.save({"mask_token_id": cfg.mask_token_id, "embedding": mask}, out / MASK_EMBEDDING)
    return out


def serve_vllm(path: str, target: PreTrainedModel, out: Path) -> Served:
    """The family's vLLM export (float32), refused in one line where vLLM cannot serve it."""
    head = DFlashHead.from_pretrained(path)
    problem = next((p for p in serving_problems(head.config, target.config) if p), None)
    if problem:
        raise NotServable(problem)
    return Served("dflash", str(export_dflash(head, out, torch.float32)))


def export_command(request: ExportRequest) -> None:
    """`adaspec export` of a DFlash head: vLLM's layout, one warning line per reason vLLM cannot serve it."""
    if request.format is not None or request.server != "vllm":
        raise AdaspecError("a DFlash head is exported in vLLM's layout only (no --format, --server vllm)")
    target_config = request.target_config()
    head = DFlashHead.from_pretrained(request.head)
    export_dflash(head, request.output, request.dtype)
    warn_unservable("this dflash head", serving_problems(head.config, target_config))
    print(f"wrote dflash head (vLLM's DFlashDraftModel, block {head.config.block_size}) to {request.output}")
