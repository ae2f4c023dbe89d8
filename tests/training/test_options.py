"""Numeric options are range-checked where they are declared; a non-finite loss stops training in one line
and never replaces a good checkpoint."""

from __future__ import annotations

import pytest
import torch
from helpers import cli_error, options_from
from safetensors.torch import load_file

from adaspec.errors import AdaspecError
from adaspec.recipes import distill
from adaspec.training import setup

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
    "--warmup-steps",
    "0",
]


@pytest.mark.parametrize(
    "command,flag,value,message",
    [
        ("distill", "--lr", "inf", "--lr must be a finite number"),
        ("distill", "--lr", "nan", "--lr must be a finite number"),
        ("distill", "--lr", "-1", "--lr must be > 0"),
        ("distill", "--weight-decay", "nan", "--weight-decay must be a finite number"),
        ("distill", "--weight-decay", "-0.1", "--weight-decay must be >= 0"),
        ("distill", "--warmup-steps", "-5", "--warmup-steps must be >= 0"),
        ("distill", "--grad-clip", "nan", "--grad-clip must be a finite number"),
        ("distill", "--grad-clip", "-1", "--grad-clip must be >= 0"),
        ("distill", "--epochs", "inf", "--epochs must be a finite number"),
        ("distill", "--epochs", "0", "--epochs must be > 0"),
        ("distill", "--temperature", "inf", "--temperature must be a finite number"),
        ("distill", "--gen-temperature", "-1", "--gen-temperature must be >= 0"),
        ("distill", "--beta", "nan", "--beta must be a finite number"),
        ("distill", "--mix-ratio", "1.5", "--mix-ratio must be in [0, 1]"),
        ("distill", "--k", "nan", "--k must be a finite number"),
        ("distill", "--val-max-new-tokens", "0", "--val-max-new-tokens must be >= 1"),
        ("train-target", "--lr", "inf", "--lr must be a finite number"),
        ("train-head", "--step-decay", "nan", "--step-decay must be a finite number"),
        ("train-head", "--lam", "inf", "--lam must be a finite number"),
        ("cache", "--temperature", "inf", "--temperature must be a finite number"),
        ("eval", "--temperature", "nan", "--temperature must be a finite number"),
        ("eval", "--top-p", "nan", "--top-p must be a finite number"),
        ("generate", "--temperature", "inf", "--temperature must be a finite number"),
        # sizes bounded before anything is allocated
        ("train-target", "--max-length", "1000000", "--max-length must be in 2..131072"),
        ("distill", "--batch-size", "100000", "--batch-size x --max-length is 25,600,000 tokens per micro-batch"),
    ],
)
def test_bad_numbers_are_refused_in_one_line(capsys, tmp_path, command, flag, value, message):
    # missing local folders, not hub ids: without the range check the command fails fast, offline
    t, d = tmp_path / "no_target", tmp_path / "no_draft"
    needs = {
        "distill": ["--target", t, "--output", tmp_path / "o"],
        "train-target": ["--output", tmp_path / "o", "--data", tmp_path / "no.jsonl"],
        "train-head": ["--target", t, "--output", tmp_path / "o"],
        "cache": ["--target", t, "--output", tmp_path / "o"],
        "eval": ["--target", t, "--draft", d],
        "generate": ["--target", t, "--draft", d, "--prompt", "p"],
    }[command]
    err = cli_error(capsys, command, *needs, f"{flag}={value}")
    assert message in err


def test_top_k_needs_a_teacher_cache(tmp_path):
    with pytest.raises(AdaspecError, match="--top-k .* give --teacher-cache"):
        options_from(["distill", "--target", "t", "--output", tmp_path, "--top-k", "8"])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_target_dir, monkeypatch):
    out = tmp_path / "o"
    opts = options_from(
        ["distill", "--target", tiny_target_dir, *FAST, "--max-steps", "4", "--save-every", "1", "--output", out]
    )
    draft_params: list[torch.nn.Parameter] = []
    real_train_loop = setup.train_loop

    def train_loop(opts, accelerator, model, *args, **kwargs):
        draft_params.extend(model.parameters())
        return real_train_loop(opts, accelerator, model, *args, **kwargs)

    def poison(step: int, batches: list[dict]) -> None:
        if step == 2:  # after two good saves, the draft's weights turn NaN
            for p in draft_params:
                p.data.fill_(float("nan"))

    monkeypatch.setattr(setup, "train_loop", train_loop)
    with pytest.raises(AdaspecError, match=r"step 3: the loss nan is not finite; stopped before applying it"):
        distill.run_distill(opts, on_step=poison)
    weights = load_file(str(out / "last" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert '"step": 2' in (out / "last" / "trainer_state.json").read_text()


def test_head_token_budget_is_distills():
    """train-head --match-token-budget shapes a run as distill's does, by batch or by epochs; the options
    themselves stay as given."""
    from adaspec.recipes.train_head.options import TrainHeadOptions
    from adaspec.training.loop import Budget

    base = dict(target="t", output="o", batch_size=16, epochs=1.0, k=0.4)
    plain = TrainHeadOptions(**base)
    assert setup.run_budget(plain, 100) == Budget(16, 1.0, None) == Budget.of(plain)
    for by in ("epochs", "batch"):
        opts = TrainHeadOptions(**base, kind="mtp", match_token_budget=True, budget_by=by)
        b = setup.run_budget(opts, 100)
        assert (b.batch_size, b.epochs, b.max_steps) == setup.matched_budget(100, 16, 1, 1.0, 0.4, by)
        assert (opts.batch_size, opts.epochs, opts.max_steps) == (16, 1.0, None)
    b = setup.run_budget(TrainHeadOptions(**base, match_token_budget=True, budget_by="batch", max_steps=3), 100)
    assert (b.batch_size, b.max_steps) == (40, 3)  # an explicit --max-steps stays


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_target_dir, monkeypatch, capsys
):
    import errno

    from adaspec.training import checkpoint

    out = tmp_path / "o"
    real_save, calls = checkpoint.torch.save, []

    def save(obj, path, *a, **k):  # the optimizer state of the second checkpoint hits a full disk
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    err = cli_error(
        capsys, "distill", "--target", tiny_target_dir, *FAST, "--max-steps", "3", "--save-every", "1", "--output", out
    )
    assert "No space left on device" in err
    assert not list(out.glob("*.tmp*")) and (out / "last" / "model.safetensors").exists()
    assert '"step": 1' in (out / "last" / "trainer_state.json").read_text()
