"""Tasks and their prompt formats: the built-in tasks' splits, a user's JSON Lines, hub datasets.

The five tasks of the AdaSPEC paper are read from JSON Lines files shipped inside the package
(`adaspec/data/taskdata/`, also reachable as `data/` at the repository root; override with the environment
variable ADASPEC_DATA or a `data_dir` argument), so nothing needs the network and an installed wheel has
them too. Every task has deterministic "train", "validation" and "test" splits; `data/README.md` gives
their sources and sizes:

- gsm8k: train.jsonl minus its last 300 records (validation = those 300); test = test.jsonl.
- mbpp: by task_id as the dataset's authors specify: 601-974 train, 511-600 validation, 11-510 test
  (1-10 are few-shot prompts and belong to no split).
- alpaca: records whose `sources` holds "sft-demo_random_test" are test; of the rest (file order) every
  30th one, starting with the first, is validation; the others are train.
- cnn_dailymail: train_llm_summaries.jsonl (response = the GPT-4 summary) minus its last 50 records
  (validation = those 50); test = test.jsonl (response = the original highlights).
- xsum: rows 0-749 of xsum_1000.jsonl train, 750-799 validation, 800-999 test.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaspec.data import chat
from adaspec.errors import AdaspecError

TASKS = ("gsm8k", "alpaca", "mbpp", "cnn_dailymail", "xsum")
# every task's split at once, in each task's prompt format: the general corpus models are pretrained on
CORPUS = "corpus"
SPLITS = ("train", "validation", "test")
# ~500 tokens at a 4k vocabulary: leaves room for the summary in a 1024-token context
DEFAULT_ARTICLE_CHARS = 2000

# The AdaSPEC paper's GSM8K format (its utils.py): "####" becomes ANSWER_PROMPT, so the response reads
# "... The final answer is:  72" with two spaces, as the paper trained it.
GSM8K_QUESTION_PROMPT = "\nAnswer the above question. First think step by step and then answer the final number.\n"
GSM8K_ANSWER_PROMPT = "The final answer is: "

GSM8K_VALIDATION = 300
CNN_DM_VALIDATION = 50
XSUM_TRAIN, XSUM_VALIDATION = 750, 50
ALPACA_VALIDATION_STRIDE = 30
MBPP_SPLITS = {"train": (601, 974), "validation": (511, 600), "test": (11, 510)}


@dataclass
class Example:
    """One prompt/response pair; `meta` holds what scoring needs (final answer, tests, reference)."""

    prompt: str
    response: str
    meta: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- reading


def default_data_dir() -> Path:
    """The data folder: $ADASPEC_DATA if set, else the package's own `taskdata/`."""
    env = os.environ.get("ADASPEC_DATA")
    return Path(env) if env else Path(__file__).resolve().parent / "taskdata"


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) pairs of a JSON Lines file, read as they are taken; blank lines are skipped."""
    if not path.is_file():
        raise AdaspecError(f"data file not found: {path}")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise AdaspecError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                    f"{exc.start + 1}); save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AdaspecError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise AdaspecError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def _get(record: dict, name: str, where: str, kind: type | tuple = str) -> Any:
    if name not in record:
        raise AdaspecError(f"{where}: record has no field {name!r} (fields: {', '.join(map(str, record))})")
    value = record[name]
    if not isinstance(value, kind):
        raise AdaspecError(
            f"{where}: field {name!r} must be a {getattr(kind, '__name__', kind)}, got {type(value).__name__}"
        )
    if isinstance(value, str):
        check_text(value, f"{where}: field {name!r}")
    return value


def check_text(text: str, what: str) -> None:
    """Refuse text no tokenizer can encode: lone surrogates, from a JSON escape such as "\\ud800" or from
    bytes that were not UTF-8 (Python keeps those as surrogates, e.g. in command-line arguments)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])
        detail = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"lone surrogate U+{char:04X}"
        raise AdaspecError(f"{what} is not valid UTF-8 text ({detail} at character {exc.start + 1})") from None


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise AdaspecError(f"limit must be a positive number of examples, got {limit}")


def load_jsonl(
    path: str | os.PathLike,
    prompt_field: str = "prompt",
    response_field: str = "response",
    limit: int | None = None,
    report: chat.ChatReport | None = None,
) -> list[Example]:
    """A user's own JSON Lines data: one object a line with a prompt and a response field.

    The record's other fields go to `Example.meta`. A record without the prompt field but with a chat
    (`messages` or `conversations`, see adaspec.data.chat) is a chat example; one with no assistant turn is
    left out (`chat.note_skipped`: a warning, counted in `report`). Returns at most `limit` examples.
    """
    _check_limit(limit)
    path = Path(path)
    examples, skipped = [], []
    for lineno, record in _read_jsonl(path):
        if limit is not None and len(examples) >= limit:
            break
        where = f"{path}:{lineno}"
        messages = chat.messages_of(record, where) if prompt_field not in record else None
        if messages is not None:
            if chat.has_reply(messages):
                examples.append(chat_example(messages))
            else:
                skipped.append(lineno)
            continue
        prompt = _get(record, prompt_field, where)
        response = _get(record, response_field, where)
        meta = {k: v for k, v in record.items() if k not in (prompt_field, response_field)}
        examples.append(Example(prompt, response, meta))
    chat.note_skipped(str(path), "lines", skipped, len(examples), report)
    if not examples:
        raise AdaspecError(f"{path}: no examples (the file is empty)")
    return examples


def chat_example(messages: list[dict[str, str]]) -> Example:
    """A conversation as an Example: `meta["messages"]` drives encoding; prompt/response are its plain text
    before / of the last assistant turn (for tokenizer training, display and reference-based scores)."""
    last = chat.last_assistant(messages)
    return Example(chat.plain_text(messages[:last]), messages[last]["content"], {"messages": messages})


def load_hub(
    name: str,
    split: str,
    prompt_field: str = "prompt",
    response_field: str = "response",
    config: str | None = None,
    limit: int | None = None,
    report: chat.ChatReport | None = None,
) -> list[Example]:
    """A Hugging Face hub dataset through `datasets` (optional: pip install 'adaspec[hub]'; needs network)."""
    _check_limit(limit)
    try:
        import datasets
    except ImportError:
        raise AdaspecError("loading hub datasets needs the `datasets` package: pip install 'adaspec[hub]'") from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # offline, unknown name, bad split: all mean the same to the user
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise AdaspecError(f"could not load hub dataset {name!r} split {split!r}: {detail}") from exc
    conversations = prompt_field not in ds.column_names and any(c in ds.column_names for c in chat.CHAT_FIELDS)
    for needed in () if conversations else (prompt_field, response_field):
        if needed not in ds.column_names:
            raise AdaspecError(f"hub dataset {name!r} has no column {needed!r} (columns: {', '.join(ds.column_names)})")
    examples, skipped = [], []
    for i, record in enumerate(ds):
        if limit is not None and len(examples) >= limit:
            break
        where = f"hub:{name}[{split}] row {i}"
        if conversations:
            messages = chat.messages_of(record, where)
            if chat.has_reply(messages):
                examples.append(chat_example(messages))
            else:
                skipped.append(i)
            continue
        meta = {k: v for k, v in record.items() if k not in (prompt_field, response_field)}
        examples.append(Example(_get(record, prompt_field, where), _get(record, response_field, where), meta))
    chat.note_skipped(f"hub:{name}[{split}]", "rows", skipped, len(examples), report)
    if not examples:
        raise AdaspecError(f"hub dataset {name!r} split {split!r} has no examples")
    return examples


# ---------------------------------------------------------------------------------------- task formats


def truncate_article(text: str, max_chars: int | None) -> str:
    """Cut a long article to about `max_chars` characters at a word boundary, marked with " ..."."""
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space > 0.8 * max_chars:
        cut = cut[:space]
    return cut.rstrip() + " ..."


def gsm8k_example(record: dict, where: str = "gsm8k") -> Example:
    """The paper's format: question + instruction; answer with "####" -> "The final answer is: "."""
    question, answer = _get(record, "question", where), _get(record, "answer", where)
    final = answer.rsplit("####", 1)[-1].strip() if "####" in answer else ""
    return Example(question + GSM8K_QUESTION_PROMPT, answer.replace("####", GSM8K_ANSWER_PROMPT), {"answer": final})


def alpaca_example(record: dict, where: str = "alpaca") -> Example:
    """The Alpaca template without its preamble (which costs a small model context for nothing)."""
    instruction, extra = _get(record, "instruction", where), _get(record, "input", where)
    prompt = f"### Instruction:\n{instruction}\n\n"
    if extra.strip():
        prompt += f"### Input:\n{extra}\n\n"
    output = _get(record, "output", where)
    return Example(prompt + "### Response:\n", output, {"reference": output, "sources": record.get("sources", [])})


def mbpp_example(record: dict, where: str = "mbpp") -> Example:
    """Problem text and its first test as the example; the response is the reference code."""
    tests = _get(record, "test_list", where, list)
    if not tests:
        raise AdaspecError(f"{where}: field 'test_list' is empty")
    code = _get(record, "code", where).replace("\r\n", "\n").rstrip()
    setup = str(record.get("test_setup_code") or "").replace("\r\n", "\n")
    prompt = f"{_get(record, 'text', where)}\nYour code should pass this test:\n{tests[0]}\nCode:\n"
    return Example(
        prompt,
        code,
        {
            "task_id": int(record.get("task_id", -1)),
            "test_list": list(tests),
            "test_setup_code": setup,
            "challenge_test_list": list(record.get("challenge_test_list") or []),
        },
    )


def summary_example(
    article: str,
    summary: str,
    one_sentence: bool = False,
    article_chars: int | None = DEFAULT_ARTICLE_CHARS,
    meta: dict | None = None,
) -> Example:
    """ "Summarize the following article" prompt around the (truncated) article."""
    what = "in one sentence" if one_sentence else ""
    instruction = f"Summarize the following article{' ' + what if what else ''}."
    prompt = f"{instruction}\n\nArticle:\n{truncate_article(article, article_chars)}\n\nSummary:\n"
    return Example(prompt, summary, {"reference": summary, **(meta or {})})


def _task_records(data_dir: Path, task: str, split: str) -> list[tuple[str, dict]]:
    """(where, raw record) pairs of one split, before formatting."""

    def read(name: str) -> list[tuple[str, dict]]:
        path = data_dir / task / name
        return [(f"{path}:{lineno}", rec) for lineno, rec in _read_jsonl(path)]

    if task == "gsm8k":
        if split == "test":
            return read("test.jsonl")
        rows = read("train.jsonl")
        return rows[:-GSM8K_VALIDATION] if split == "train" else rows[-GSM8K_VALIDATION:]
    if task == "mbpp":
        lo, hi = MBPP_SPLITS[split]
        return [(w, r) for w, r in read("mbpp.jsonl") if lo <= int(_get(r, "task_id", w, (int, str))) <= hi]
    if task == "alpaca":
        rows = read("alpaca.jsonl")
        if split == "test":
            return [(w, r) for w, r in rows if "sft-demo_random_test" in r.get("sources", [])]
        rest = [(w, r) for w, r in rows if "sft-demo_random_test" not in r.get("sources", [])]
        want_validation = split == "validation"
        return [row for i, row in enumerate(rest) if (i % ALPACA_VALIDATION_STRIDE == 0) == want_validation]
    if task == "cnn_dailymail":
        if split == "test":
            return read("test.jsonl")
        rows = read("train_llm_summaries.jsonl")
        return rows[:-CNN_DM_VALIDATION] if split == "train" else rows[-CNN_DM_VALIDATION:]
    rows = read("xsum_1000.jsonl")
    bounds = {
        "train": (0, XSUM_TRAIN),
        "validation": (XSUM_TRAIN, XSUM_TRAIN + XSUM_VALIDATION),
        "test": (XSUM_TRAIN + XSUM_VALIDATION, None),
    }[split]
    return rows[bounds[0] : bounds[1]]


def format_record(
    task: str, record: dict, article_chars: int | None = DEFAULT_ARTICLE_CHARS, where: str | None = None
) -> Example:
    """One raw record of a task's data file as an Example in the task's prompt format."""
    where = where or task
    if task == "gsm8k":
        return gsm8k_example(record, where)
    if task == "alpaca":
        return alpaca_example(record, where)
    if task == "mbpp":
        return mbpp_example(record, where)
    if task == "cnn_dailymail":
        # training summaries were written by GPT-4; the test split scores against the real highlights
        key = "highlights" if "highlights" in record and "llm_summary" not in record else "llm_summary"
        return summary_example(
            _get(record, "article", where),
            _get(record, key, where),
            article_chars=article_chars,
            meta={"id": record.get("id"), "summary_source": key},
        )
    if task == "xsum":
        return summary_example(
            _get(record, "document", where),
            _get(record, "summary", where),
            one_sentence=True,
            article_chars=article_chars,
            meta={"id": record.get("id")},
        )
    raise AdaspecError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")


def load_task(
    task: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    article_chars: int | None = DEFAULT_ARTICLE_CHARS,
) -> list[Example]:
    """A split of one of the built-in tasks, in its prompt format; the first `limit` examples if given.

    `article_chars` caps the article length of the summarisation tasks (None: no cap).
    """
    if task not in TASKS:
        raise AdaspecError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if split not in SPLITS:
        raise AdaspecError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    _check_limit(limit)
    rows = _task_records(Path(data_dir) if data_dir is not None else default_data_dir(), task, split)
    if not rows:
        raise AdaspecError(f"task {task!r} split {split!r} has no examples")
    rows = rows[:limit] if limit is not None else rows
    return [format_record(task, rec, article_chars, where) for where, rec in rows]


def load_corpus(
    split: str,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    article_chars: int | None = DEFAULT_ARTICLE_CHARS,
) -> list[Example]:
    """The mixture of every task's `split`, interleaved round-robin so that the first `limit` mix the tasks
    (GSM8K, the largest, fills the tail alone)."""
    _check_limit(limit)
    per_task = [load_task(t, split, data_dir, limit, article_chars) for t in TASKS]
    mixed = [ex for group in itertools.zip_longest(*per_task) for ex in group if ex is not None]
    return mixed[:limit] if limit is not None else mixed


def load_examples(
    task: str | None = None,
    data_path: str | os.PathLike | None = None,
    split: str = "train",
    prompt_field: str = "prompt",
    response_field: str = "response",
    limit: int | None = None,
    data_dir: str | os.PathLike | None = None,
    article_chars: int | None = DEFAULT_ARTICLE_CHARS,
    report: chat.ChatReport | None = None,
) -> list[Example]:
    """Examples from wherever the user points: `data_path` wins over `task` when both are given.

    A source is a built-in task name, a .jsonl file (split ignored), a folder holding `<split>.jsonl`,
    or "hub:<name>" (a Hugging Face dataset, needs `datasets` and network). `report` counts the
    conversations left out (see `load_jsonl`).
    """
    source = data_path if data_path is not None else task
    if source is None:
        raise AdaspecError("no data given: name a task or a data path")
    source = str(source)
    if source.startswith("hub:"):
        return load_hub(source[4:], split, prompt_field, response_field, limit=limit, report=report)
    if data_path is None and source in TASKS:
        return load_task(source, split, data_dir, limit, article_chars)
    if data_path is None and source == CORPUS:
        return load_corpus(split, data_dir, limit, article_chars)
    path = Path(source)
    if path.is_dir():
        return load_jsonl(path / f"{split}.jsonl", prompt_field, response_field, limit, report)
    if path.suffix == ".jsonl" or path.exists():
        return load_jsonl(path, prompt_field, response_field, limit, report)
    raise AdaspecError(f"unknown task or data file {source!r}; tasks are: {', '.join(TASKS)}")
