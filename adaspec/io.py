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
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """`atomic_write_text` of `obj` as JSON."""
    atomic_write_text(path, json.dumps(obj, indent=indent, default=str))
