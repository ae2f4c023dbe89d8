"""`distill --data chat.jsonl`: conversations train through the target's chat template, assistant turns only."""

import json

from helpers import run, summary

from adaspec import config, models

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def test_distill_on_chat_records(tmp_path, tiny_tokenizer, tiny_draft_dir):
    tok = type(tiny_tokenizer).from_pretrained(str(tiny_draft_dir))
    tok.chat_template = TEMPLATE
    target = tmp_path / "target"
    models.save_model(models.build_model("tiny-neox", len(tok), seed=0), target, tok)
    chats = tmp_path / "chats.jsonl"
    chats.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"What is {i} plus {i}?"},
                        {"role": "assistant", "content": f"{2 * i}."},
                        {"role": "user", "content": "Sure?"},
                        {"role": "assistant", "content": "Yes."},
                    ]
                }
            )
            + "\n"
            for i in range(16)
        )
    )
    out = tmp_path / "draft"
    assert (
        run(
            "distill",
            "--target",
            target,
            "--draft-init",
            tiny_draft_dir,
            "--method",
            "kd",
            "--data",
            chats,
            "--batch-size",
            "8",
            "--max-steps",
            "1",
            "--max-length",
            "64",
            "--val-examples",
            "4",
            "--val-max-new-tokens",
            "4",
            "--val-every",
            "0",
            "--no-progress",
            "--output",
            out,
        )
        == 0
    )
    assert summary(out)["steps"] == 1
    resolved = json.loads((out / config.RESOLVED_NAME).read_text())
    assert resolved["data"] == str(chats) and resolved["method"] == "kd"
