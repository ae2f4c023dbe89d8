"""Reading a head checkpoint (EAGLE, MTP, Medusa): its config entry and its weights, with one-line errors.

A checkpoint is `config.json` holding the head's own config under one key, plus `model.safetensors`. A
truncated or foreign file must not surface as a torch traceback: a missing, unexpected or mis-shaped tensor
is named in one line, and the module is left untouched.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from adaspec.errors import AdaspecError

WEIGHTS = "model.safetensors"
C = TypeVar("C")


def read_config_entry(path: str | os.PathLike, key: str, what: str) -> dict:
    """config.json[key] of the checkpoint at `path`; `what` names the kind in errors ("an MTP checkpoint")."""
    file = Path(path) / "config.json"
    try:
        entry = json.loads(file.read_text())[key]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise AdaspecError(f"{path} is not {what} (no {key!r} in {file.name})") from exc
    if not isinstance(entry, dict):
        raise AdaspecError(f"{path} is not {what} ({key!r} in {file.name} is not an object)")
    return dict(entry)


def adaspec_kind(config: dict[str, Any]) -> Any:
    """config.json's adaspec.kind: what an MTP or Medusa checkpoint (and its export) names itself, else None."""
    entry = config.get("adaspec")
    return entry.get("kind") if isinstance(entry, dict) else None


def config_from_entry(cls: type[C], entry: dict[str, Any], path: str | os.PathLike) -> C:
    """`cls(**entry)` for a head config dataclass, with a missing or unknown field named in one line."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(entry) - set(fields))
    missing = sorted(
        n
        for n, f in fields.items()
        if n not in entry and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if unknown or missing:
        parts = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"has unknown fields {', '.join(unknown)}"] if unknown else []
        )
        raise AdaspecError(f"{path}: the head config {' and '.join(parts)}")
    return cls(**entry)


def check_finite(tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor."""
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise AdaspecError(f"{path}: {name} holds non-finite values (NaN or infinity): not a usable head")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of `path`/model.safetensors."""
    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise AdaspecError(f"{path} has no {WEIGHTS}")
    try:
        return load_file(str(file))
    except (OSError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AdaspecError(f"could not read {file}: {first}") from exc


def load_strict(module: nn.Module, tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """module.load_state_dict(tensors), after checking names and shapes so a mismatch is one line."""
    state = module.state_dict()
    missing = sorted(set(state) - set(tensors))
    unexpected = sorted(set(tensors) - set(state))
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + (
            [f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"] if unexpected else []
        )
        raise AdaspecError(f"{path} does not match its config: {'; '.join(parts)}")
    for name, value in tensors.items():
        if value.shape != state[name].shape:
            raise AdaspecError(
                f"{path}: {name} has shape {tuple(value.shape)}, its config implies {tuple(state[name].shape)}"
            )
    module.load_state_dict(tensors)


class SavedHead:
    """save_pretrained / from_pretrained of a head module (EAGLE, DFlash) whose checkpoint is config.json
    holding {CHECKPOINT_KEY: its config dataclass} and model.safetensors holding every tensor, frozen copies
    included; the class names its key, its config class (with `from_dict`) and what it is in errors."""

    CHECKPOINT_KEY: str
    CHECKPOINT_WHAT: str
    CHECKPOINT_CONFIG: Any
    config: Any

    def save_pretrained(
        self,
        path: str | os.PathLike,
        state_dict: dict[str, torch.Tensor] | None = None,
        safe_serialization: bool = True,
    ) -> None:
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({self.CHECKPOINT_KEY: self.config.to_dict()}, indent=1) + "\n")
        state = state_dict if state_dict is not None else self.state_dict()  # type: ignore[attr-defined]
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / WEIGHTS), metadata={"format": "pt"}
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Any:
        entry = read_config_entry(path, cls.CHECKPOINT_KEY, cls.CHECKPOINT_WHAT)
        head = cls(cls.CHECKPOINT_CONFIG.from_dict(entry, str(path)))  # type: ignore[call-arg]
        load_strict(head, read_weights(path), path)  # type: ignore[arg-type]
        if dtype is not None:
            head.to(dtype)  # type: ignore[attr-defined]
        return head.eval()  # type: ignore[attr-defined]
