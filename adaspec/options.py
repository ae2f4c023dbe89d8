"""Pieces shared by every command's options dataclass: flag help metadata and the data selection."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adaspec import data as data_lib
from adaspec.errors import AdaspecError


def helptext(text: str, **extra: Any) -> dict:
    """Field metadata: the flag's --help text (adaspec.cli builds the flag from the field)."""
    return {"help": text, **extra}


@dataclass(kw_only=True)
class DataOptions:
    """Which examples a command encodes; `distill` and `cache` must agree on them, so they share this."""

    task: str | None = field(default="gsm8k", metadata=helptext(f"built-in task ({', '.join(data_lib.TASKS)})"))
    data: str | None = field(default=None, metadata=helptext(
        "a JSONL file of your own (or hub:<dataset> when online) instead of --task"))
    prompt_field: str = field(default="prompt", metadata=helptext("prompt field of --data records"))
    response_field: str = field(default="response", metadata=helptext("response field of --data records"))
    data_dir: str | None = field(default=None, metadata=helptext("folder of the built-in task data"))
    limit: int | None = field(default=None, metadata=helptext("use only the first N training examples"))
    max_length: int = field(default=256, metadata=helptext("truncate prompt+response to this many tokens"))

    def __post_init__(self) -> None:
        if self.task is None and self.data is None:
            raise AdaspecError("give --task or --data")
        if self.task is not None and self.data is None and self.task not in data_lib.TASKS:
            raise AdaspecError(f"unknown task {self.task!r}; choose one of {', '.join(data_lib.TASKS)}")
        if self.max_length < 2:
            raise AdaspecError(f"--max-length must be >= 2 (a prompt and a response token), got {self.max_length}")
        if self.limit is not None and self.limit < 1:
            raise AdaspecError(f"--limit must be >= 1, got {self.limit}")


def load_split(opts: DataOptions, split: str, limit: int | None = None) -> list[data_lib.Example]:
    """The examples of one split of the options' task or data file (an error when there are none)."""
    examples = data_lib.load_examples(task=None if opts.data else opts.task, data_path=opts.data,
                                      split=split, prompt_field=opts.prompt_field,
                                      response_field=opts.response_field, limit=limit,
                                      data_dir=opts.data_dir)
    if not examples:
        raise AdaspecError(f"no {split} examples for {opts.data or opts.task}")
    return examples
