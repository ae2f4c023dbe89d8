"""Training outputs: never an input, never a file, never two writers, and a rerun resumes only itself."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_error, run, summary

from adaspec import models
from adaspec.decoding.acceptance import Continuations, greedy_continuations
from adaspec.safety import LOCK_NAME
from adaspec.training.run_fingerprint import FINGERPRINT

TRAIN_FAST = [
    "--max-length",
    "64",
    "--val-examples",
    "4",
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
FAST = [*TRAIN_FAST, "--val-max-new-tokens", "8"]


def _digest(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir()) if f.is_file()}


@pytest.fixture()
def copies(tmp_path, tiny_target_dir, tiny_draft_dir) -> tuple[Path, Path]:
    # copies: a failing test must not destroy the session's shared model folders
    t, d = tmp_path / "models" / "target", tmp_path / "models" / "draft"
    shutil.copytree(tiny_target_dir, t)
    shutil.copytree(tiny_draft_dir, d)
    return t, d


def test_output_over_an_input_is_refused_and_the_input_kept(capsys, tmp_path, copies):
    target, draft = copies
    before = _digest(target), _digest(draft)
    err = cli_error(capsys, "distill", "--target", target, "--max-steps", 1, *FAST, "--output", target)
    assert "is the target" in err
    err = cli_error(
        capsys, "distill", "--target", target, "--draft-init", draft, "--max-steps", 1, *FAST, "--output", draft
    )
    assert "is the draft initialisation" in err
    err = cli_error(capsys, "distill", "--target", target, "--max-steps", 1, *FAST, "--output", tmp_path)
    assert "contains the target" in err
    err = cli_error(capsys, "distill", "--target", target, "--max-steps", 1, *FAST, "--output", target / "d")
    assert "lies inside the target" in err
    err = cli_error(capsys, "train-target", "--model", target, "--max-steps", 1, *TRAIN_FAST, "--output", target)
    assert "is the --model" in err
    data = tmp_path / "mine.jsonl"
    data.write_text('{"prompt": "a", "response": "b"}\n')
    err = cli_error(capsys, "cache", "--target", target, "--data", data, "--output", target / "cache")
    assert "lies inside the target" in err
    assert (_digest(target), _digest(draft)) == before and not (target / "d").exists()


def test_output_that_is_a_file_is_refused_before_any_work(capsys, tmp_path):
    f = tmp_path / "out"
    f.write_text("precious")
    # the target does not exist: the output is checked first, before anything is loaded
    for cmd in (
        ["distill", "--target", tmp_path / "nope"],
        ["train-target", "--model", tmp_path / "nope"],
        ["cache", "--target", tmp_path / "nope"],
    ):
        err = cli_error(capsys, *cmd, "--output", f)
        assert "is an existing file" in err
    assert f.read_text() == "precious"


def test_second_live_writer_is_refused(capsys, tmp_path, tiny_target_dir):
    out = tmp_path / "o"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        err = cli_error(capsys, "distill", "--target", tiny_target_dir, "--max-steps", 1, *FAST, "--output", out)
        assert f"in use by process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert not (out / "last").exists()


def _val_continuations(out: Path) -> Continuations:
    (path,) = out.glob("val_continuations-*.json")
    return Continuations.from_json(json.loads(path.read_text()))


def test_rerun_with_other_settings_is_refused_until_overwrite(
    capsys, tmp_path, tiny_target_dir, tiny_draft_dir, tiny_tokenizer
):
    out = tmp_path / "run"
    base = ["distill", "--target", tiny_target_dir, "--max-steps", 2, "--lr", "1e-3", *FAST]
    assert run(*base, "--output", out) == 0
    fingerprint = json.loads((out / FINGERPRINT).read_text())
    assert fingerprint["target"].startswith(models.model_fingerprint(tiny_target_dir))
    assert "progress" not in fingerprint and "save_every" not in fingerprint
    capsys.readouterr()
    for flags, field in (
        (["--lr", "2e-3"], "lr (0.001 vs 0.002)"),
        (["--max-steps", 3], "max_steps (2 vs 3)"),
        (["--method", "adaspec", "--ref", tiny_draft_dir], "method (kd vs adaspec)"),
    ):
        err = cli_error(capsys, *base, *flags, "--output", out)
        assert field in err and "--overwrite" in err
    # the same run again resumes (nothing left to do) and so does --no-resume (it retrains in place)
    assert run(*base, "--output", out) == 0
    assert run(*base, "--no-resume", "--output", out) == 0
    # a different target: refused, even without resuming, and its continuations are never reused
    other = tmp_path / "other_target"
    models.save_model(models.build_model("tiny-neox", len(tiny_tokenizer), seed=5), other, tiny_tokenizer)
    other_base = ["distill", "--target", other, *base[3:]]
    err = cli_error(capsys, *other_base, "--no-resume", "--output", out)
    assert "target (" in err
    old_val = _val_continuations(out)
    assert run(*other_base, "--overwrite", "--output", out) == 0
    val = _val_continuations(out)
    prompts = [s[:n] for s, n in zip(old_val.sequences, old_val.prompt_lengths)]
    assert (
        val.sequences
        == greedy_continuations(models.load_model(other), prompts, 8, tiny_tokenizer.eos_token_id).sequences
    )
    assert json.loads((out / FINGERPRINT).read_text())["target"].startswith(models.model_fingerprint(other))
    assert summary(out)["steps"] == 2
    # --overwrite with the same settings starts over too: the run is trained again from step 0
    (out / "keep.txt").write_text("not a run file")
    assert run(*other_base, "--overwrite", "--output", out) == 0
    assert "resumed" not in capsys.readouterr().out and (out / "keep.txt").exists()


def test_folder_with_a_model_but_no_fingerprint_is_refused(capsys, tmp_path, tiny_target_dir, tiny_draft_dir):
    out = tmp_path / "o"
    shutil.copytree(tiny_draft_dir, out)
    err = cli_error(capsys, "distill", "--target", tiny_target_dir, "--max-steps", 1, *FAST, "--output", out)
    assert "without run_fingerprint.json" in err and "--overwrite" in err


def test_a_run_recorded_before_its_options_were_renamed_still_resumes(capsys, tmp_path, tiny_target_dir):
    """train-head's --loss / --init are --divergence / --draft-init now: its old run folders still resume."""
    out = tmp_path / "mtp"
    base = ["train-head", "--target", tiny_target_dir, "--kind", "mtp", "--depth", 2, *FAST, "--output", out]
    assert run(*base, "--max-steps", 2) == 0
    fingerprint = json.loads((out / FINGERPRINT).read_text())
    assert fingerprint["divergence"] == "fkl" and "draft_init" in fingerprint
    old = {{"divergence": "loss", "draft_init": "init"}.get(k, k): v for k, v in fingerprint.items()}
    (out / FINGERPRINT).write_text(json.dumps(old))  # as written before the rename
    capsys.readouterr()
    err = cli_error(capsys, *base, "--max-steps", 2, "--divergence", "rkl")
    assert "divergence (fkl vs rkl)" in err and "loss" not in err  # the old name's value is the new option's
    assert run(*base, "--max-steps", 2) == 0
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((out / FINGERPRINT).read_text()) == fingerprint  # rewritten under the new names
