"""The one vocabulary rule (check_vocab_compatible) through every command, and strict checkpoint loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import cli_error, run
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from adaspec import models
from adaspec.errors import AdaspecError

FAST = [
    "--max-length",
    "64",
    "--val-examples",
    "4",
    "--val-max-new-tokens",
    "8",
    "--val-every",
    "0",
    "--no-progress",
    "--limit",
    "16",
    "--batch-size",
    "8",
    "--max-steps",
    "1",
]
EVAL_FAST = ["--n-prompts", "1", "--max-new-tokens", "4", "--loss-examples", "2", "--no-cache"]


def _other_merges(tok) -> PreTrainedTokenizerFast:
    """The same vocabulary with the last merge rule dropped: same ids, different splits of some words."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    spec["model"]["merges"] = spec["model"]["merges"][:-1]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token=tok.eos_token)


@pytest.fixture(scope="module")
def bare(tmp_path_factory, tiny_tokenizer) -> dict[str, Path]:
    """Drafts saved without tokenizer files: one with the target's vocabulary size, one with 4x it."""
    root = tmp_path_factory.mktemp("bare")
    v = len(tiny_tokenizer)
    models.save_model(models.build_model("tiny-llama", v, seed=3), root / "same")
    models.save_model(models.build_model("tiny-llama", 4 * v, seed=3), root / "big")
    return {"same": root / "same", "big": root / "big"}


def test_rule_with_and_without_tokenizers(tiny_tokenizer, capsys):
    v = len(tiny_tokenizer)
    target = models.build_model("tiny-neox", v, seed=0)
    padded = models.build_model("tiny-llama", v + 64, seed=0)
    models.check_vocab_compatible(target, padded, tiny_tokenizer, tiny_tokenizer)  # the same tokenizer, padded
    with pytest.raises(AdaspecError, match=r"different vocabulary sizes \(output embedding 320 vs 384 rows\)"):
        models.check_vocab_compatible(target, padded, tiny_tokenizer, None)
    models.check_vocab_compatible(target, models.build_model("tiny-llama", v, seed=0), tiny_tokenizer, None)
    assert "merges could not be checked" in capsys.readouterr().err
    small = models.build_model("tiny-llama", v - 10, seed=0)
    with pytest.raises(AdaspecError, match="fewer than the tokenizer's 320 tokens"):
        models.check_vocab_compatible(target, small, tiny_tokenizer, tiny_tokenizer)


def test_same_vocabulary_with_other_merges_is_named(tiny_tokenizer):
    model = models.build_model("tiny-neox", len(tiny_tokenizer), seed=0)
    other = _other_merges(tiny_tokenizer)
    assert other.get_vocab() == tiny_tokenizer.get_vocab()
    with pytest.raises(AdaspecError, match="same 320-token vocabulary but different merges"):
        models.check_vocab_compatible(model, model, tiny_tokenizer, other)
    vocab = tiny_tokenizer.get_vocab()
    swapped = json.loads(tiny_tokenizer.backend_tokenizer.to_str())
    a, b = sorted(vocab, key=vocab.get)[300:302]
    swapped["model"]["vocab"][a], swapped["model"]["vocab"][b] = vocab[b], vocab[a]
    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(swapped)))
    with pytest.raises(AdaspecError, match=r"different vocabularies \(320 tokens each, 2 of them with other ids\)"):
        models.check_vocab_compatible(model, model, tiny_tokenizer, other)


def test_bigger_draft_without_tokenizer_is_refused_by_every_command(capsys, tmp_path, tiny_target_dir, bare):
    err = cli_error(capsys, "eval", "--target", tiny_target_dir, "--draft", bare["big"], *EVAL_FAST)
    assert "different vocabulary sizes" in err
    err = cli_error(capsys, "generate", "--target", tiny_target_dir, "--draft", bare["big"], "--prompt", "Hi")
    assert "different vocabulary sizes" in err
    out = tmp_path / "d"
    err = cli_error(capsys, "distill", "--target", tiny_target_dir, "--draft-init", bare["big"], *FAST, "--output", out)
    assert "different vocabulary sizes" in err
    # nothing saved: no target tokenizer beside the 4x draft to hide the mismatch from later commands
    assert not any((out / n).exists() for n in models.TOKENIZER_FILES)


def test_compatible_draft_without_tokenizer_is_accepted_with_a_warning(capsys, tiny_target_dir, bare):
    assert (
        run(
            "generate",
            "--target",
            tiny_target_dir,
            "--draft",
            bare["same"],
            "--prompt",
            "Hi",
            "--max-new-tokens",
            4,
            "--json",
        )
        == 0
    )
    assert "merges could not be checked" in capsys.readouterr().err


def _remove_layer(src: Path, dst: Path, extra: bool = False) -> Path:
    shutil.copytree(src, dst)
    weights = load_file(str(dst / "model.safetensors"))
    weights = {k: v for k, v in weights.items() if ".1." not in k}
    if extra:
        weights["stray.weight"] = torch.zeros(2)
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_checkpoint_with_missing_or_unexpected_weights_is_refused(capsys, tmp_path, tiny_target_dir, tiny_draft_dir):
    broken = _remove_layer(tiny_draft_dir, tmp_path / "broken", extra=True)
    with pytest.raises(
        AdaspecError,
        match=r"weights \d+ missing \(model\.layers\.1\..*, \.\.\.\); "
        r"1 unexpected \(stray\.weight\)",
    ):
        models.load_model(broken)
    err = cli_error(capsys, "generate", "--target", tiny_target_dir, "--draft", broken, "--prompt", "Hi")
    assert "missing" in err and str(broken) in err
    err = cli_error(capsys, "eval", "--target", broken, "--draft", tiny_draft_dir, *EVAL_FAST)
    assert "missing" in err


@pytest.mark.parametrize("path", ["runs/gsm8k/small/missing", "./missing", "/no/such/model"])
def test_missing_local_directory_is_named_as_such(path):
    with pytest.raises(AdaspecError, match="model directory not found"):
        models.load_model(path)
