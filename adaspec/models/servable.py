"""What vLLM can serve, checked before a model or head is written, so the user hears it in one line then
and not from the server later. Pure functions of a transformers config (or its dict); no heavy imports.

Checked against vLLM 0.32.0 (`VLLM_VERSION`):
- head sizes: its CPU attention backend takes exactly `SERVABLE_HEAD_SIZES`
  (vllm/v1/attention/backends/cpu_attn.py `get_supported_head_sizes`; the GPU backends were not tried here);
- EAGLE-3 and DFlash read auxiliary hidden states of the target, which only target families implementing
  `SupportsEagle3` provide (llama.py, qwen2.py, qwen3.py, ...; not GPT-NeoX or GPT-2). DFlash's non-causal
  block runs on the CPU build (cpu_attn.py `supports_non_causal`; loaded and decoded there by
  tests/serving/test_vllm_engine.py);
- MTP: vLLM's MTP drafters exist only for targets trained with their own MTP layers (DeepSeek-V3, MiMo,
  Qwen3-Next, ...), none of which adaspec's modules are.
"""

from __future__ import annotations

from typing import Any

from adaspec.errors import warn

VLLM_VERSION = "0.32.0"
SERVABLE_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# model_type of the target families whose vLLM model exposes auxiliary hidden states (SupportsEagle3)
AUX_HIDDEN_FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "granite",
    "minicpm",
    "gpt_oss",
    "deepseek_v2",
    "deepseek_v3",
)
MTP_REASON = (
    "vLLM serves MTP drafters only for targets trained with their own MTP layers (DeepSeek-V3, MiMo, "
    "Qwen3-Next, ...); adaspec's MTP modules have no vLLM model"
)


def _get(config: Any, *names: str) -> Any:
    for name in names:
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if value is not None:
            return value
    return None


def head_size(config: Any) -> int | None:
    """Attention head size of a transformers config (or its dict); None when it has no attention."""
    explicit = _get(config, "head_dim")
    if explicit:
        return int(explicit)
    hidden, heads = _get(config, "hidden_size", "n_embd"), _get(config, "num_attention_heads", "n_head")
    return int(hidden) // int(heads) if hidden and heads else None


def head_size_problem(config: Any) -> str | None:
    """Why vLLM's attention cannot run a model of this config, or None."""
    size = head_size(config)
    if size is None or size in SERVABLE_HEAD_SIZES:
        return None
    return (
        f"head size {size} is not one vLLM's attention takes ({', '.join(map(str, SERVABLE_HEAD_SIZES))}); "
        f"choose hidden size / heads from that set"
    )


def aux_hidden_problem(target_config: Any, method: str) -> str | None:
    """Why vLLM cannot serve a drafter reading auxiliary hidden states (EAGLE-3, DFlash) on this target."""
    family = _get(target_config, "model_type")
    if family in AUX_HIDDEN_FAMILIES:
        return None
    return (
        f"vLLM's {method} reads auxiliary hidden states, which its {family} models do not expose "
        f"(targets: {', '.join(AUX_HIDDEN_FAMILIES)})"
    )


def eagle3_target_problem(target_config: Any) -> str | None:
    """Why vLLM cannot serve an EAGLE-3 head on this target, or None."""
    return aux_hidden_problem(target_config, "EAGLE-3")


def warn_unservable(what: str, problems: list[str | None]) -> bool:
    """One warning line per problem found ("<what> cannot be served by vLLM: <why>"); True when none."""
    found = [p for p in problems if p]
    for problem in found:
        warn(f"{what} cannot be served by vLLM {VLLM_VERSION}: {problem}")
    return not found
