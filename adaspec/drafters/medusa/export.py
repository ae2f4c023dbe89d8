"""Medusa heads saved in the layout vLLM's Medusa drafter loads, which is also adaspec's own checkpoint.

Layout (vllm/model_executor/models/medusa.py and vllm/transformers_utils/configs/medusa.py):
`blocks.{h}.layers.{l}.weight` [H, H] (+ `.bias` [H] when `medusa_fc_bias`), `lm_heads.{h}.weight` [V, H];
with `original_lm_head` one shared head, stored as `lm_heads.0.weight`. config.json carries the fields
vLLM's MedusaConfig reads (hidden_size, vocab_size, num_heads, num_hidden_layers, max_paths, topk,
truncated_vocab_size) plus `medusa_fc_bias` and `original_lm_head`, which its model reads with getattr
and defaults to False: Medusa's own blocks have a bias, so it is written explicitly. vLLM ignores tensor
names it does not know and leaves missing ones uninitialised, so the names must be exact. Served heads
read vLLM's target hidden state, the final normed one, as these heads are trained on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import PreTrainedModel

from adaspec.drafters.family import ExportRequest, Served
from adaspec.drafters.head_checkpoint import WEIGHTS, config_from_entry, load_strict, read_config_entry, read_weights
from adaspec.drafters.medusa.model import MedusaConfig, MedusaHeads
from adaspec.errors import AdaspecError
from adaspec.models.servable import VLLM_VERSION


def vllm_config(cfg: MedusaConfig) -> dict:
    return {
        "architectures": ["MedusaModel"],
        "model_type": "medusa",
        "hidden_size": cfg.hidden,
        "vocab_size": cfg.vocab,
        "truncated_vocab_size": cfg.vocab,
        "num_heads": cfg.heads,
        "num_hidden_layers": cfg.layers,
        "max_paths": 64,
        "topk": 10,
        "medusa_fc_bias": cfg.bias,
        "original_lm_head": cfg.shared_head,
        "adaspec": {"kind": "medusa", **cfg.to_dict()},
        "adaspec_export": {"server": "vllm", "checked_with": f"vllm {VLLM_VERSION}"},
    }


def save_medusa(
    heads: MedusaHeads, path: str | os.PathLike, target: PreTrainedModel | None = None, state_dict: dict | None = None
) -> None:
    """Write config.json and model.safetensors (`state_dict`: the weights to write, default the heads').
    vLLM loads a shared head from the draft checkpoint (`lm_heads.0.weight`): heads sharing the target's
    head get it from `target`; without one (training checkpoints) adaspec still loads them, vLLM not."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = heads.state_dict() if state_dict is None else state_dict
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if heads.cfg.shared_head and target is not None:
        tensors["lm_heads.0.weight"] = target.get_output_embeddings().weight.detach().contiguous().cpu()
    save_file(tensors, str(out / WEIGHTS))
    (out / "config.json").write_text(json.dumps(vllm_config(heads.cfg), indent=2) + "\n")


def load_medusa(path: str | os.PathLike, device: str | torch.device | None = None) -> MedusaHeads:
    """Heads saved by `save_medusa` (identical logits)."""
    meta = read_config_entry(path, "adaspec", "an adaspec Medusa checkpoint")
    if meta.pop("kind", None) != "medusa":
        raise AdaspecError(f"{path} holds no Medusa heads")
    heads = MedusaHeads(config_from_entry(MedusaConfig, meta, path))
    tensors = read_weights(path)
    if heads.cfg.shared_head:
        tensors.pop("lm_heads.0.weight", None)  # the target's own head is used
    load_strict(heads, tensors, path)
    dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
    return heads.to(dtype=dtype, device=device).eval()


def serve_vllm(path: str, target: PreTrainedModel, out: Path) -> Served:
    """The family's vLLM export: the heads saved in `path` with the target's head where they share it."""
    save_medusa(load_medusa(path), out, target)
    return Served("medusa", str(out))


def export_command(request: ExportRequest) -> None:
    """`adaspec export` of Medusa heads: vLLM's MedusaModel in the requested dtype."""
    request.refuse_format("medusa")
    target = request.target_model()
    heads = load_medusa(request.head).to(request.dtype)
    if heads.cfg.shared_head and target is None:
        raise AdaspecError(
            "these Medusa heads share the target's lm_head, which vLLM reads from the export: pass --target"
        )
    # transformers wraps PreTrainedModel.to in functools.wraps(nn.Module.to), which mypy reads as unbound (self first)
    save_medusa(heads, request.output, target.to(request.dtype) if target is not None else None)  # type: ignore[arg-type]
    print(f"wrote Medusa heads (vLLM's MedusaModel) to {request.output}")
