"""`adaspec eval --data`: a user's own prompts, read like `distill` reads them, with no task score."""

import json

import pytest

from adaspec import cli, data, models


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    records = [{"question": f"What is {i} plus {i}?", "answer": f"It is {2 * i}."} for i in range(6)]
    path = root / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    tok = data.train_tokenizer([r["question"] + r["answer"] for r in records] * 5, 300)
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    models.save_model(models.build_model("tiny-neox", len(tok), seed=0), root / "target", tok)
    models.save_model(models.build_model("tiny-neox", len(tok), seed=1), root / "draft", tok)
    return root, path


def test_eval_reads_the_users_jsonl(setup, tmp_path, capsys):
    root, path = setup
    out = tmp_path / "eval.json"
    rc = cli.main(
        [
            "eval",
            "--target",
            str(root / "target"),
            "--draft",
            str(root / "draft"),
            "--data",
            str(path),
            "--prompt-field",
            "question",
            "--response-field",
            "answer",
            "--n-prompts",
            "3",
            "--max-new-tokens",
            "6",
            "--gamma",
            "2",
            "--loss-examples",
            "4",
            "--json",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert f"data {path}" in table and "none n/a" in table
    result = json.loads(out.read_text())
    assert result["config"]["data"] == str(path) and result["config"]["task"] is None
    assert result["target"]["quality_metric"] == "none" and result["target"]["quality"] is None
    assert result["config"]["n_prompts"] == 3 and result["config"]["loss_examples"] == 4
    assert all(r["quality"] is None for r in result["target"]["per_prompt"])
    assert result["drafts"]["draft"]["stats"]["drafted"] > 0
    resolved = json.loads((tmp_path / "eval.options.json").read_text())  # beside --json, for --config
    assert resolved["command"] == "eval" and resolved["data"] == str(path) and resolved["n_prompts"] == 3


def test_eval_data_names_a_missing_field(setup, tmp_path, capsys):
    root, path = setup
    rc = cli.main(
        [
            "eval",
            "--target",
            str(root / "target"),
            "--draft",
            str(root / "draft"),
            "--data",
            str(path),
            "--n-prompts",
            "2",
            "--max-new-tokens",
            "4",
            "--no-cache",
        ]
    )
    assert rc == 2 and "no field 'prompt'" in capsys.readouterr().err


def test_eval_reads_chat_records_with_the_targets_template(setup, tmp_path):
    root, _ = setup
    path = tmp_path / "chat.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"What is {i} plus {i}?"},
                        {"role": "assistant", "content": f"It is {2 * i}."},
                    ]
                }
            )
            + "\n"
            for i in range(4)
        )
    )
    out = tmp_path / "eval.json"
    assert (
        cli.main(
            [
                "eval",
                "--target",
                str(root / "target"),
                "--draft",
                str(root / "draft"),
                "--data",
                str(path),
                "--n-prompts",
                "2",
                "--max-new-tokens",
                "4",
                "--gamma",
                "2",
                "--loss-examples",
                "2",
                "--no-cache",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["config"]["loss_tokens"] > 0 and result["target"]["per_prompt"][0]["prompt_tokens"] > 5
