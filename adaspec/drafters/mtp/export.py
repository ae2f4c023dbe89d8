"""MTP modules: adaspec's own checkpoint, and the DeepSeek-V3 MTP-layer naming.

adaspec checkpoint (`save_mtp` / `load_mtp`): config.json {"adaspec": {"kind": "mtp", ...MTPConfig}} and
model.safetensors with the module's own names (`mtp.{k}.enorm.weight`, ...); the target's embedding,
norm and head are not stored (they are the target's).

DeepSeek-V3 naming (`export_mtp_deepseek`), as vllm/model_executor/models/deepseek_mtp.py reads MTP
layers: module k (0-based) is layer L+k of the target (L = its decoder layers; config
`num_hidden_layers` = L, `num_nextn_predict_layers` = D), with `model.layers.{L+k}.` + `embed_tokens`,
`enorm`, `hnorm`, `eh_proj`, `shared_head.norm`, `shared_head.head` (copies of the target's embedding,
final norm and head, as DeepSeek's checkpoint stores them per layer) and the block's own tensors
(`input_layernorm`, `self_attn.*`, `post_attention_layernorm`, `mlp.{gate,up,down}_proj`), which the
loader moves under `mtp_block`. Only targets whose final norm is an RMSNorm without bias (the Llama
family) fit `shared_head.norm`.

Which families vLLM serves this way: its MTP drafters exist only for targets trained with their own MTP
layers (DeepSeek-V3/R1 `deepseek_mtp.py`, and per-family files such as MiMo, GLM-4.5, Qwen3-Next); none of
adaspec's families (Llama, GPT-NeoX, GPT-2) is one, and DeepSeek's MTP block uses its MLA attention
(`q_a_proj`, `kv_a_proj_with_mqa`, ...), whereas these modules have plain multi-head attention
(`q_proj`, `k_proj`, `v_proj`, `o_proj`, which deepseek_mtp.py does not map). So this export fixes the
naming of everything MTP-specific for conversion tools; it is not a checkpoint vLLM serves today. vLLM
also zeroes the token embedding at position 0, which training here does not do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel

from adaspec.drafters.family import ExportRequest
from adaspec.drafters.head_checkpoint import WEIGHTS, config_from_entry, load_strict, read_config_entry, read_weights
from adaspec.drafters.mtp.model import MTPConfig, MTPHeads
from adaspec.errors import AdaspecError
from adaspec.models.servable import MTP_REASON, warn_unservable
from adaspec.models.target import decoder_layers, final_norm


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().cpu()


def save_mtp(heads: MTPHeads, path: str | os.PathLike, state_dict: dict | None = None) -> None:
    """Write config.json and model.safetensors (`state_dict`: the weights to write, default the modules')."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = heads.state_dict() if state_dict is None else state_dict
    save_file({k: _cpu(v) for k, v in state.items()}, str(out / WEIGHTS))
    meta = {"adaspec": {"kind": "mtp", **heads.cfg.to_dict()}}
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_mtp(path: str | os.PathLike, device: str | torch.device | None = None) -> MTPHeads:
    """Modules saved by `save_mtp` (identical logits)."""
    meta = read_config_entry(path, "adaspec", "an adaspec MTP checkpoint")
    if meta.pop("kind", None) != "mtp":
        raise AdaspecError(f"{path} holds no MTP modules")
    heads = MTPHeads(config_from_entry(MTPConfig, meta, path))
    tensors = read_weights(path)
    load_strict(heads, tensors, path)
    return heads.to(dtype=next(iter(tensors.values())).dtype, device=device).eval()


def deepseek_tensors(heads: MTPHeads, target: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The modules (and the target's shared parts) under DeepSeek-V3's MTP-layer names."""
    norm = final_norm(target)
    if getattr(norm, "bias", None) is not None or "RMSNorm" not in type(norm).__name__:
        raise AdaspecError(
            f"DeepSeek MTP naming needs an RMSNorm final norm (Llama-family target); "
            f"{type(target).__name__} has {type(norm).__name__}"
        )
    base = len(decoder_layers(target))
    shared = {
        "embed_tokens.weight": target.get_input_embeddings().weight,
        "shared_head.norm.weight": norm.weight,
        "shared_head.head.weight": target.get_output_embeddings().weight,
    }
    out = {}
    for k, module in enumerate(heads.mtp):
        prefix = f"model.layers.{base + k}."
        for name, t in module.state_dict().items():
            out[prefix + name.removeprefix("block.")] = _cpu(t)
        for name, t in shared.items():
            out[prefix + name] = _cpu(t).clone()
    return out


def deepseek_config(heads: MTPHeads, target: PreTrainedModel) -> dict:
    c = heads.cfg
    return {
        "num_hidden_layers": len(decoder_layers(target)),
        "num_nextn_predict_layers": c.depth,
        "hidden_size": c.hidden,
        "intermediate_size": c.intermediate,
        "num_attention_heads": c.heads,
        "num_key_value_heads": c.heads,
        "rms_norm_eps": c.eps,
        "rope_theta": c.rope_theta,
        "vocab_size": int(target.get_output_embeddings().weight.shape[0]),
        "adaspec": {"kind": "mtp", **c.to_dict()},
    }


def export_mtp_deepseek(heads: MTPHeads, target: PreTrainedModel, path: str | os.PathLike) -> None:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    save_file(deepseek_tensors(heads, target), str(out / WEIGHTS))
    (out / "config.json").write_text(json.dumps(deepseek_config(heads, target), indent=2) + "\n")


def export_command(request: ExportRequest) -> None:
    """`adaspec export` of MTP modules: DeepSeek-V3's MTP-layer names, for conversion tools (no server runs them)."""
    request.refuse_format("mtp")
    target = request.target_model()
    if target is None:
        raise AdaspecError(
            "MTP modules are exported with their target's shared embedding, norm and head: pass --target"
        )
    export_mtp_deepseek(load_mtp(request.head), target, request.output)
    warn_unservable("these MTP modules", [MTP_REASON])
    print(f"wrote MTP modules under DeepSeek-V3's MTP-layer names to {request.output}")
