"""A drafter from a saved directory: `--drafter NAME` picks the class in `DRAFTERS`, whose `load` reads it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec.drafters import DRAFTERS
from adaspec.drafters.target_record import check_record
from adaspec.errors import AdaspecError


def saved_kind(path: str | os.PathLike) -> str:
    """"mtp" or "medusa" for a directory written by train-head / adaspec.export.{mtp,medusa}."""
    try:
        kind = json.loads((Path(path) / "config.json").read_text())["adaspec"]["kind"]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise AdaspecError(f"{path} holds no adaspec heads (no 'adaspec' kind in config.json)") from exc
    if kind not in ("mtp", "medusa"):
        raise AdaspecError(f"{path} holds {kind!r} heads, not mtp or medusa heads")
    return kind


def load_drafter(kind: str, path: str | os.PathLike, target: PreTrainedModel, vocab: int | None = None,
                 strict: bool = False, tokenizer: PreTrainedTokenizerBase | None = None):
    """The drafter of kind `kind` ("lm", "eagle", "mtp", "medusa") saved in `path`, fitted to `target`; a
    head is first checked against the target it was trained on (adaspec.drafters.target_record)."""
    if kind not in DRAFTERS:
        raise AdaspecError(f"unknown drafter {kind!r}; choose one of {', '.join(DRAFTERS)}")
    if not Path(path).is_dir():
        raise AdaspecError(f"{kind} drafter directory not found: {path}")
    if kind in ("mtp", "medusa") and saved_kind(path) != kind:
        raise AdaspecError(f"{path} holds {saved_kind(path)} heads, not {kind}")
    if kind != "lm":
        check_record(path, target, strict, tokenizer)
    return DRAFTERS[kind].load(str(path), target, vocab)
