"""Checkpoints of the training loop: atomic safetensors saves, resume, and the published model.

A save is a directory that `AutoModelForCausalLM.from_pretrained` loads. `last/` also holds the optimizer
and scheduler state; it is written to `last.tmp` and swapped in by two renames, so at every instant
`last` or `last.old` is a finished save and a kill loses at most one save interval.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec.errors import AdaspecError
from adaspec.models import load_model, save_model


def atomic_save(
    accelerator: Accelerator,
    model: torch.nn.Module,
    path: Path,
    extra: dict[str, Any] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Save `model` (and `extra` files: .json as JSON, others with torch.save) to `path`, atomically."""
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model(accelerator.unwrap_model(model), tmp, tokenizer, state_dict)
        for name, obj in (extra or {}).items():
            if name.endswith(".json"):
                (tmp / name).write_text(json.dumps(obj, indent=1))
            else:
                torch.save(obj, tmp / name)
    except BaseException:  # a full disk: the half-written copy goes, the last good checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # a kill between the renames leaves only `.old`, which resume falls back to, and which is not deleted
    # until the new save is in place
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def resumable(out: Path) -> Path | None:
    """The finished save to resume from: `last/`, else `last.old/` (a kill between the renames)."""
    return next((d for d in (out / "last", out / "last.old") if (d / "trainer_state.json").exists()), None)


def restore(saved: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict:
    """Load weights, optimizer and scheduler state from a save; returns its trainer_state.json."""
    state = torch.load(saved / "trainer_state.pt", weights_only=True)
    # through from_pretrained: saved names can differ from module names (transformers 5 saves GPT-NeoX's
    # lm_head as embed_out), and a raw load_state_dict(strict=False) silently skipped such weights
    restored = type(model).from_pretrained(str(saved), dtype=next(model.parameters()).dtype)
    model.load_state_dict(restored.state_dict())
    del restored
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return json.loads((saved / "trainer_state.json").read_text())


def publish(src: Path, dst: Path) -> None:
    """Copy a saved model's files to the output directory, the checkpoint users load."""
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("trainer_state"):
            shutil.copy2(f, dst / f.name)


def load_checkpoint(
    path: str, trust_remote_code: bool = False, load: Callable[..., PreTrainedModel] = load_model
) -> PreTrainedModel:
    """`load` (models.load_model), with a corrupt weights file reported as one line, not a traceback."""
    from safetensors import SafetensorError

    try:
        return load(path, trust_remote_code=trust_remote_code)
    except SafetensorError as exc:
        raise AdaspecError(f"could not load model from {path}: corrupt safetensors file ({exc})") from exc
