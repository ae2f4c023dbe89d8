"""EAGLE heads as vLLM and SGLang load them, and back into adaspec.

EAGLE-3 (`LlamaForCausalLMEagle3`; vLLM `Eagle3LlamaForCausalLM`, vllm/model_executor/models/llama_eagle3.py;
SGLang `LlamaForCausalLMEagle3`, python/sglang/srt/models/llama_eagle3.py): a Llama config with
num_hidden_layers 1 and draft_vocab_size, and weights fc.weight, midlayer.* (Llama decoder-layer names plus
hidden_norm), norm.weight, lm_head.weight, d2t (int64 offsets), t2d (bool), and embed_tokens.weight (both
loaders accept it; the servers then share the target's embedding when widths match). At full vocabulary
vLLM 0.32 has no parameter for d2t (`draft_id_to_target_id` is None when the sizes match) and refuses the
load, so the vLLM layout (`server="vllm"`, the default) leaves d2t/t2d out there; SGLang's keeps them.

Aux layers: the servers default to capturing (2, L//2, L-3); other choices must be written, and the two
loaders read them in different conventions: vLLM reads the top-level `eagle_aux_hidden_state_layer_ids`
as capture indices (the INPUT of decoder layer i, i.e. adaspec layer i - 1), SGLang reads
`eagle_config.eagle_aux_hidden_state_layer_ids` as layer outputs (it adds 1 itself; vLLM only looks there
when the top-level key is absent). Both keys are written, each in its loader's convention. Neither server
can capture the last decoder layer's output, nor the same layer twice, so such heads are refused.

EAGLE-1 (SGLang `LlamaForCausalLMEagle`, python/sglang/srt/models/llama_eagle.py; vLLM
`EagleLlamaForCausalLM`, vllm/model_executor/models/llama_eagle.py): fc (2H -> H), layers.0.* without
input_layernorm, embed_tokens.weight; no lm_head (both servers use the target's). The two servers disagree
on two points, so the layout depends on `server`:
- the architecture: vLLM prefixes "Eagle" to every name it is given for method "eagle" unless the name
  starts with it, so it resolves only `EagleLlamaForCausalLM`; SGLang registers `LlamaForCausalLMEagle`.
- fc.bias: vLLM's fc has none and refuses the tensor; SGLang's always has one (so zeros are written for a
  head trained without one). A head trained with a bias (`fc_bias`) cannot be served by vLLM exactly.

`config.json` also carries the head's adaspec config under "adaspec", so `load_exported` rebuilds it
exactly; heads exported elsewhere load from the Llama keys alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel

from adaspec.drafters.eagle.model import EagleConfig, EagleHead, aux_layers_problem
from adaspec.drafters.family import ExportRequest, Served
from adaspec.errors import AdaspecError
from adaspec.models.servable import VLLM_VERSION, eagle3_target_problem, head_size_problem, warn_unservable
from adaspec.models.target import default_aux_layers

EAGLE3_ARCH = "LlamaForCausalLMEagle3"
EAGLE1_ARCH = "LlamaForCausalLMEagle"  # SGLang's name
EAGLE1_VLLM_ARCH = "EagleLlamaForCausalLM"
EAGLE1_ARCHS = (EAGLE1_ARCH, EAGLE1_VLLM_ARCH)
SERVERS = ("vllm", "sglang")
WEIGHTS = "model.safetensors"
# what each server is told a head of each variant is (vLLM's speculative method, SGLang's --speculative-algorithm)
METHODS = {"vllm": {"eagle3": "eagle3", "eagle1": "eagle"}, "sglang": {"eagle3": "EAGLE3", "eagle1": "EAGLE"}}


def server_aux_ids(cfg: EagleConfig) -> list[int]:
    """The aux layers as vLLM capture indices (input of decoder layer i = adaspec layer i - 1)."""
    return [i + 1 for i in cfg.hidden_layers]


def server_default_aux_ids(num_layers: int) -> list[int]:
    return [2, num_layers // 2, num_layers - 3]


def _llama_config(cfg: EagleConfig, arch: str, dtype: torch.dtype) -> dict[str, Any]:
    out: dict[str, Any] = {
        "architectures": [arch],
        "model_type": "llama",
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "num_hidden_layers": 1,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": cfg.max_position_embeddings,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    out.update({k: v for k, v in cfg.extra.items() if k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    return out


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in state.items()
    }


def _write(out_dir: str | Path, config: dict[str, Any], weights: dict[str, torch.Tensor], server: str) -> Path:
    config["adaspec_export"] = {
        "server": server,
        "checked_with": f"vllm {VLLM_VERSION}" if server == "vllm" else "sglang loader source (not run here)",
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(weights, str(out / WEIGHTS), metadata={"format": "pt"})
    return out


def check_exportable_aux_layers(cfg: EagleConfig) -> None:
    problem = aux_layers_problem(cfg)
    if problem:
        raise AdaspecError(problem)


def _check_server(server: str) -> None:
    if server not in SERVERS:
        raise AdaspecError(f"unknown server {server!r}; choose one of: {', '.join(SERVERS)}")


def export_eagle3(head: EagleHead, out_dir: str | Path, dtype: torch.dtype | None = None, server: str = "vllm") -> Path:
    """Write `head` (EAGLE-3) as a `LlamaForCausalLMEagle3` directory for `server` (vllm or sglang); weights
    in `dtype` (default: as trained)."""
    cfg = head.config
    _check_server(server)
    if cfg.variant != "eagle3":
        raise AdaspecError(f"export_eagle3 needs an EAGLE-3 head, this one is {cfg.variant}")
    check_exportable_aux_layers(cfg)
    state = head.state_dict()
    if server == "vllm" and cfg.draft_vocab_size == cfg.vocab_size:
        state = {k: v for k, v in state.items() if k not in ("d2t", "t2d")}
    weights = _cast(state, dtype)
    config = _llama_config(cfg, EAGLE3_ARCH, weights["fc.weight"].dtype)
    config["draft_vocab_size"] = cfg.draft_vocab_size
    if cfg.target_hidden_size != cfg.hidden_size:
        config["target_hidden_size"] = cfg.target_hidden_size
    if server_aux_ids(cfg) != server_default_aux_ids(cfg.target_num_layers):
        config["eagle_aux_hidden_state_layer_ids"] = server_aux_ids(cfg)  # vLLM
        config["eagle_config"] = {
            "eagle_aux_hidden_state_layer_ids": list(cfg.hidden_layers),  # SGLang
            "use_aux_hidden_state": True,
        }
    config["adaspec"] = cfg.to_dict()
    return _write(out_dir, config, weights, server)


def export_eagle1(head: EagleHead, out_dir: str | Path, dtype: torch.dtype | None = None, server: str = "vllm") -> Path:
    """Write `head` (EAGLE-1/2) as `server` loads it: vLLM's `EagleLlamaForCausalLM` (no fc bias) or SGLang's
    `LlamaForCausalLMEagle` (fc bias, zeros when the head has none); the target's lm_head is not written."""
    cfg = head.config
    _check_server(server)
    if cfg.variant != "eagle1":
        raise AdaspecError(f"export_eagle1 needs an EAGLE-1 head, this one is {cfg.variant}")
    state = {k: v for k, v in head.state_dict().items() if k not in ("lm_head.weight", "d2t", "t2d")}
    if server == "sglang":
        state.setdefault("fc.bias", torch.zeros(cfg.hidden_size, dtype=head.fc.weight.dtype))
    elif "fc.bias" in state:
        if float(state["fc.bias"].abs().max()) > 0:
            raise AdaspecError(
                "this EAGLE-1 head was trained with an fc bias, which vLLM's EagleLlamaForCausalLM "
                "lacks: export it for SGLang (--server sglang), or train it without (the default)"
            )
        del state["fc.bias"]
    weights = _cast(state, dtype)
    config = _llama_config(cfg, EAGLE1_VLLM_ARCH if server == "vllm" else EAGLE1_ARCH, weights["fc.weight"].dtype)
    config["adaspec"] = cfg.to_dict()
    return _write(out_dir, config, weights, server)


# ---- the family's exports (adaspec.drafters.family) ----


def servable_variant(target: dict[str, Any]) -> str:
    """EAGLE-3 where vLLM can read three distinct auxiliary hidden states of the target (a family exposing
    them, deep enough for three layers below the last), else EAGLE-1."""
    layers = int(target.get("num_hidden_layers") or target.get("n_layer") or 0)
    distinct = layers >= 2 and len(set(default_aux_layers(layers))) == 3
    return "eagle3" if eagle3_target_problem(target) is None and distinct else "eagle1"


def serve(server: str, path: str, out: Path) -> Served:
    """The head saved in `path` in `server`'s layout (float32), in its own variant."""
    head = EagleHead.from_pretrained(path)
    write = export_eagle3 if head.config.variant == "eagle3" else export_eagle1
    return Served(METHODS[server][head.config.variant], str(write(head, out, torch.float32, server=server)))


def export_command(request: ExportRequest) -> None:
    """`adaspec export` of an EAGLE head: its variant (or --format, which must be it) in --server's layout,
    with one warning line per reason vLLM cannot serve it."""
    head = EagleHead.from_pretrained(request.head)
    fmt = request.format or head.config.variant
    if fmt != head.config.variant:
        raise AdaspecError(f"{request.head} is an {head.config.variant} head; it cannot be exported as {fmt}")
    write = export_eagle3 if fmt == "eagle3" else export_eagle1
    out = write(head, request.output, request.dtype, server=request.server)
    target_config = request.target_config()
    if request.server == "vllm":
        problems = [head_size_problem({"head_dim": head.config.head_dim})]
        if fmt == "eagle3" and target_config is not None:
            problems.append(eagle3_target_problem(target_config))
        warn_unservable(f"this {fmt} head", problems)
    print(f"wrote {fmt} head ({request.server} layout) to {out}")


# ---- re-import ----


def _num_layers(target: PreTrainedModel) -> int:
    return int(getattr(target.config, "num_hidden_layers", None) or target.config.n_layer)


def _config_from_llama(config: dict[str, Any], target: PreTrainedModel) -> EagleConfig:
    """An EagleConfig from the Llama keys of a head exported by another tool, for the given target."""
    variant = "eagle3" if EAGLE3_ARCH in config.get("architectures", []) else "eagle1"
    aux = None
    if variant == "eagle3":
        if config.get("eagle_aux_hidden_state_layer_ids"):  # vLLM's capture indices
            aux = tuple(i - 1 for i in config["eagle_aux_hidden_state_layer_ids"])
        elif (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids"):  # SGLang's
            aux = tuple(config["eagle_config"]["eagle_aux_hidden_state_layer_ids"])
    hidden = config["hidden_size"]
    return EagleConfig(
        hidden_size=hidden,
        target_hidden_size=config.get("target_hidden_size", hidden),
        vocab_size=config["vocab_size"],
        draft_vocab_size=config.get("draft_vocab_size") or config["vocab_size"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        intermediate_size=config["intermediate_size"],
        target_num_layers=_num_layers(target),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=config.get("rope_theta", 10000.0),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        aux_layers=aux,
        variant=variant,
        head_dim=config.get("head_dim"),
    )


def load_exported(path: str | Path, target: PreTrainedModel | None = None) -> EagleHead:
    """The EagleHead in an exported directory. EAGLE-1 heads need `target` (their lm_head is the target's);
    a head without embed_tokens.weight takes the target's embedding."""
    root = Path(path)
    if not (root / "config.json").is_file() or not (root / WEIGHTS).is_file():
        raise AdaspecError(f"{path} is not an exported EAGLE head (needs config.json and {WEIGHTS})")
    config = json.loads((root / "config.json").read_text())
    arch = config.get("architectures", [])
    if EAGLE3_ARCH not in arch and not set(EAGLE1_ARCHS) & set(arch):
        raise AdaspecError(
            f"{path} holds a {arch} model, not an EAGLE head ({EAGLE3_ARCH} or {' / '.join(EAGLE1_ARCHS)})"
        )
    if "adaspec" in config:
        cfg = EagleConfig.from_dict(config["adaspec"])
    elif target is None:
        raise AdaspecError(f"{path} was not exported by adaspec: pass its target to load it")
    else:
        cfg = _config_from_llama(config, target)
    weights = load_file(str(root / WEIGHTS))
    head = EagleHead(cfg)
    state = head.state_dict()
    if cfg.variant == "eagle1":
        if target is None:
            raise AdaspecError("an EAGLE-1 head uses its target's lm_head: pass the target to load it")
        weights["lm_head.weight"] = target.get_output_embeddings().weight[: cfg.vocab_size]
        if head.fc.bias is None and "fc.bias" in weights:
            if weights["fc.bias"].abs().max() > 0:
                raise AdaspecError("the exported fc.bias is not zero but the head config has no fc bias")
            del weights["fc.bias"]
    if "embed_tokens.weight" not in weights:
        if target is None:
            raise AdaspecError("this head has no embed_tokens.weight: pass its target to load it")
        weights["embed_tokens.weight"] = cast(torch.Tensor, target.get_input_embeddings().weight)[: cfg.vocab_size]
    for name in ("d2t", "t2d"):
        weights.setdefault(name, state[name])
    missing, unexpected = sorted(set(state) - set(weights)), sorted(set(weights) - set(state))
    if missing or unexpected:
        raise AdaspecError(f"{path} does not match its config: missing {missing}, unexpected {unexpected}")
    for name, value in weights.items():
        if tuple(value.shape) != tuple(state[name].shape):
            raise AdaspecError(
                f"{path}: {name} has shape {tuple(value.shape)}, the config implies {tuple(state[name].shape)}"
            )
    head.load_state_dict({k: v.to(state[k].dtype) for k, v in weights.items()})
    return head.eval()
