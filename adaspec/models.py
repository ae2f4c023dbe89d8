"""Model presets built from configs in code, and safe loading/saving of Hugging Face causal LMs.

Tests and the default run never download weights: they build tiny GPT-NeoX / Llama / GPT-2 models from
the presets below. Real users pass a directory or hub id to `load_model`, which only reads safetensors and
never runs remote code unless asked to.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from safetensors import SafetensorError

from adaspec.errors import AdaspecError

# name -> (architecture, hidden size, layers, heads, context). Intermediate size is 4x hidden.
PRESETS: dict[str, tuple[str, int, int, int, int]] = {
    # unit tests: a few thousand parameters
    "tiny-neox": ("gpt_neox", 32, 2, 4, 256),
    "tiny-llama": ("llama", 32, 2, 4, 256),
    "tiny-gpt2": ("gpt2", 32, 2, 4, 256),
    # the `demo` reproduction preset (1k vocabulary: ~1.1M target, ~0.09M draft)
    "neox-demo-target": ("gpt_neox", 128, 4, 4, 512),
    "neox-demo-draft": ("gpt_neox", 32, 2, 2, 512),
    # CPU-scale experiments (parameter counts at a 4k vocabulary)
    "neox-draft-xxs": ("gpt_neox", 32, 2, 2, 1024),  # ~0.16M at a 2k vocabulary
    "neox-draft-xs": ("gpt_neox", 64, 2, 4, 1024),  # ~0.6M
    "neox-target-s": ("gpt_neox", 192, 4, 6, 1024),  # ~2.6M at a 2k vocabulary
    "neox-draft-s": ("gpt_neox", 128, 2, 4, 1024),  # ~1.4M
    "neox-target-m": ("gpt_neox", 256, 6, 8, 1024),  # ~6.8M
    "neox-target-l": ("gpt_neox", 384, 8, 8, 1024),  # ~17M
    "llama-draft-s": ("llama", 128, 2, 4, 1024),
    "llama-target-m": ("llama", 256, 6, 8, 1024),
}


def preset_config(preset: str, vocab_size: int, bos_token_id: int = 0, eos_token_id: int = 0) -> Any:
    """The transformers config of a named preset at the given vocabulary size."""
    if preset not in PRESETS:
        raise AdaspecError(f"unknown model preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    arch, hidden, layers, heads, ctx = PRESETS[preset]
    common = dict(vocab_size=vocab_size, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                             intermediate_size=4 * hidden, max_position_embeddings=ctx, rotary_pct=0.25,
                             use_parallel_residual=True, tie_word_embeddings=False, **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=heads, intermediate_size=4 * hidden,
                           max_position_embeddings=ctx, tie_word_embeddings=False, **common)
    # dropout off: distillation runs must be reproducible and single- vs multi-process comparable
    return GPT2Config(n_embd=hidden, n_layer=layers, n_head=heads, n_positions=ctx, resid_pdrop=0.0,
                      embd_pdrop=0.0, attn_pdrop=0.0, **common)


def build_model(preset: str, vocab_size: int, seed: int = 0, bos_token_id: int = 0,
                eos_token_id: int = 0) -> PreTrainedModel:
    """A freshly initialised model of a preset; the same seed gives the same weights."""
    config = preset_config(preset, vocab_size, bos_token_id, eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None,
               trust_remote_code: bool = False, device: str | torch.device | None = None) -> PreTrainedModel:
    """Load a causal LM from a directory or hub id, safetensors only."""
    local = Path(path)
    if local.exists() or str(path).startswith((".", "/")):
        if not local.is_dir():
            raise AdaspecError(f"model directory not found: {path}")
        if not (local / "config.json").exists():
            raise AdaspecError(f"{path} is not a model directory (no config.json)")
        if not any(local.glob("*.safetensors")):
            raise AdaspecError(f"{path} has no .safetensors weights (only safetensors checkpoints are loaded)")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdaspecError(f"could not load model from {path}: {first}") from exc
    if device is not None:
        model.to(device)
    model.eval()
    return model


def load_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a model."""
    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise AdaspecError(f"could not load tokenizer from {path}: {str(exc).splitlines()[0]}") from exc


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def saved_tokenizer(path: str | os.PathLike, trust_remote_code: bool = False) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved beside a checkpoint, or None for a local folder of weights saved without one
    (then only vocabulary sizes can be compared; AutoTokenizer would invent an empty tokenizer)."""
    local = Path(path)
    if local.is_dir() and not any((local / n).exists() for n in TOKENIZER_FILES):
        return None
    return load_tokenizer(path, trust_remote_code)


def save_model(model: PreTrainedModel, path: str | os.PathLike,
               tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    """Save as a plain safetensors checkpoint that `AutoModelForCausalLM.from_pretrained` loads."""
    Path(path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))


def output_vocab_size(model: PreTrainedModel) -> int:
    """Rows of the model's output head (can exceed its tokenizer's vocabulary by padding)."""
    return int(model.get_output_embeddings().weight.shape[0])


def shared_vocab(*models: PreTrainedModel) -> int:
    """The ids every model scores: logits are compared over the first `shared_vocab` entries."""
    return min(output_vocab_size(m) for m in models)


def check_vocab_compatible(target: PreTrainedModel, draft: PreTrainedModel,
                           target_tokenizer: PreTrainedTokenizerBase | None = None,
                           draft_tokenizer: PreTrainedTokenizerBase | None = None,
                           names: tuple[str, str] = ("target", "draft")) -> None:
    """Raise if the two models cannot share token ids.

    Tokenizers, when given, must map the same strings to the same ids. Output sizes may differ only by
    padding rows beyond the tokenizer's vocabulary (Pythia pads its embedding to a multiple of 128).
    """
    a, b = names
    if target_tokenizer is not None and draft_tokenizer is not None:
        if target_tokenizer.get_vocab() != draft_tokenizer.get_vocab():
            raise AdaspecError(f"{a} and {b} tokenizers have different vocabularies "
                               f"({len(target_tokenizer)} vs {len(draft_tokenizer)} tokens)")
    vt, vd = output_vocab_size(target), output_vocab_size(draft)
    if vt != vd:
        used = len(target_tokenizer) if target_tokenizer is not None else None
        if used is None or used > min(vt, vd):
            raise AdaspecError(f"{a} and {b} have different vocabulary sizes ({vt} vs {vd})")


def count_params(model: torch.nn.Module, non_embedding: bool = False) -> int:
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        # tied input/output embeddings share one tensor: subtract it once
        embeddings = {m.weight.data_ptr(): m.weight for m in (model.get_input_embeddings(),
                                                               model.get_output_embeddings())}
        total -= sum(w.numel() for w in embeddings.values())
    return total


def model_fingerprint(path: str | os.PathLike) -> str:
    """Hash of a checkpoint's config and weight files: caches made for one model refuse another."""
    h = hashlib.sha256()
    for f in sorted(Path(path).glob("*.safetensors")) + [Path(path) / "config.json"]:
        if f.exists():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]
