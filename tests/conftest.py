"""Shared fixtures: a tiny tokenizer and tiny saved target/draft checkpoints (no downloads, a few seconds).

`tiny_tokenizer`: byte-level BPE (vocabulary TINY_VOCAB) trained on 200 GSM8K training texts.
`tiny_target_dir`: a tiny-neox model (seed 0) with that tokenizer, saved as safetensors.
`tiny_draft_dir`: a tiny-llama model (seed 1) with the same tokenizer: another architecture, same ids.
The models are random: they exercise code paths, not quality. Treat the directories as read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_VOCAB = 320


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models on a shared 2-core machine: thread hand-offs cost more than the matmuls
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    # commands default their caches to the user's cache folder ($XDG_CACHE_HOME/adaspec): not the real one
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from adaspec import data

    texts = [ex.prompt + ex.response for ex in data.load_task("gsm8k", "train", limit=200)]
    return data.train_tokenizer(texts, vocab_size=TINY_VOCAB)


@pytest.fixture(scope="session")
def tiny_target_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    from adaspec import models

    path = tmp_path_factory.mktemp("tiny_models") / "target"
    models.save_model(models.build_model("tiny-neox", len(tiny_tokenizer), seed=0), path, tiny_tokenizer)
    return path


@pytest.fixture(scope="session")
def tiny_draft_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    from adaspec import models

    path = tmp_path_factory.mktemp("tiny_models") / "draft"
    models.save_model(models.build_model("tiny-llama", len(tiny_tokenizer), seed=1), path, tiny_tokenizer)
    return path
