"""`train-target --data chat.jsonl --chat-template ...`: a tokenizer without a template gets one, and keeps it."""

import json
import random
import string

from helpers import cli_error, run, summary
from transformers import AutoTokenizer

from adaspec import models
from adaspec.data import chat

FAST = [
    "--preset",
    "tiny-neox",
    "--vocab-size",
    "300",
    "--batch-size",
    "4",
    "--max-steps",
    "1",
    "--max-length",
    "128",
    "--val-examples",
    "2",
    "--val-every",
    "0",
    "--no-progress",
]
SYSTEM = {"role": "system", "content": "Answer with a number."}


def exchange(i, answer=None):
    return [{"role": "user", "content": f"{i} plus {i}?"}, {"role": "assistant", "content": answer or f"{2 * i}."}]


def chats(tmp_path):
    """Four one-exchange chats that fit in 128 tokens, three of three exchanges that do not (their first
    two go), one whose single answer alone is too long, and two with no answer (left out)."""
    conversations = [[SYSTEM, *exchange(i)] for i in range(4)]
    conversations += [[SYSTEM, *exchange(i), *exchange(i + 1), *exchange(i + 2)] for i in range(3)]
    conversations.append([SYSTEM, *exchange(9, "".join(random.Random(0).choices(string.ascii_letters, k=300)))])
    conversations += [[SYSTEM, exchange(i)[0]] for i in range(2)]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    return path


def test_chatml_by_name_is_saved_with_the_target_and_cut_conversations_counted(tmp_path, capsys):
    out = tmp_path / "target"
    assert run("train-target", "--data", chats(tmp_path), "--chat-template", "chatml", *FAST, "--output", out) == 0
    assert summary(out)["truncated"] == {"conversations": 4, "mid_message": 1, "of": 8}
    assert summary(out)["skipped_records"] == 2
    printed = capsys.readouterr()
    assert (
        "4 of 8 conversations cut to fit --max-length 128: 3 by dropping their earliest turns, 1 inside a "
        "message" in printed.out
    )
    assert "chats.jsonl: skipped 2 conversations with no assistant turn to train on (lines 9, 10)" in printed.err
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template == chat.BUILTIN_TEMPLATES["chatml"]
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    assert summary(out)["steps"] == 1
    # later stages read the template saved with the target, and record the same counts
    later = [
        "--data",
        chats(tmp_path),
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--max-length",
        "128",
        "--val-examples",
        "2",
        "--val-max-new-tokens",
        "4",
        "--val-every",
        "0",
        "--no-progress",
    ]
    for name, args in (
        ("draft", ["distill", "--preset", "tiny-llama", "--method", "kd"]),
        ("mtp", ["train-head", "--kind", "mtp", "--depth", "2"]),
        ("eagle", ["train-head", "--variant", "eagle1", "--ttt-steps", "1"]),
    ):
        assert run(*args, "--target", out, *later, "--output", tmp_path / name) == 0
        assert summary(tmp_path / name)["truncated"] == {"conversations": 4, "mid_message": 1, "of": 8}, name
        assert summary(tmp_path / name)["skipped_records"] == 2, name


def test_template_file_and_refusals(tmp_path, capsys):
    template = tmp_path / "t.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    out = tmp_path / "target"
    assert run("train-target", "--data", chats(tmp_path), "--chat-template", template, *FAST, "--output", out) == 0
    assert AutoTokenizer.from_pretrained(str(out)).chat_template == template.read_text()
    capsys.readouterr()
    # a later stage's --chat-template replaces the saved one
    assert models.load_tokenizer(out, chat_template="chatml").chat_template == chat.BUILTIN_TEMPLATES["chatml"]
    # without a template, the trained tokenizer has none: the refusal says how to give one
    err = cli_error(capsys, "train-target", "--data", chats(tmp_path), *FAST, "--output", tmp_path / "o1")
    assert "needs a target tokenizer with a chat template; pass --chat-template" in err and "chatml" in err
    err = cli_error(
        capsys,
        "train-target",
        "--data",
        chats(tmp_path),
        "--chat-template",
        "llama9",
        *FAST,
        "--output",
        tmp_path / "o2",
    )
    assert "--chat-template llama9: no such file, and not a built-in template (chatml)" in err
    big = tmp_path / "big.jinja"
    big.write_text("x" * (chat.MAX_TEMPLATE_BYTES + 1))
    assert f"--chat-template {big}: 1,048,577 bytes" in cli_error(
        capsys, "train-target", "--data", chats(tmp_path), "--chat-template", big, *FAST, "--output", tmp_path / "o3"
    )
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}")
    assert "not a Jinja template" in cli_error(
        capsys, "eval", "--target", out, "--draft", out, "--chat-template", broken
    )
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
