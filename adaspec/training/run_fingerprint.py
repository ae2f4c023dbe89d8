"""What defines a training run, stored as `<output>/run_fingerprint.json`, so a rerun resumes only itself.

The fingerprint is every option that changes the result (logistics such as progress bars, the save
interval or the output path excluded; an option added after runs were recorded, marked `omit_at_default` in
its field metadata, only when set to another value than its default, or marked `omit_at` a value, only when
set to another value than that one (what the earlier runs did), so those runs still resume) with each
input path replaced by a fingerprint of its content:
model folders by `models.model_fingerprint` plus their tokenizer files, data files and folders by a hash
of their bytes, a teacher cache by its `cache_key`. Moving an input keeps the run; changing its content
or a setting refuses the rerun, naming the differing fields, until `--overwrite` starts it over.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from adaspec import data as data_lib
from adaspec.errors import AdaspecError
from adaspec.io import atomic_write_json
from adaspec.models import TOKENIZER_FILES, model_fingerprint
from adaspec.options import renamed
from adaspec.safety import guarded_output

FINGERPRINT = "run_fingerprint.json"
FORMAT = 1
# options that never change what a run computes
LOGISTICS = frozenset({"output", "progress", "save_every", "resume", "overwrite", "trust_remote_code", "strict"})
# what a previous run leaves in its output folder (removed by --overwrite; nothing else is touched)
RUN_STATE = (
    "last",
    "last.old",
    "last.tmp",
    "best",
    "best.old",
    "best.tmp",
    "logs",
    FINGERPRINT,
    "run_config.json",
    "train_summary.json",
    "target.json",
    "model.safetensors",
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
    "special_tokens_map.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)
CHECKPOINTS = ("last", "best", "model.safetensors")  # a run that wrote one of these has work to keep
RUN_STATE_GLOBS = (
    "val_continuations*.json",
    "target_responses*.json",
    "model-*.safetensors",
    "model.safetensors.index.json",
)


def _hash_files(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def path_fingerprint(path: str | os.PathLike | None) -> str | None:
    """Content fingerprint of an input: a model folder's weights, config and tokenizer; any other file or
    folder's bytes; a hub id (no such local path) is its own name."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if p.is_file():
        return _hash_files([p], p.parent)
    if not p.is_dir():
        return f"hub:{path}"
    if (p / "config.json").exists():
        tokenizer = _hash_files(sorted(f for f in p.iterdir() if f.name in TOKENIZER_FILES), p)
        return f"{model_fingerprint(p)}-{tokenizer}"
    return _hash_files(sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")), p)


def cache_fingerprint(path: str | os.PathLike | None) -> str | None:
    """A teacher cache is named by its settings' key (its manifest is rewritten on every open)."""
    if path is None:
        return None
    try:
        return str(json.loads((Path(path) / "manifest.json").read_text())["cache_key"])
    except (OSError, ValueError, KeyError):
        return path_fingerprint(path)


def data_fingerprint(opts: Any) -> str:
    """The data a run reads: the --data file or folder, else the built-in task's files."""
    if getattr(opts, "data", None):
        return str(path_fingerprint(opts.data))
    root = Path(opts.data_dir) if opts.data_dir else data_lib.default_data_dir()
    return f"{opts.task}:{path_fingerprint(root / opts.task)}"


def run_fingerprint(opts: Any, inputs: dict[str, Callable[[Any], str | None]]) -> dict:
    """Every result-changing option of `opts`; `inputs` maps an option naming an input to the function
    fingerprinting it (its value is then the fingerprint, not the path)."""
    options = {}
    for f in dataclasses.fields(opts):
        if f.name in LOGISTICS or f.name in ("data", "data_dir"):
            continue
        value = getattr(opts, f.name)
        if f.metadata.get("omit_at_default") and value == f.default:
            continue
        if "omit_at" in f.metadata and value == f.metadata["omit_at"]:
            continue
        options[f.name] = inputs[f.name](value) if f.name in inputs else value
    return {"format": FORMAT, "data": data_fingerprint(opts), **json.loads(json.dumps(options, default=str))}


def differences(old: dict, new: dict) -> list[str]:
    """'field (old vs new)' for every field that differs."""
    return [f"{k} ({old.get(k)} vs {new.get(k)})" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def clear_run(out: Path) -> None:
    """Remove what a previous run left in `out` (only the files a run writes)."""
    for name in RUN_STATE:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    for pattern in RUN_STATE_GLOBS:
        for target in out.glob(pattern):
            target.unlink()


def _has_run(out: Path) -> bool:
    """Whether `out` holds anything a run would resume or reuse (a run that failed before its first
    checkpoint or cached artefact leaves nothing to protect)."""
    return any((out / n).exists() for n in RUN_STATE if n not in (FINGERPRINT, "run_config.json")) or any(
        any(out.glob(p)) for p in RUN_STATE_GLOBS
    )


def check_fingerprint(out: Path, fingerprint: dict, overwrite: bool, names: dict[str, str] | None = None) -> None:
    """Refuse an output holding another run (or a model made without a fingerprint); `overwrite` clears
    whatever run is there instead. Read-only when the fingerprint matches. `names`: old option name -> new
    name (options.renamed), so a run recorded before an option was renamed still resumes."""
    path = out / FINGERPRINT
    old = None
    if path.exists():
        try:
            old = {(names or {}).get(k, k): v for k, v in json.loads(path.read_text()).items()}
        except (ValueError, AttributeError):
            old = {"unreadable": True}
    if not _has_run(out):
        return
    if overwrite:
        clear_run(out)
        return
    if old == fingerprint:
        return
    if old is not None:
        diff = differences(old, fingerprint)
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise AdaspecError(
            f"--output {out} holds a run with other settings or inputs: {shown}; "
            f"use another --output, or --overwrite to start over"
        )
    if _has_run(out):
        raise AdaspecError(
            f"--output {out} holds a model or run without {FINGERPRINT}; "
            f"use another --output, or --overwrite to start over"
        )


@dataclasses.dataclass
class Run:
    """An open run: its output folder and fingerprint (whose input fingerprints key cached artefacts)."""

    output: Path
    fingerprint: dict

    def cache_name(self, stem: str, **key: Any) -> Path:
        """`<output>/<stem>-<hash of key>.json`: a cached artefact named by what produced it."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.output / f"{stem}-{digest}.json"


@contextlib.contextmanager
def open_run(
    opts: Any,
    inputs: dict[str, Callable[[Any], str | None]],
    roles: dict[str, str | None],
    main: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Iterator[Run]:
    """Check the output against the run's inputs (`roles`: role -> path), lock it, and compare or store
    the fingerprint; the block runs the training. On a distributed run only the main process writes."""
    with guarded_output(opts.output, roles, lock=main) as out:
        fingerprint = run_fingerprint(opts, inputs)
        fresh = not _has_run(out)
        if main:
            check_fingerprint(out, fingerprint, getattr(opts, "overwrite", False), renamed(type(opts)))
            atomic_write_json(out / FINGERPRINT, fingerprint)
        barrier()
        try:
            yield Run(out, fingerprint)
        except AdaspecError:
            # refused before its first checkpoint (too few examples, a bad cache, ...): what it cached so far
            # must not make the corrected rerun look like "another run" in this folder
            if main and fresh and not any((out / n).exists() for n in CHECKPOINTS):
                clear_run(out)
            raise
