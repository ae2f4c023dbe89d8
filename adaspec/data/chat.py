"""Chat records (OpenAI `messages` with role/content, ShareGPT `conversations` with from/value).

They are laid out by the target tokenizer's own chat template; only the assistant turns are trained on and
scored (labels), and the prompt of a chat example is everything before its last assistant turn, ending
with the template's generation prompt. The template is rendered once per turn boundary, so each turn's
tokens are exactly the ones the full conversation renders to (a template that rewrites earlier turns when
later ones are added is refused). Past a length limit, training sequences and prompts alike lose whole
earliest turns before any is cut inside a message.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from adaspec.errors import AdaspecError, warn

ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "tool": "tool",
}
CHAT_FIELDS = ("messages", "conversations")

# templates a user names instead of giving a file (--chat-template NAME), for tokenizers saved without one
BUILTIN_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
        "{% endif %}"
    ),
}
# a chat template is a few kilobytes; a bigger file is almost surely the wrong one
MAX_TEMPLATE_BYTES = 1 << 20


def resolve_template(value: str) -> str:
    """The Jinja text of `--chat-template`: a built-in name (BUILTIN_TEMPLATES) or a template file."""
    if value in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[value]
    path = Path(value)
    where = f"--chat-template {value}"
    if not path.is_file():
        raise AdaspecError(f"{where}: no such file, and not a built-in template ({', '.join(BUILTIN_TEMPLATES)})")
    try:
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise AdaspecError(
                f"{where}: {path.stat().st_size:,} bytes; a chat template is at most {MAX_TEMPLATE_BYTES:,}"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AdaspecError(f"{where}: cannot read it as UTF-8 text ({str(exc).splitlines()[0]})") from None
    if not text.strip():
        raise AdaspecError(f"{where}: the file is empty")
    try:  # parsed as transformers will render it, so a broken file fails here, before any work
        jinja2.Environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise AdaspecError(f"{where}: not a Jinja template (line {exc.lineno}: {exc.message})") from None
    return text


def set_template(tokenizer: Any, chat_template: str | None) -> Any:
    """`tokenizer` with `chat_template` (see `resolve_template`) as its chat template; unchanged for None."""
    if chat_template is not None:
        tokenizer.chat_template = resolve_template(chat_template)
    return tokenizer


def messages_of(record: dict, where: str) -> list[dict[str, str]] | None:
    """The record's conversation as role/content dicts, or None when it has no `messages`/`conversations`."""
    key = next((k for k in CHAT_FIELDS if k in record), None)
    if key is None:
        return None
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise AdaspecError(f"{where}: field {key!r} must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise AdaspecError(f"{where}: {key}[{i}] must be an object, got {type(turn).__name__}")
        role, content = (
            (turn.get("role"), turn.get("content")) if "role" in turn else (turn.get("from"), turn.get("value"))
        )
        if role not in ROLES or not isinstance(content, str):
            raise AdaspecError(
                f"{where}: {key}[{i}] needs a role ({', '.join(ROLES)}) and a text content (role/content or from/value)"
            )
        messages.append({"role": ROLES[role], "content": content})
    return messages


def has_reply(messages: list[dict[str, str]]) -> bool:
    """Whether the conversation has an assistant turn: without one there is nothing to train on or score."""
    return any(m["role"] == "assistant" for m in messages)


@functools.cache
def _warn_once(message: str) -> None:
    # a recipe reads its data file more than once (tokenizer, training and validation split): one line is enough
    warn(message)


def note_skipped(source: str, places: str, skipped: list[int], usable: int, report: ChatReport | None) -> None:
    """Account for the conversations of `source` left out for having no assistant turn (`skipped`: their
    line or row numbers, as `places` says): one warning line, counted in `report`; an error when no usable
    record is left."""
    if not skipped:
        return
    shown = f"{places} {', '.join(map(str, skipped[:5]))}{', ...' if len(skipped) > 5 else ''}"
    if not usable:
        raise AdaspecError(
            f"no usable record in {source}: {len(skipped)} conversations, none with an assistant turn ({shown})"
        )
    _warn_once(f"{source}: skipped {len(skipped)} conversations with no assistant turn to train on ({shown})")
    if report is not None:
        report.skipped += len(skipped)


def last_assistant(messages: list[dict[str, str]]) -> int:
    return max(i for i, m in enumerate(messages) if m["role"] == "assistant")


def plain_text(messages: list[dict[str, str]]) -> str:
    """A template-free reading of the turns (for tokenizer training and display)."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise AdaspecError(
            "chat data (records with messages) needs a target tokenizer with a chat template; "
            f"pass --chat-template FILE or a built-in name ({', '.join(BUILTIN_TEMPLATES)})"
        )
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def prompt_text(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Everything before the last assistant turn, with the template's generation prompt."""
    return _render(tokenizer, messages[: last_assistant(messages)], generation_prompt=True)


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]], max_length: int | None = None) -> list[int]:
    """The ids of `prompt_text` (the final assistant turn held out). Past `max_length` the earliest turns
    are dropped whole as `encode_chat` drops them; only when the last turns alone do not fit is it cut from
    the left inside a message."""

    def ids(conversation: list[dict[str, str]]) -> list[int]:
        text = prompt_text(tokenizer, conversation)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    full = ids(messages)
    if max_length is None or len(full) <= max_length:
        return full
    tail = _fitting_tail(messages, max_length, lambda m: len(ids(m)))
    return ids(tail) if tail is not None else full[len(full) - max_length :]


def spans(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive (text, is_assistant) pieces; their join is the full rendering."""
    full = _render(tokenizer, messages, generation_prompt=False)
    pieces, done = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through) and len(before) >= done):
            raise AdaspecError(
                "the chat template renders earlier turns differently once later ones are added; "
                "adaspec cannot tell which tokens belong to the assistant"
            )
        pieces += [(full[done : len(before)], False), (full[len(before) : len(through)], True)]
        done = len(through)
    pieces.append((full[done:], False))
    return [(text, trained) for text, trained in pieces if text]


def token_spans(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[list[int], bool]]:
    """`spans`, each piece tokenised on its own (so no token straddles an assistant turn's edge)."""
    return [
        (list(tokenizer(text, add_special_tokens=False)["input_ids"]), trained)
        for text, trained in spans(tokenizer, messages)
    ]


@dataclass
class ChatReport:
    """What reading a run's conversations and fitting them into --max-length did, for its log and
    train_summary.json."""

    conversations: int = 0  # encoded
    cut: int = 0  # of them, shortened to fit
    mid_message: int = 0  # of those, cut inside a message: their last turns alone did not fit
    skipped: int = 0  # records left out when read: no assistant turn

    def summary(self) -> dict[str, Any]:
        return {
            "truncated": {"conversations": self.cut, "mid_message": self.mid_message, "of": self.conversations},
            "skipped_records": self.skipped,
        }

    def line(self, max_length: int) -> str | None:
        """One line for the run's log, or None when no conversation was cut."""
        if not self.cut:
            return None
        return (
            f"{self.cut} of {self.conversations} conversations cut to fit --max-length {max_length}: "
            f"{self.cut - self.mid_message} by dropping their earliest turns, {self.mid_message} inside a message"
        )


def _length(pieces: list[tuple[list[int], bool]]) -> int:
    return sum(len(ids) for ids, _ in pieces)


def _fitting_tail(
    messages: list[dict[str, str]], max_length: int, length: Callable[[list[dict[str, str]]], int]
) -> list[dict[str, str]] | None:
    """The longest conversation left by dropping whole earliest turns whose `length` fits in `max_length`
    (a leading system turn kept while that can fit), or None when the last turns alone do not. Each
    candidate starts at a non-assistant turn and keeps the last assistant turn."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    starts = [k for k in range(len(system), last_assistant(messages) + 1) if messages[k]["role"] != "assistant"]
    groups = [[system + messages[k:] for k in starts if k > len(system)]]
    if system:
        groups.append([messages[k:] for k in starts])
    for group in groups:
        # a later start leaves a shorter conversation, so the first that fits is found by bisection
        lo, hi = 0, len(group)
        while lo < hi:
            mid = (lo + hi) // 2
            if length(group[mid]) <= max_length:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(group):
            return group[lo]
    return None


def encode_chat(
    tokenizer: Any, messages: list[dict[str, str]], max_length: int, ignore_index: int, report: ChatReport | None = None
) -> dict[str, list[int]]:
    """The rendering's ids, labels on the assistant turns only (the template places BOS/EOS).

    Past `max_length` the earliest turns are dropped whole, keeping a leading system turn while it fits,
    until the rest fits; only when the last turns alone do not fit is it cut from the left inside a message.
    `report` counts both."""
    pieces = token_spans(tokenizer, messages)
    if report is not None:
        report.conversations += 1
    if _length(pieces) > max_length:
        tail = _fitting_tail(messages, max_length, lambda m: _length(token_spans(tokenizer, m)))
        if report is not None:
            report.cut += 1
            report.mid_message += tail is None
        if tail is not None:
            pieces = token_spans(tokenizer, tail)
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, trained in pieces:
        input_ids += ids
        labels += ids if trained else [ignore_index] * len(ids)
    input_ids, labels = input_ids[-max_length:], labels[-max_length:]
    if labels:
        labels[0] = ignore_index  # the first position is predicted from nothing
    return {"input_ids": input_ids, "labels": labels}
