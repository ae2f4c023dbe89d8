"""Pieces shared by every command's options dataclass: flag help metadata and the data selection."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adaspec import chat
from adaspec import data as data_lib
from adaspec.distill import cold_start, selection
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
    return field(default=False, metadata=helptext(
        "refuse a head trained on other weights of the target's shape (default: a one-line warning)"))


def cold_start_field() -> Any:
    """`--cold-start`, declared once for `distill` and `train-head` (adaspec.distill.cold_start). Runs recorded
    before it existed trained as "off": at "off" it stays out of the run fingerprint, so they still resume.
    The help's "%%" is argparse's escape for a percent sign."""
    return field(default=cold_start.DEFAULT, metadata=helptext(
        "what --method adaspec does when the draft starts untrained (distill without --draft-init; train-head "
        "without --init): ref = start from the --ref model's weights; warmup = every response token for the "
        f"first {selection.WARMUP_FRACTION:.0%}% of the steps, then the top --k; linear = the kept fraction from "
        "1 down to --k over the steps; off = the top --k from the first step, which an untrained model may never "
        "recover from. The default is the remedy measured best (docs/cold_start.md); the run records the one "
        "it used (off where none applies)", omit_at="off"))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def command_line(command: str, opts: Any) -> str:
    """The `adaspec <command>` line that reproduces the options dataclass `opts` (options at their defaults
    and fields without a flag omitted)."""
    import shlex
    words = ["adaspec", command]
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
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


def check_range(opts: Any, name: str, low: float | None = None, high: float | None = None,
                low_open: bool = False) -> None:
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


@dataclass(kw_only=True)
class DataOptions:
    """Which examples a command encodes; `distill` and `cache` must agree on them, so they share this."""

    task: str | None = field(default="gsm8k", metadata=helptext(
        f"built-in task ({', '.join(data_lib.TASKS)}), or {data_lib.CORPUS}: all of their splits mixed, to pretrain on"))
    data: str | None = field(default=None, metadata=helptext(
        "a JSONL file of your own (or hub:<dataset> when online) instead of --task"))
    prompt_field: str = field(default="prompt", metadata=helptext("prompt field of --data records"))
    response_field: str = field(default="response", metadata=helptext("response field of --data records"))
    data_dir: str | None = field(default=None, metadata=helptext("folder of the built-in task data"))
    limit: int | None = field(default=None, metadata=helptext("use only the first N training examples"))
    max_length: int = field(default=256, metadata=helptext("truncate prompt+response to this many tokens"))
    chat_template: str | None = field(default=None, metadata=helptext(
        f"chat template for chat records: a Jinja file or a built-in name ({', '.join(chat.BUILTIN_TEMPLATES)}); "
        "replaces the target tokenizer's own and is saved with the model"))

    def __post_init__(self) -> None:
        check_finite(self)
        if self.chat_template is not None:
            chat.resolve_template(self.chat_template)
        if self.task is None and self.data is None:
            raise AdaspecError("give --task or --data")
        if self.task is not None and self.data is None and self.task not in (*data_lib.TASKS, data_lib.CORPUS):
            raise AdaspecError(f"unknown task {self.task!r}; choose one of {', '.join(data_lib.TASKS)} "
                               f"(or {data_lib.CORPUS})")
        if not 2 <= self.max_length <= MAX_LENGTH:
            raise AdaspecError(f"--max-length must be in 2..{MAX_LENGTH} (a prompt and a response token at least), "
                               f"got {self.max_length}")
        if self.limit is not None and self.limit < 1:
            raise AdaspecError(f"--limit must be >= 1, got {self.limit}")


def load_split(opts: DataOptions, split: str, limit: int | None = None,
               report: chat.ChatReport | None = None) -> list[data_lib.Example]:
    """The examples of one split of the options' task or data file (an error when there are none);
    `report` counts the records left out."""
    examples = data_lib.load_examples(task=None if opts.data else opts.task, data_path=opts.data,
                                      split=split, prompt_field=opts.prompt_field,
                                      response_field=opts.response_field, limit=limit,
                                      data_dir=opts.data_dir, report=report)
    if not examples:
        raise AdaspecError(f"no {split} examples for {opts.data or opts.task}")
    return examples


def train_items(opts: DataOptions, tokenizer: Any, log: Callable[[str], None]) -> tuple[list[dict], chat.ChatReport]:
    """The training split encoded (`data_lib.encode`), and what reading it and fitting it into --max-length
    did to its conversations: logged in one line when any was cut, and for the run's train_summary.json."""
    report = chat.ChatReport()
    items = data_lib.encode(load_split(opts, "train", opts.limit, report), tokenizer, opts.max_length, report)
    line = report.line(opts.max_length)
    if line:
        log(line)
    return items, report
