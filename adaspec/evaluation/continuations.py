"""The target's greedy continuations of evaluation prompts, cached on disk by what produced them."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from adaspec.decoding import acceptance
from adaspec.io import atomic_write_json

CACHE_FORMAT = 1
Log = Callable[[str], None]


def weights_fingerprint(model: PreTrainedModel) -> str:
    """Hash of a loaded model's config and parameters, for callers that have no checkpoint path."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def cached_continuations(
    target: PreTrainedModel,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int,
    cache_dir: str | os.PathLike | None,
    key_fields: dict[str, Any],
    log: Log | None = None,
) -> tuple[acceptance.Continuations, dict[str, Any]]:
    """The target's greedy continuations of `prompts`, read from `cache_dir` when an entry matches.

    The key hashes `key_fields` (target fingerprint, task, split, n_prompts, max_new_tokens, max prompt
    length) and the prompt ids themselves, so a changed tokenizer or data file never reuses stale text.
    """
    fields = dict(
        key_fields,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        format=CACHE_FORMAT,
        prompts_sha=hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16],
    )
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"continuations-{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == fields:
                conts = acceptance.Continuations.from_json(stored["continuations"])
                return conts, {"cache_file": str(path), "from_cache": True}
        except (OSError, ValueError, KeyError):
            pass  # unreadable entry: regenerate and overwrite it
    if log:
        log(f"generating the target's greedy continuations of {len(prompts)} prompts")
    conts = acceptance.greedy_continuations(target, prompts, max_new_tokens, eos_token_id, pad_token_id)
    if path is not None:
        # atomic: a concurrent reader sees the old entry or the whole new one
        atomic_write_json(path, {"key": fields, "continuations": conts.to_json()}, indent=None)
    return conts, {"cache_file": str(path) if path else None, "from_cache": False}
