"""Chat records are laid out by the tokenizer's chat template; only assistant turns carry labels."""

import json

import pytest

from adaspec import data
from adaspec.data import chat
from adaspec.errors import AdaspecError

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Add 2 and 3"},
    {"role": "assistant", "content": "It is 5."},
]


@pytest.fixture(scope="module")
def tok():
    t = data.train_tokenizer([m["content"] for m in CONVERSATION] * 20 + ["<|user|> <|assistant|>"], 300)
    t.chat_template = TEMPLATE
    return t


@pytest.fixture()
def chat_file(tmp_path):
    sharegpt = [
        {"from": {"user": "human", "assistant": "gpt"}.get(m["role"], m["role"]), "value": m["content"]}
        for m in CONVERSATION
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text(
        json.dumps({"messages": CONVERSATION})
        + "\n"
        + json.dumps({"conversations": sharegpt})
        + "\n"
        + json.dumps({"prompt": "plain", "response": "record"})
        + "\n"
    )
    return path


def test_openai_and_sharegpt_records_read_alike(chat_file):
    openai, sharegpt, plain = data.load_jsonl(chat_file)
    assert openai.meta["messages"] == sharegpt.meta["messages"] == CONVERSATION
    assert openai.response == "It is 5." and "user: Add 2 and 3" in openai.prompt
    assert "messages" not in plain.meta and plain.prompt == "plain"


def test_only_assistant_turns_are_labelled(tok, chat_file):
    example = data.load_jsonl(chat_file)[0]
    item = data.encode_example(example, tok, max_length=512)
    full = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert tok.decode(item["input_ids"]) == full
    labelled = tok.decode([t for t, lab in zip(item["input_ids"], item["labels"]) if lab != data.IGNORE_INDEX])
    assert labelled == "Hello!<|endoftext|>\nIt is 5.<|endoftext|>\n"
    # the evaluation prompt: everything before the last assistant turn, ending with the generation prompt
    prompt = tok.decode(data.encode_prompt(example, tok))
    assert prompt == tok.apply_chat_template(CONVERSATION[:-1], tokenize=False, add_generation_prompt=True)
    assert full.startswith(prompt) and prompt.endswith("<|assistant|>\n")


def test_mixed_data_encodes_in_order_and_truncates_from_the_left(tok, chat_file):
    items = data.encode(data.load_jsonl(chat_file), tok, max_length=512)
    assert [it["index"] for it in items] == [0, 1, 2] and items[0] == {**items[1], "index": 0}
    assert tok.decode(items[2]["input_ids"]) == "plainrecord<|endoftext|>"
    short = data.encode_example(data.load_jsonl(chat_file)[0], tok, max_length=12)
    assert len(short["input_ids"]) == 12 and tok.decode(short["input_ids"]).endswith("It is 5.<|endoftext|>\n")
    assert short["labels"][0] == data.IGNORE_INDEX


def test_refusals(tok, chat_file, tmp_path):
    example = data.load_jsonl(chat_file)[0]
    plain_tok = data.train_tokenizer(["a b c"] * 5, 260)
    with pytest.raises(AdaspecError, match="chat template"):
        data.encode_example(example, plain_tok, 64)
    tok2 = data.train_tokenizer(["x"] * 5, 260)
    tok2.chat_template = "{{ messages|length }}" + TEMPLATE
    with pytest.raises(AdaspecError, match="renders earlier turns differently"):
        data.encode_example(example, tok2, 64)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n" + json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n")
    with pytest.raises(
        AdaspecError,
        match=rf"^no usable record in {bad}: 1 conversations, none with an "
        r"assistant turn \(lines 2\)$",
    ):
        data.load_jsonl(bad)
    bad.write_text(json.dumps({"messages": [{"role": "wizard", "content": "x"}]}) + "\n")
    with pytest.raises(AdaspecError, match=r"messages\[0\] needs a role"):
        data.load_jsonl(bad)
    assert chat.messages_of({"prompt": "x"}, "here") is None


def test_hub_chat_datasets(monkeypatch):
    import sys
    import types

    class FakeDataset(list):
        column_names = ["conversations", "id"]

    fake = types.SimpleNamespace(
        load_dataset=lambda name, config, split: FakeDataset(
            [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}], "id": 1}]
        )
    )
    monkeypatch.setitem(sys.modules, "datasets", fake)
    (example,) = data.load_hub("someone/chats", "train")
    assert example.meta["messages"][1] == {"role": "assistant", "content": "Hello!"}


LONG = [{"role": "system", "content": "Be brief."}] + [
    m
    for i in range(3)
    for m in ({"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."})
]


def _fit(tok, max_length):
    report = chat.ChatReport()
    item = chat.encode_chat(tok, LONG, max_length, data.IGNORE_INDEX, report)
    return tok.decode(item["input_ids"]), report


def test_long_conversations_lose_their_earliest_turns_and_are_counted(tok):
    def length(messages):
        return len(tok(tok.apply_chat_template(messages, tokenize=False))["input_ids"])

    # room for the system turn and the last exchange, not for two exchanges
    text, report = _fit(tok, length(LONG[:1] + LONG[-2:]) + 1)
    assert text == tok.apply_chat_template(LONG[:1] + LONG[-2:], tokenize=False)
    assert report == chat.ChatReport(conversations=1, cut=1, mid_message=0)
    # room for the last exchange only: the system turn goes too
    text, report = _fit(tok, length(LONG[-2:]) + 1)
    assert text == tok.apply_chat_template(LONG[-2:], tokenize=False) and report.mid_message == 0
    # not even that: cut inside a message, from the left, as before
    text, report = _fit(tok, length(LONG[-2:]) - 3)
    assert text.endswith("Answer 2.<|endoftext|>\n") and not text.startswith("<|user|>")
    assert report.summary()["truncated"] == {"conversations": 1, "mid_message": 1, "of": 1}
    assert "1 of 1 conversations cut to fit --max-length 9: 0 by dropping" in report.line(9)
    # a conversation that fits is counted but not cut
    text, report = _fit(tok, 512)
    assert text == tok.apply_chat_template(LONG, tokenize=False) and report.line(512) is None
    assert report.summary()["truncated"] == {"conversations": 0, "mid_message": 0, "of": 1}


def test_conversations_without_a_reply_are_skipped_and_reported(tmp_path, capsys):
    question = json.dumps({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}]})
    answered = json.dumps({"messages": CONVERSATION})
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([question, answered] + [question] * 6 + [answered] * 2) + "\n")
    report = chat.ChatReport()
    examples = data.load_jsonl(path, report=report)
    assert [ex.meta["messages"] for ex in examples] == [CONVERSATION] * 3 and report.skipped == 7
    assert report.summary()["skipped_records"] == 7
    err = capsys.readouterr().err.strip()
    assert err == (
        f"adaspec: warning: {path}: skipped 7 conversations with no assistant turn to train on "
        "(lines 1, 3, 4, 5, 6, ...)"
    )
    # a limit counts usable examples, not records read
    assert len(data.load_jsonl(path, limit=2)) == 2
    # a malformed record is still an error naming its line
    path.write_text(question + "\n" + json.dumps({"messages": [{"role": "user", "content": 3}]}) + "\n")
    with pytest.raises(AdaspecError, match=rf"^{path}:2: messages\[0\] needs a role"):
        data.load_jsonl(path)


def test_multi_turn_trains_every_reply_and_holds_out_the_last_for_evaluation(tok):
    def labelled(item):
        return tok.decode([t for t, lab in zip(item["input_ids"], item["labels"]) if lab != data.IGNORE_INDEX])

    example = data.chat_example(LONG)
    assert labelled(data.encode_example(example, tok, 512)) == "".join(f"Answer {i}.<|endoftext|>\n" for i in range(3))
    # the evaluation prompt: every turn before the final reply, earlier replies included, none labelled
    prompt = data.encode_prompt(example, tok)
    assert tok.decode(prompt) == tok.apply_chat_template(LONG[:-1], tokenize=False, add_generation_prompt=True)
    assert example.response == "Answer 2."
    # cut to fit, both keep whole turns: the system turn and the last exchange, its reply trained or held out
    kept = LONG[:1] + LONG[-2:]
    room = len(tok(tok.apply_chat_template(kept, tokenize=False))["input_ids"]) + 1
    item = data.encode_example(example, tok, room)
    assert tok.decode(item["input_ids"]) == tok.apply_chat_template(kept, tokenize=False)
    assert labelled(item) == "Answer 2.<|endoftext|>\n"
    room = len(data.encode_prompt(data.chat_example(kept), tok)) + 1
    assert tok.decode(data.encode_prompt(example, tok, room)) == tok.apply_chat_template(
        kept[:-1], tokenize=False, add_generation_prompt=True
    )
    # too short for the last question alone: its last tokens, as before
    assert data.encode_prompt(example, tok, 3) == prompt[-3:]
