"""Pieces shared by every command's options dataclass: flag help metadata, bounds and checks."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

from adaspec.errors import AdaspecError

# sizes a user types, bounded before anything is allocated: 128k positions, and 1M tokens per micro-batch
# (its logits alone take tokens x vocabulary x 4 bytes: 128 GB at a 32k vocabulary; --grad-accum goes further)
MAX_LENGTH = 131072
MAX_BATCH_TOKENS = 1 << 20


def helptext(text: str, **extra: Any) -> dict:
    """Field metadata: the flag's --help text (adaspec.cli builds the flag from the field)."""
    return {"help": text, **extra}


def strict_field() -> Any:
    """`--strict`, declared once for every command that loads a head onto a target."""
    return field(
        default=False,
        metadata=helptext("refuse a head trained on other weights of the target's shape (default: a one-line warning)"),
    )


def renamed(cls: type) -> dict[str, str]:
    """Old name -> new name of the options the options dataclass `cls` renamed (its `RENAMED`). For one release
    the old flag and config key still set the option, with a one-line notice (adaspec.cli, adaspec.config), and
    a run recorded under the old name still resumes (adaspec.training.run_fingerprint)."""
    return dict(getattr(cls, "RENAMED", {}))


def rename_notice(old: str, new: str) -> str:
    return f"{old} is now {new}; the old name goes in the next release"


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def command_line(command: str, opts: Any) -> str:
    """The `adaspec <command>` line that reproduces the options dataclass `opts` (options at their defaults
    and fields without a flag omitted)."""
    import shlex

    words = ["adaspec", command]
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        )
        if value == default or value is None or f.metadata.get("cli") is False:
            continue
        if isinstance(value, bool):
            words.append(flag(f.name) if value else "--no-" + flag(f.name)[2:])
        elif isinstance(value, list):
            words += [flag(f.name), *map(str, value)]
        else:
            words += [flag(f.name), str(value)]
    return shlex.join(words)


def check_finite(opts: Any) -> None:
    """Every float option must be a finite number (argparse's float() accepts nan and inf)."""
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise AdaspecError(f"{flag(f.name)} must be a finite number, got {v}")


def check_range(
    opts: Any, name: str, low: float | None = None, high: float | None = None, low_open: bool = False
) -> None:
    """`opts.<name>` in [low, high] ((low, high] with `low_open`); None bounds are unchecked."""
    value = getattr(opts, name)
    if value is None:
        return
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        if high is None:
            want = f"{'>' if low_open else '>='} {low}"
        else:
            want = f"in {'(' if low_open else '['}{low}, {high}]"
        raise AdaspecError(f"{flag(name)} must be {want}, got {value}")
