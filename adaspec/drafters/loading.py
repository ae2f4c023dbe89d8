"""A drafter from a saved directory: `--drafter NAME` picks the family in `FAMILIES`, whose drafter's `load`
reads it; `saved_family` tells which family's train-head checkpoint a directory holds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Protocol, cast

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec.decoding.drafter import Drafter
from adaspec.drafters import FAMILIES
from adaspec.drafters.family import Family
from adaspec.drafters.target_record import check_record
from adaspec.errors import AdaspecError


class DrafterClass(Protocol):
    """What `Family.drafter` (typed `type` there) is: a drafter class with its `load`."""

    def load(self, path: str, target: PreTrainedModel, vocab: int | None) -> Drafter: ...


def saved_family(path: str | os.PathLike) -> Family:
    """The family whose train-head checkpoint (or adaspec export of one) `path` holds, by its config.json."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdaspecError(f"{path} is not a head checkpoint (no readable config.json)") from exc
    found = [f for f in FAMILIES.values() if f.recognizes and isinstance(config, dict) and f.recognizes(config)]
    if not found:
        raise AdaspecError(
            f"{path} holds no adaspec heads (its config.json names none of "
            f"{', '.join(f.name for f in FAMILIES.values() if f.recognizes)})"
        )
    return found[0]


def load_drafter(
    kind: str,
    path: str | os.PathLike,
    target: PreTrainedModel,
    vocab: int | None = None,
    strict: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Drafter:
    """The drafter of family `kind` (a name in FAMILIES) saved in `path`, fitted to `target`; a head is first
    checked to be of that family and against the target it was trained on (adaspec.drafters.target_record)."""
    if kind not in FAMILIES:
        raise AdaspecError(f"unknown drafter {kind!r}; choose one of {', '.join(FAMILIES)}")
    family = FAMILIES[kind]
    if not Path(path).is_dir():
        raise AdaspecError(f"{kind} drafter directory not found: {path}")
    if family.recognizes is not None:  # a train-head checkpoint
        saved = saved_family(path)
        if saved is not family:
            raise AdaspecError(f"{path} holds {saved.name} heads, not {kind}")
        check_record(path, target, strict, tokenizer)
    return cast(DrafterClass, family.drafter).load(str(path), target, vocab)
