"""What a head was trained on, recorded beside its weights (`target.json`) and checked wherever it is loaded.

A head reads its target's hidden states and shares its embedding and LM head, so on another target it runs
at α = 0 or fails inside torch. `train-head` writes the target's architecture, hidden size, vocabulary and
depth, its tokenizer's vocabulary and a weights fingerprint; loading refuses a different shape or tokenizer
in one line, and warns on other
weights of the same shape (a fine-tuned target can still use its head) unless `strict`.

The fingerprint samples every parameter (name, shape, and up to 256 evenly strided values), so it costs
microseconds on any model size and still tells a fine-tuned copy from its base.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec.errors import AdaspecError, warn
from adaspec.io import atomic_write_json
from adaspec.models.target import config_dims

RECORD = "target.json"
SHAPE_KEYS = ("architecture", "hidden_size", "num_layers", "vocab_size")


def weights_sample_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 256)
            h.update(f"{name}:{tuple(p.shape)}".encode())
            h.update(flat[::step][:256].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def describe(target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None = None) -> dict[str, Any]:
    layers, hidden = config_dims(target.config)
    out = {
        "architecture": type(target).__name__,
        "hidden_size": int(hidden),
        "num_layers": int(layers),
        "vocab_size": int(target.get_output_embeddings().weight.shape[0]),
        "weights": weights_sample_fingerprint(target),
    }
    if tokenizer is not None:
        out["tokenizer"] = tokenizer_fingerprint(tokenizer)
    return out


def write_record(path: str | os.PathLike, target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    atomic_write_json(Path(path) / RECORD, describe(target, tokenizer))


def check_record(
    path: str | os.PathLike,
    target: PreTrainedModel,
    strict: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Refuse a head trained for another target shape or tokenizer; warn (strict: refuse) on other weights."""
    file = Path(path) / RECORD
    if not file.is_file():
        warn(f"{path} records no target (trained before adaspec kept one): its target was not checked")
        return
    try:
        trained = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise AdaspecError(f"{file} is not readable JSON: {exc}") from exc
    here = describe(target, tokenizer)
    if tokenizer is not None and trained.get("tokenizer") not in (None, here["tokenizer"]):
        raise AdaspecError(
            f"{path} was trained with another tokenizer than this target's (same vocabulary size, other tokens)"
        )
    for key in SHAPE_KEYS:
        if trained.get(key) != here[key]:
            raise AdaspecError(
                f"{path} was trained for a target with {key.replace('_', ' ')} {trained.get(key)}; "
                f"this target has {here[key]}"
            )
    if trained.get("weights") != here["weights"]:
        message = (
            f"{path} was trained on other weights of this target's shape (a fine-tuned copy can still use "
            f"it, at a lower acceptance)"
        )
        if strict:
            raise AdaspecError(message + "; refused by --strict")
        warn(message + "; --strict refuses this")
