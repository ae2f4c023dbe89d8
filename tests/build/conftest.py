"""The build tests' target: a tiny Llama with the chatml template (chat files: helpers.write_chats)."""

from pathlib import Path

import pytest

from adaspec import models
from adaspec.data.chat import set_template


@pytest.fixture(scope="module")
def chat_target(tmp_path_factory, tiny_tokenizer) -> Path:
    """A tiny Llama target (head size 32: vLLM serves it) whose tokenizer carries the built-in chatml template."""
    path = tmp_path_factory.mktemp("build") / "target"
    models.save_model(models.build_model("tiny-llama", len(tiny_tokenizer), seed=0), path, tiny_tokenizer)
    saved = models.load_tokenizer(path)
    set_template(saved, "chatml")
    saved.save_pretrained(str(path))
    return path
