"""The shared training loop and `train-target`, through the CLI: outputs, loss, resume, atomic saves, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import cli_error, run, scalars, summary, weights

from adaspec.training import loop as train

FAST = ["--max-length", "64", "--val-examples", "4", "--no-progress"]


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=f"{k} differs")


# ------------------------------------------------------------------------------------------ smoke tests


def test_train_target_from_preset_with_trained_tokenizer(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    min_vocab = 300  # TrainTargetOptions' floor
    out = tmp_path / "target"
    assert (
        run(
            "train-target",
            "--preset",
            "tiny-neox",
            "--vocab-size",
            min_vocab,
            "--limit",
            32,
            "--batch-size",
            8,
            "--max-steps",
            2,
            "--output",
            out,
            *FAST,
        )
        == 0
    )
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == min_vocab
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.model_type == "gpt_neox"
    assert model.get_output_embeddings().weight.shape[0] == min_vocab
    for sub in ("best", "last"):
        assert (out / sub / "model.safetensors").is_file() and (out / sub / "config.json").is_file()
    assert (out / "last" / "trainer_state.pt").is_file()
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 2
    assert list((out / "logs").glob("events.out.tfevents.*"))
    assert [s for s, _ in scalars(out, "train/loss")] == [1, 2]
    s = summary(out)
    assert s["steps"] == 2 and s["params"] == sum(p.numel() for p in model.parameters())
    assert s["best_val_loss"] > 0
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.old"))


def test_pretraining_on_the_corpus_then_fine_tuning_on_a_task(tmp_path):
    """reproduce --preset pretrained's first stages: a model built and trained on every task's text with the
    prompts, then fine-tuned on one task's responses with the corpus tokenizer."""
    pre, sft = tmp_path / "pre", tmp_path / "sft"
    assert (
        run(
            "train-target",
            "--task",
            "corpus",
            "--train-on-prompt",
            "--preset",
            "tiny-neox",
            "--vocab-size",
            300,
            "--limit",
            10,
            "--batch-size",
            5,
            "--max-steps",
            2,
            "--output",
            pre,
            *FAST,
        )
        == 0
    )
    assert (
        run(
            "train-target",
            "--task",
            "mbpp",
            "--model",
            pre,
            "--limit",
            8,
            "--batch-size",
            4,
            "--max-steps",
            1,
            "--output",
            sft,
            *FAST,
        )
        == 0
    )
    assert summary(pre)["steps"] == 2 and summary(sft)["steps"] == 1
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(sft)).get_vocab() == AutoTokenizer.from_pretrained(str(pre)).get_vocab()


def test_train_target_from_model_dir(tmp_path, tiny_target_dir, tiny_tokenizer):
    out = tmp_path / "ft"
    assert (
        run(
            "train-target",
            "--model",
            tiny_target_dir,
            "--limit",
            32,
            "--batch-size",
            8,
            "--max-steps",
            3,
            "--output",
            out,
            *FAST,
        )
        == 0
    )
    assert summary(out)["steps"] == 3
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out)).get_vocab() == tiny_tokenizer.get_vocab()
    before, after = weights(tiny_target_dir), weights(out)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before), "training did not change the weights"


def test_train_target_loss_decreases(tmp_path, tiny_target_dir):
    out = tmp_path / "fit"
    # 16 examples, batch 8: two fixed batches seen 10 times each
    assert (
        run(
            "train-target",
            "--model",
            tiny_target_dir,
            "--limit",
            16,
            "--batch-size",
            8,
            "--max-steps",
            20,
            "--lr",
            "1e-2",
            "--warmup-steps",
            2,
            "--val-every",
            0,
            "--output",
            out,
            *FAST,
        )
        == 0
    )
    losses = [v for _, v in scalars(out, "train/loss")]
    assert len(losses) == 20
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.7 * first, losses
    lrs = [v for _, v in scalars(out, "train/lr")]
    assert lrs[1] == pytest.approx(1e-2) and lrs[-1] < 1e-4  # warm-up then cosine decay to 0


def test_constant_schedule(tmp_path, tiny_target_dir):
    """--schedule constant (the AdaSPEC authors'): linear warm-up, then the peak lr to the last step."""
    out = tmp_path / "constant"
    assert (
        run(
            "train-target",
            "--model",
            tiny_target_dir,
            "--limit",
            8,
            "--batch-size",
            4,
            "--max-steps",
            6,
            "--lr",
            "3e-4",
            "--warmup-steps",
            2,
            "--schedule",
            "constant",
            "--val-every",
            0,
            "--output",
            out,
            *FAST,
        )
        == 0
    )
    lrs = [v for _, v in scalars(out, "train/lr")]
    assert lrs[0] == pytest.approx(1.5e-4) and lrs[1:] == pytest.approx([3e-4] * 5)


# ------------------------------------------------------------------------------------------------ resume

RESUME_ARGS = [
    "--limit",
    16,
    "--batch-size",
    8,
    "--max-steps",
    6,
    "--save-every",
    2,
    "--val-every",
    0,
    "--lr",
    "5e-3",
    "--warmup-steps",
    2,
]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_target_dir) -> Path:
    out = tmp_path_factory.mktemp("resume") / "straight"
    assert run("train-target", "--model", tiny_target_dir, *RESUME_ARGS, "--output", out, *FAST) == 0
    return out


def _interrupt_at_step(monkeypatch, k: int) -> None:
    """Raise KeyboardInterrupt in the scheduler step of optimizer step k (after its optimizer update)."""
    real = train.get_cosine_schedule_with_warmup

    def patched(*args, **kwargs):
        sched = real(*args, **kwargs)
        calls = [0]

        class Interrupting(type(sched)):  # a subclass, so the saved state_dict holds nothing extra
            def step(self, *a, **kw):
                calls[0] += 1
                if calls[0] == k:
                    raise KeyboardInterrupt
                return super().step(*a, **kw)

        sched.__class__ = Interrupting
        return sched

    monkeypatch.setattr(train, "get_cosine_schedule_with_warmup", patched)


def test_resume_after_interrupt_matches_uninterrupted_run(
    tmp_path, tiny_target_dir, uninterrupted, monkeypatch, capsys
):
    out = tmp_path / "resumed"
    args = ["train-target", "--model", tiny_target_dir, *RESUME_ARGS, "--output", out, *FAST]
    with monkeypatch.context() as m:
        _interrupt_at_step(m, 5)  # the update of step 5 is lost; last/ holds step 4
        assert run(*args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 4
    assert run(*args) == 0
    assert "resumed from" in capsys.readouterr().out
    assert summary(out)["steps"] == 6
    assert_same_weights(out / "last", uninterrupted / "last")
    assert_same_weights(out, uninterrupted)
    # the loss of the re-run steps 5 and 6 is the loss the uninterrupted run logged
    straight = dict(scalars(uninterrupted, "train/loss"))
    again = dict(scalars(out, "train/loss"))
    assert again[6] == pytest.approx(straight[6], rel=1e-5)


def test_kill_while_saving_never_loses_the_finished_save(tmp_path, tiny_target_dir, uninterrupted, monkeypatch, capsys):
    """A kill between the two renames of an atomic save leaves the previous save as last.old; resume uses it."""
    out = tmp_path / "killed"
    args = ["train-target", "--model", tiny_target_dir, *RESUME_ARGS, "--output", out, *FAST]
    real_rename = Path.rename

    def rename(self, target):
        if self.name == "last.tmp" and json.loads((self / "trainer_state.json").read_text())["step"] == 4:
            raise KeyboardInterrupt  # last/ already moved to last.old, the new save not yet in place
        return real_rename(self, target)

    with monkeypatch.context() as m:
        m.setattr(Path, "rename", rename)
        assert run(*args) == 130
    assert not (out / "last").exists()
    kept = out / "last.old"
    assert json.loads((kept / "trainer_state.json").read_text())["step"] == 2
    assert set(weights(kept)) == set(weights(uninterrupted))  # a whole, loadable save
    capsys.readouterr()
    assert run(*args) == 0
    assert f"resumed from {kept} at step 2" in capsys.readouterr().out
    assert_same_weights(out / "last", uninterrupted / "last")
    assert not kept.exists() and not (out / "last.tmp").exists()


def test_kill_while_writing_a_save_keeps_the_previous_one(tmp_path, tiny_target_dir, monkeypatch):
    out = tmp_path / "partial"
    args = ["train-target", "--model", tiny_target_dir, *RESUME_ARGS, "--output", out, *FAST]
    real_save, calls = torch.save, [0]

    def save(obj, f, *a, **kw):
        calls[0] += 1
        if calls[0] == 2:  # the trainer state of the step-4 save
            raise KeyboardInterrupt
        return real_save(obj, f, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", save)
        assert run(*args) == 130
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 2
    assert (out / "last" / "trainer_state.pt").is_file() and weights(out / "last")


# ------------------------------------------------------------------------------------------------ errors


def test_vocab_size_below_minimum_is_refused(capsys, tmp_path):
    err = cli_error(capsys, "train-target", "--preset", "tiny-neox", "--vocab-size", 299, "--output", tmp_path / "o")
    assert "--vocab-size" in err and "300" in err


def test_empty_data_is_refused(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    err = cli_error(
        capsys,
        "train-target",
        "--preset",
        "tiny-neox",
        "--vocab-size",
        300,
        "--data",
        empty,
        "--output",
        tmp_path / "o",
        *FAST,
    )
    assert "empty" in err and "empty.jsonl" in err


def test_empty_task_split_is_refused(capsys, tmp_path, tiny_target_dir):
    (tmp_path / "data" / "gsm8k").mkdir(parents=True)
    (tmp_path / "data" / "gsm8k" / "train.jsonl").write_text("")
    err = cli_error(
        capsys,
        "train-target",
        "--model",
        tiny_target_dir,
        "--data-dir",
        tmp_path / "data",
        "--output",
        tmp_path / "o",
        *FAST,
    )
    assert "no examples" in err


def test_missing_and_corrupt_model_are_refused(capsys, tmp_path, tiny_target_dir):
    err = cli_error(capsys, "train-target", "--model", tmp_path / "nope", "--output", tmp_path / "o", *FAST)
    assert "nope" in err and "not found" in err
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_target_dir, corrupt)
    blob = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    err = cli_error(
        capsys, "train-target", "--model", corrupt, "--output", tmp_path / "o", "--limit", 16, "--batch-size", 8, *FAST
    )
    assert "corrupt" in err and str(corrupt) in err


def test_batch_larger_than_data_is_refused(capsys, tmp_path, tiny_target_dir):
    err = cli_error(
        capsys,
        "train-target",
        "--model",
        tiny_target_dir,
        "--limit",
        4,
        "--batch-size",
        8,
        "--output",
        tmp_path / "o",
        *FAST,
    )
    assert "fewer than one batch" in err
