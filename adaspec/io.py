"""Files written whole or not at all: a kill mid-write never leaves a file the next run cannot parse."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a private temporary file and one rename (readers see old or new)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill: no half-written temporary file is left behind
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """`atomic_write_text` of `obj` as JSON."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str))


def user_cache_dir() -> Path:
    """adaspec's own cache folder: $XDG_CACHE_HOME/adaspec, else ~/.cache/adaspec (model folders are never
    written to: they may be read-only hub caches, and a model should not change by being measured)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "adaspec"
