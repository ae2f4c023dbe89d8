"""A head drafter from a saved directory, whatever kind it is (the `adaspec.kind` its config.json records)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import PreTrainedModel

from adaspec.drafters.medusa import MedusaDrafter
from adaspec.drafters.mtp import MTPDrafter
from adaspec.errors import AdaspecError

LOADERS = {"mtp": MTPDrafter.load, "medusa": MedusaDrafter.load}


def saved_kind(path: str | os.PathLike) -> str:
    """"mtp" or "medusa" for a directory written by train-head / adaspec.export.{mtp,medusa}."""
    try:
        kind = json.loads((Path(path) / "config.json").read_text())["adaspec"]["kind"]
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise AdaspecError(f"{path} holds no adaspec heads (no 'adaspec' kind in config.json)") from exc
    if kind not in LOADERS:
        raise AdaspecError(f"{path} holds {kind!r} heads; this loader knows {', '.join(LOADERS)}")
    return kind


def load_head_drafter(path: str | os.PathLike, target: PreTrainedModel, vocab: int | None = None
                      ) -> MTPDrafter | MedusaDrafter:
    """The drafter of the heads saved in `path`, on the target's device and dtype."""
    return LOADERS[saved_kind(path)](str(path), target, vocab)
