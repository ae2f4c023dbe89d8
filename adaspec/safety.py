"""Where a command may write: never over its own inputs, never over a file, never two writers at once.

Every command that writes an output calls `check_output` before any work and holds `output_lock` while it
writes. The lock is `<output>/.adaspec.lock` holding the owner's pid and host; a lock whose process is
gone (killed, crashed) is taken over with a notice, a live one is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from adaspec.errors import AdaspecError

LOCK_NAME = ".adaspec.lock"


def _is_local(path: str | os.PathLike) -> bool:
    return Path(path).expanduser().exists()


def check_output(
    output: str | os.PathLike,
    inputs: dict[str, str | os.PathLike | None],
    *,
    flag: str = "--output",
    kind: str = "directory",
) -> Path:
    """Refuse an output that is, contains or lies inside an input (symlinks resolved), or, for a directory
    output, an existing regular file. `inputs` maps a role ("target", "--data", ...) to a path; None and
    hub ids (no such local path) are skipped. Returns the output path."""
    out = Path(output).expanduser()
    try:
        real = out.resolve(strict=False)
    except (RuntimeError, OSError) as exc:  # a symlink loop
        raise AdaspecError(f"{flag} {output} cannot be resolved: {exc}") from None
    if out.is_symlink() and not out.exists():
        raise AdaspecError(
            f"{flag} {output} is a dangling symlink (to {os.readlink(out)}); remove it or write elsewhere"
        )
    if kind == "directory" and out.exists() and not out.is_dir():
        raise AdaspecError(f"{flag} {output} is an existing file, not a directory")
    if kind == "file" and out.is_dir():
        raise AdaspecError(f"{flag} {output} is a directory, not a file")
    parent = next((p for p in real.parents if p.exists()), None)
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK) and not out.exists():
        raise AdaspecError(f"{flag} {output} cannot be created: {parent} is not writable")
    for role, path in inputs.items():
        if path is None or not _is_local(path):
            continue
        src = Path(path).expanduser().resolve()
        if real == src:
            raise AdaspecError(f"{flag} {output} is the {role} ({path}); write to another folder")
        if real in src.parents:
            raise AdaspecError(f"{flag} {output} contains the {role} ({path}); write to another folder")
        if src in real.parents:
            raise AdaspecError(f"{flag} {output} lies inside the {role} ({path}); write to another folder")
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read_lock(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold `<output>/.adaspec.lock` while the block runs (the folder is created); a second writer gets a
    one-line AdaspecError. `enabled=False` (the non-main processes of a distributed run) does nothing."""
    if not enabled:
        yield
        return
    out = Path(output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(), "argv": sys.argv}
    for attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            pid, host = owner.get("pid"), owner.get("host")
            if attempt == 0 and isinstance(pid, int) and host == me["host"] and not _alive(pid):
                print(f"adaspec: taking over the stale lock {path} (process {pid} is gone)", file=sys.stderr)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue  # another taker may win the O_EXCL race: then it is a live writer
            who = f"process {pid} on {host}" if pid is not None else "another process"
            raise AdaspecError(
                f"{output} is in use by {who} (lock {path}); wait for it, or delete the lock if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    try:
        yield
    finally:
        if _read_lock(path).get("pid") == me["pid"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@contextlib.contextmanager
def guarded_output(
    output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], lock: bool = True, flag: str = "--output"
) -> Iterator[Path]:
    """`check_output` then `output_lock`: the one entry point of commands that write a folder."""
    out = check_output(output, inputs, flag=flag)
    with output_lock(out, enabled=lock):
        yield out
