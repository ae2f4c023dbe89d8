import json
import sys

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from adaspec.data import (
    CORPUS,
    EOS_TOKEN,
    GSM8K_QUESTION_PROMPT,
    IGNORE_INDEX,
    SPLITS,
    TASKS,
    Example,
    collate,
    encode_example,
    encode_examples,
    encode_prompt,
    load_examples,
    load_jsonl,
    load_task,
    pad_id,
    train_tokenizer,
    truncate_article,
)
from adaspec.errors import AdaspecError

SIZES = {
    "gsm8k": (7173, 300, 1319),
    "alpaca": (1408, 49, 50),
    "mbpp": (374, 90, 500),
    "cnn_dailymail": (950, 50, 80),
    "xsum": (750, 50, 200),
}


@pytest.fixture(scope="module")
def tok():
    texts = [ex.prompt + ex.response for ex in load_task("gsm8k", "train", limit=300)]
    return train_tokenizer(texts, vocab_size=600)


@pytest.fixture(scope="module")
def bos_tok(tok):
    # a Llama-style tokenizer: BOS distinct from EOS
    return PreTrainedTokenizerFast(
        tokenizer_object=tok.backend_tokenizer,
        bos_token="<s>",
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("task", TASKS)
def test_splits_sized_disjoint_deterministic(task):
    splits = {split: load_task(task, split) for split in SPLITS}
    assert tuple(len(splits[s]) for s in SPLITS) == SIZES[task]
    keys = {s: {(ex.prompt, ex.response) for ex in exs} for s, exs in splits.items()}
    assert not keys["train"] & keys["validation"]
    assert not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    again = load_task(task, "validation")
    assert [(e.prompt, e.response, e.meta) for e in again] == [
        (e.prompt, e.response, e.meta) for e in splits["validation"]
    ]
    assert all(ex.prompt and ex.response for exs in splits.values() for ex in exs)


def test_gsm8k_format_is_the_papers():
    ex = load_task("gsm8k", "train", limit=1)[0]
    assert ex.prompt == (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
        "in May. How many clips did Natalia sell altogether in April and May?\n"
        "Answer the above question. First think step by step and then answer the final number.\n"
    )
    # "####" -> "The final answer is: " leaves the original space after it, as in the paper's code
    assert ex.response == (
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
        "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
        "The final answer is:  72"
    )
    assert ex.meta["answer"] == "72"
    assert load_task("gsm8k", "test", limit=1)[0].prompt.endswith(GSM8K_QUESTION_PROMPT)


def test_task_specific_splits_and_meta():
    ids_by_split = {s: {ex.meta["task_id"] for ex in load_task("mbpp", s)} for s in SPLITS}
    assert ids_by_split["train"] == set(range(601, 975))
    assert ids_by_split["validation"] == set(range(511, 601))
    assert ids_by_split["test"] == set(range(11, 511))
    mbpp = load_task("mbpp", "test", limit=1)[0]
    assert mbpp.meta["test_list"][0] in mbpp.prompt and "\r" not in mbpp.response
    assert all("sft-demo_random_test" in ex.meta["sources"] for ex in load_task("alpaca", "test"))
    cnn_test, cnn_train = (
        load_task("cnn_dailymail", "test", limit=1)[0],
        load_task("cnn_dailymail", "train", limit=1)[0],
    )
    assert cnn_test.meta["summary_source"] == "highlights" and cnn_train.meta["summary_source"] == "llm_summary"
    assert cnn_test.meta["reference"] == cnn_test.response
    assert load_task("xsum", "test", limit=1)[0].prompt.startswith("Summarize the following article in one sentence.")


def test_article_budget():
    short = load_task("cnn_dailymail", "train", limit=3, article_chars=300)
    full = load_task("cnn_dailymail", "train", limit=3, article_chars=None)
    assert all(len(s.prompt) < 400 for s in short) and all(len(f.prompt) > len(s.prompt) for s, f in zip(short, full))
    assert truncate_article("abc def ghi", 100) == "abc def ghi"
    cut = truncate_article("word " * 100, 52)
    assert cut.endswith(" word ...") and len(cut) <= 56 and truncate_article("x" * 60, 50) == "x" * 50 + " ..."


def test_unknown_task_split_and_limit():
    with pytest.raises(AdaspecError, match="unknown task 'gsm9k'"):
        load_task("gsm9k", "train")
    with pytest.raises(AdaspecError, match="unknown split"):
        load_task("gsm8k", "dev")
    with pytest.raises(AdaspecError, match="limit"):
        load_task("gsm8k", "test", limit=0)
    assert len(load_task("xsum", "train", limit=5)) == 5


def test_data_dir_override_and_empty_split(tmp_path, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "2\n#### 2"}) + "\n")
    monkeypatch.setenv("ADASPEC_DATA", str(tmp_path))
    [ex] = load_task("gsm8k", "test")
    assert ex.response == "2\nThe final answer is:  2"
    (tmp_path / "gsm8k" / "test.jsonl").write_text("\n")
    with pytest.raises(AdaspecError, match="no examples"):
        load_task("gsm8k", "test")
    with pytest.raises(AdaspecError, match="data file not found"):
        load_task("gsm8k", "train")


def test_jsonl_loader(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"q": "a", "r": "b", "id": 1}\n\n{"q": "c", "r": "d"}\n')
    exs = load_jsonl(path, "q", "r")
    assert [(e.prompt, e.response) for e in exs] == [("a", "b"), ("c", "d")] and exs[0].meta == {"id": 1}
    assert len(load_jsonl(path, "q", "r", limit=1)) == 1
    path.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')
    with pytest.raises(AdaspecError, match=r"d\.jsonl:2: record has no field 'response'"):
        load_jsonl(path)
    path.write_text('{"prompt": "a", "response": "b"}\n{oops\n')
    with pytest.raises(AdaspecError, match=r"d\.jsonl:2: not valid JSON"):
        load_jsonl(path)
    path.write_text('{"prompt": 3, "response": "b"}\n')
    with pytest.raises(AdaspecError, match="must be a str"):
        load_jsonl(path)
    path.write_text("")
    with pytest.raises(AdaspecError, match="no examples"):
        load_jsonl(path)
    with pytest.raises(AdaspecError, match="data file not found"):
        load_jsonl(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("split", SPLITS)
def test_corpus_mixes_every_task_split(split):
    corpus = load_examples(CORPUS, split=split)
    assert len(corpus) == sum(SIZES[t][SPLITS.index(split)] for t in TASKS)
    assert {ex.prompt + ex.response for ex in corpus} == {
        ex.prompt + ex.response for t in TASKS for ex in load_task(t, split)
    }
    # round-robin: the first examples already come from every task, in TASKS order
    assert [ex.response for ex in corpus[: len(TASKS)]] == [load_task(t, split)[0].response for t in TASKS]
    assert len(load_examples(CORPUS, split=split, limit=7)) == 7


def test_corpus_is_a_task_for_every_command():
    from adaspec.data.options import DataOptions

    assert DataOptions(task=CORPUS).task == CORPUS
    with pytest.raises(AdaspecError, match="or corpus"):
        DataOptions(task="corpse")


def test_load_examples_dispatch(tmp_path, monkeypatch):
    assert len(load_examples("mbpp", split="validation", limit=4)) == 4
    (tmp_path / "validation.jsonl").write_text('{"prompt": "p", "response": "r"}\n')
    assert load_examples(data_path=tmp_path / "validation.jsonl")[0].prompt == "p"
    assert load_examples(task="gsm8k", data_path=tmp_path, split="validation")[0].response == "r"
    with pytest.raises(AdaspecError, match="unknown task or data file"):
        load_examples("nonsense")
    with pytest.raises(AdaspecError, match="no data given"):
        load_examples()
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(AdaspecError, match="needs the `datasets` package"):
        load_examples(data_path="hub:openai/gsm8k")


def test_label_masking(tok):
    ex = Example("What is 2+2?\n", "It is 4.")
    enc = encode_example(ex, tok, max_length=512)
    p, r = ids(tok, ex.prompt), ids(tok, ex.response)
    assert enc["input_ids"] == p + r + [tok.eos_token_id]
    assert enc["labels"] == [IGNORE_INDEX] * len(p) + r + [tok.eos_token_id]
    assert encode_prompt(ex, tok) == p
    assert tok.bos_token_id == tok.eos_token_id  # so no BOS is added


def test_bos_prepended_when_distinct(bos_tok):
    ex = Example("Question one two three four five six\n", "answer")
    bos = bos_tok.bos_token_id
    assert bos != bos_tok.eos_token_id
    enc = encode_example(ex, bos_tok, max_length=512)
    assert enc["input_ids"][0] == bos and enc["labels"][0] == IGNORE_INDEX
    assert encode_prompt(ex, bos_tok) == enc["input_ids"][: len(encode_prompt(ex, bos_tok))]
    short = encode_example(ex, bos_tok, max_length=6, min_response_tokens=2)
    assert short["input_ids"][0] == bos and len(short["input_ids"]) == 6
    assert encode_prompt(ex, bos_tok, max_length=3)[0] == bos


def test_truncation(tok):
    ex = Example("one two three four five six seven eight nine ten\n", "alpha beta gamma delta epsilon zeta")
    p, r = ids(tok, ex.prompt), ids(tok, ex.response) + [tok.eos_token_id]
    # long response, short prompt: response cut at the right, EOS lost
    enc = encode_example(ex, tok, max_length=len(p) + 3, min_response_tokens=2)
    assert enc["input_ids"] == p + r[:3] and enc["labels"][-1] != tok.eos_token_id
    # prompt too long: cut from the left, keeping min_response_tokens of the response
    enc = encode_example(ex, tok, max_length=6, min_response_tokens=2)
    assert enc["input_ids"] == p[-4:] + r[:2] and enc["labels"] == [IGNORE_INDEX] * 4 + r[:2]
    # default keeps max_length // 4 response tokens
    enc = encode_example(ex, tok, max_length=8)
    assert sum(label != IGNORE_INDEX for label in enc["labels"]) == 2 and len(enc["input_ids"]) == 8
    # nothing lost when it fits exactly
    assert encode_example(ex, tok, max_length=len(p) + len(r))["input_ids"] == p + r
    with pytest.raises(AdaspecError, match="max_length"):
        encode_example(ex, tok, max_length=1)


def test_encode_examples_drops_empty_responses(tok):
    long_prompt = Example("word " * 40, "x")
    fine = Example("q\n", "a")
    with pytest.warns(UserWarning, match="dropped 1 of 2"):
        out = encode_examples([long_prompt, fine], tok, max_length=8, min_response_tokens=0)
    assert len(out) == 1 and out[0] == encode_example(fine, tok, 8)
    empty = encode_example(Example("", "hi"), tok, 16)  # an empty prompt becomes EOS, so "hi" is learnt
    assert empty["input_ids"][0] == tok.eos_token_id and empty["labels"][0] == IGNORE_INDEX


def test_collate_pads_from_lengths():
    eos = 0
    batch = [
        {"input_ids": [5, 6, eos], "labels": [IGNORE_INDEX, 6, eos]},
        {"input_ids": [7, 8, 9, 10, eos], "labels": [IGNORE_INDEX, IGNORE_INDEX, 9, 10, eos]},
    ]
    out = collate(batch, pad_token_id=eos)
    assert out["input_ids"].tolist() == [[5, 6, 0, 0, 0], [7, 8, 9, 10, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    # the real EOS keeps its label; padding (also id 0) gets -100
    assert out["labels"].tolist() == [[-100, 6, 0, -100, -100], [-100, -100, 9, 10, 0]]
    assert all(t.dtype == torch.long for t in out.values())
    with pytest.raises(AdaspecError):
        collate([], 0)


def test_tokenizer_round_trip_save_load_deterministic(tok, tmp_path):
    assert tok.eos_token == tok.bos_token == tok.pad_token == tok.unk_token == EOS_TOKEN
    assert tok.eos_token_id == 0 and len(tok) == 600
    for text in ["Hello  world\n\n\tend ", "ünïcödé 😀 中文 ½", f"a{EOS_TOKEN}b", " lead", ""]:
        assert tok.decode(ids(tok, text)) == text
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    sample = load_task("gsm8k", "test", limit=1)[0].prompt
    assert ids(loaded, sample) == ids(tok, sample) and loaded.eos_token_id == 0 and loaded.pad_token_id == 0
    texts = [ex.prompt + ex.response for ex in load_task("gsm8k", "train", limit=300)]
    assert train_tokenizer(texts, vocab_size=600).get_vocab() == tok.get_vocab()
    with pytest.raises(AdaspecError, match="vocab_size"):
        train_tokenizer(["x"], vocab_size=100)


def test_pad_id_falls_back_to_eos_then_zero():
    from types import SimpleNamespace as NS

    assert pad_id(NS(pad_token_id=3, eos_token_id=1)) == 3
    assert pad_id(NS(pad_token_id=None, eos_token_id=1)) == 1
    assert pad_id(NS(pad_token_id=None, eos_token_id=None)) == 0


# ------------------------------------------------------------------------------------ non-UTF-8 input


def _latin1(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n')
    return path


def test_non_utf8_data_names_file_line_and_byte(tmp_path):
    with pytest.raises(AdaspecError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        load_jsonl(_latin1(tmp_path))
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(AdaspecError, match=r"image.png:1: not UTF-8 text \(byte 0x89 at column 1\)"):
        load_jsonl(binary)
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_text('{"prompt": "x\\ud800", "response": "b"}\n')
    with pytest.raises(
        AdaspecError,
        match=r"surrogate.jsonl:1: field 'prompt' is not valid UTF-8 text "
        r"\(lone surrogate U\+D800 at character 2\)",
    ):
        load_jsonl(surrogate)


@pytest.mark.parametrize("command", ["distill", "cache", "train-target"])
def test_non_utf8_data_through_every_command_is_one_line(capsys, tmp_path, tiny_target_dir, command):
    from helpers import cli_error

    model = ["--model" if command == "train-target" else "--target", tiny_target_dir]
    err = cli_error(capsys, command, *model, "--data", _latin1(tmp_path), "--output", tmp_path / "o", "--no-progress")
    assert "latin1.jsonl:2: not UTF-8 text" in err


def test_non_utf8_prompt_is_one_line(capsys, tiny_target_dir):
    from helpers import cli_error

    # bytes that are not UTF-8 reach Python's argv as surrogate escapes
    err = cli_error(
        capsys,
        "generate",
        "--target",
        tiny_target_dir,
        "--draft",
        tiny_target_dir,
        "--prompt",
        b"caf\xe9".decode("utf-8", "surrogateescape"),
    )
    assert "--prompt is not valid UTF-8 text (byte 0xe9 at character 4)" in err
