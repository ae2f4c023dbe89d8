"""A draft model as the servers load it: the model folder itself (vLLM's draft_model method, SGLang's
STANDALONE algorithm), copied without what training left beside it (checkpoints, logs)."""

from __future__ import annotations

import shutil
from pathlib import Path

from adaspec.drafters.family import Served

# the server's name for a separate draft model
METHODS = {"vllm": "draft_model", "sglang": "STANDALONE"}


def serve(server: str, path: str, out: Path) -> Served:
    """The draft model in `path` for `server`: a folder copied to `out`, a hub id as it is (the server fetches it)."""
    if not Path(path).is_dir():
        return Served(METHODS[server], path)
    shutil.copytree(path, out, ignore=shutil.ignore_patterns("last*", "best", "logs", "*.json.tmp"), dirs_exist_ok=True)
    return Served(METHODS[server], str(out))
