"""The data selection every command that encodes examples shares: `--task` / `--data` and how they are read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from adaspec import data as data_lib
from adaspec.data import chat
from adaspec.errors import AdaspecError
from adaspec.options import MAX_LENGTH, check_finite, helptext


@dataclass(kw_only=True)
class DataOptions:
    """Which examples a command encodes; `distill` and `cache` must agree on them, so they share this."""

    task: str | None = field(
        default="gsm8k",
        metadata=helptext(
            f"built-in task ({', '.join(data_lib.TASKS)}), or {data_lib.CORPUS}: all of their splits mixed, "
            "to pretrain on"
        ),
    )
    data: str | None = field(
        default=None, metadata=helptext("a JSONL file of your own (or hub:<dataset> when online) instead of --task")
    )
    prompt_field: str = field(default="prompt", metadata=helptext("prompt field of --data records"))
    response_field: str = field(default="response", metadata=helptext("response field of --data records"))
    data_dir: str | None = field(default=None, metadata=helptext("folder of the built-in task data"))
    limit: int | None = field(default=None, metadata=helptext("use only the first N training examples"))
    max_length: int = field(default=256, metadata=helptext("truncate prompt+response to this many tokens"))
    chat_template: str | None = field(
        default=None,
        metadata=helptext(
            f"chat template for chat records: a Jinja file or a built-in name ({', '.join(chat.BUILTIN_TEMPLATES)}); "
            "replaces the target tokenizer's own and is saved with the model"
        ),
    )

    def __post_init__(self) -> None:
        check_finite(self)
        if self.chat_template is not None:
            chat.resolve_template(self.chat_template)
        if self.task is None and self.data is None:
            raise AdaspecError("give --task or --data")
        if self.task is not None and self.data is None and self.task not in (*data_lib.TASKS, data_lib.CORPUS):
            raise AdaspecError(
                f"unknown task {self.task!r}; choose one of {', '.join(data_lib.TASKS)} (or {data_lib.CORPUS})"
            )
        if not 2 <= self.max_length <= MAX_LENGTH:
            raise AdaspecError(
                f"--max-length must be in 2..{MAX_LENGTH} (a prompt and a response token at least), "
                f"got {self.max_length}"
            )
        if self.limit is not None and self.limit < 1:
            raise AdaspecError(f"--limit must be >= 1, got {self.limit}")


def load_split(
    opts: DataOptions, split: str, limit: int | None = None, report: chat.ChatReport | None = None
) -> list[data_lib.Example]:
    """The examples of one split of the options' task or data file (an error when there are none);
    `report` counts the records left out."""
    examples = data_lib.load_examples(
        task=None if opts.data else opts.task,
        data_path=opts.data,
        split=split,
        prompt_field=opts.prompt_field,
        response_field=opts.response_field,
        limit=limit,
        data_dir=opts.data_dir,
        report=report,
    )
    if not examples:
        raise AdaspecError(f"no {split} examples for {opts.data or opts.task}")
    return examples


def train_items(
    opts: DataOptions, tokenizer: Any, log: Callable[[str], None]
) -> tuple[list[data_lib.Item], chat.ChatReport]:
    """The training split encoded (`data_lib.encode`), and what reading it and fitting it into --max-length
    did to its conversations: logged in one line when any was cut, and for the run's train_summary.json."""
    report = chat.ChatReport()
    items = data_lib.encode(load_split(opts, "train", opts.limit, report), tokenizer, opts.max_length, report)
    line = report.line(opts.max_length)
    if line:
        log(line)
    return items, report
