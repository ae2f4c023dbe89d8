"""`train-head` through the CLI: MTP and Medusa heads trained on a frozen target, AdaSPEC selection per
depth against a reference head, resume, 2 processes against 1, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import cli_error, options_from, run, scalars, summary, torchrun
from safetensors.torch import load_file

from adaspec import AdaspecError, models
from adaspec.decoding.generate import speculative_generate
from adaspec.drafters.medusa.model import MedusaDrafter
from adaspec.drafters.mtp.model import MTPDrafter
from adaspec.recipes.train_head import options as recipe

FAST = ["--max-length", "64", "--val-examples", "4", "--val-max-new-tokens", "8", "--val-every", "0", "--no-progress"]
BASE = ["--limit", "32", "--batch-size", "8", "--max-steps", "3", "--lr", "1e-3", "--warmup-steps", "0", *FAST]


def max_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("heads")


@pytest.fixture(scope="module")
def target_dir(root, tiny_target_dir, tiny_tokenizer) -> Path:
    """The tiny target with a sharpened head (confident predictions; see tests/distill/test_recipe.py)."""
    model = models.load_model(tiny_target_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)
    out = root / "sharp_target"
    models.save_model(model, out, tiny_tokenizer)
    return out


@pytest.fixture(scope="module")
def mtp_kd(root, target_dir) -> Path:
    out = root / "mtp_kd"
    assert run("train-head", "--target", target_dir, "--kind", "mtp", "--depth", "2", *BASE, "--output", out) == 0
    return out


def test_mtp_run_outputs_and_decodes_losslessly(mtp_kd, target_dir):
    s = summary(mtp_kd)
    assert s["kind"] == "mtp" and s["steps"] == 3 and s["best_accept_length"] >= 0
    assert {"accept_length", "alpha_depth1", "alpha_depth2"} <= set(s["history"][-1])
    assert len(scalars(mtp_kd, "train/loss")) == 3 and scalars(mtp_kd, "train/loss_depth2")
    assert scalars(mtp_kd, "val/accept_length")
    target = models.load_model(target_dir)
    drafter = MTPDrafter.load(str(mtp_kd), target)
    ids = torch.tensor([[5, 17, 33, 2]])
    expected = target.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12, eos_token_id=None, pad_token_id=0
    )
    out, _ = speculative_generate(target, drafter, ids, max_new_tokens=12, gamma=2)
    assert torch.equal(out, expected)


@pytest.fixture(scope="module")
def medusa_shared(root, target_dir) -> Path:
    out = root / "medusa_shared"
    assert (
        run(
            "train-head",
            "--target",
            target_dir,
            "--kind",
            "medusa",
            "--depth",
            "2",
            "--shared-head",
            *BASE,
            "--output",
            out,
        )
        == 0
    )
    return out


def test_medusa_shared_head_export_is_complete(medusa_shared, target_dir):
    out = medusa_shared
    config = json.loads((out / "config.json").read_text())
    assert config["original_lm_head"] is True and config["num_heads"] == 2
    tensors = load_file(str(out / "model.safetensors"))
    target = models.load_model(target_dir)
    assert torch.equal(tensors["lm_heads.0.weight"], target.get_output_embeddings().weight)  # what vLLM loads
    assert MedusaDrafter.load(str(out), target).max_gamma == 2


def test_adaspec_keeps_fraction_k_per_depth_and_all_is_kd(root, mtp_kd, target_dir):
    out = root / "mtp_adaspec"
    assert (
        run(
            "train-head",
            "--target",
            target_dir,
            "--kind",
            "mtp",
            "--depth",
            "2",
            "--method",
            "adaspec",
            "--ref",
            mtp_kd,
            "--k",
            "0.4",
            *BASE,
            "--output",
            out,
        )
        == 0
    )
    for depth in (1, 2):
        kept = [v for _, v in scalars(out, f"train/kept_depth{depth}")]
        assert all(0.3 < v < 0.5 for v in kept), kept
    everything = root / "mtp_adaspec_all"
    assert (
        run(
            "train-head",
            "--target",
            target_dir,
            "--kind",
            "mtp",
            "--depth",
            "2",
            "--method",
            "adaspec",
            "--ref",
            mtp_kd,
            "--selection",
            "all",
            *BASE,
            "--output",
            everything,
        )
        == 0
    )
    assert max_diff(everything, mtp_kd) == 0.0
    assert max_diff(out, mtp_kd) > 1e-5


def test_resume_random_selection(tmp_path, mtp_kd, target_dir, capsys):
    args = [
        "train-head",
        "--target",
        target_dir,
        "--kind",
        "mtp",
        "--depth",
        "2",
        "--method",
        "adaspec",
        "--ref",
        mtp_kd,
        "--selection",
        "random",
        "--k",
        "0.5",
        *BASE,
        "--max-steps",
        "4",
        "--save-every",
        "2",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(*args, "--output", straight) == 0

    def stop_at_step_3(step, batches):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recipe.run_train_head(options_from(args, "--output", resumed), on_step=stop_at_step_3)
    assert json.loads((resumed / "last" / "trainer_state.json").read_text())["step"] == 2
    capsys.readouterr()
    assert run(*args, "--output", resumed) == 0
    assert "resumed from" in capsys.readouterr().out
    assert max_diff(resumed / "last", straight / "last") < 1e-6


@pytest.mark.slow  # ~25 s here: two interpreters starting torch and transformers
def test_two_processes_match_one(root, mtp_kd, target_dir):
    out = root / "mtp_kd_ddp"
    proc = torchrun("train-head", out, "--target", target_dir, "--kind", "mtp", "--depth", "2", *BASE)
    assert proc.stdout.count("mtp heads: ") == 1, proc.stdout
    assert summary(out)["steps"] == 3
    assert max_diff(out, mtp_kd) < 1e-5
    for (s1, a), (s2, b) in zip(scalars(out, "train/loss"), scalars(mtp_kd, "train/loss")):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-4)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--method", "adaspec"], "--method adaspec needs --ref"),
        (["--depth-weights", "1", "2", "3"], "3 depth weights for 2 depths"),
        (["--depth", "0"], "--depth must be >= 1"),
    ],
)
def test_bad_options_are_refused(capsys, tmp_path, target_dir, extra, needle):
    err = cli_error(
        capsys,
        "train-head",
        "--target",
        target_dir,
        "--kind",
        "mtp",
        "--depth",
        "2",
        *BASE,
        *extra,
        "--output",
        tmp_path / "x",
    )
    assert needle in err


def test_reference_of_another_kind_or_depth_is_refused(capsys, tmp_path, mtp_kd, target_dir):
    err = cli_error(
        capsys,
        "train-head",
        "--target",
        target_dir,
        "--kind",
        "medusa",
        "--depth",
        "2",
        "--method",
        "adaspec",
        "--ref",
        mtp_kd,
        *BASE,
        "--output",
        tmp_path / "x",
    )
    assert "holds no Medusa heads" in err
    err = cli_error(
        capsys,
        "train-head",
        "--target",
        target_dir,
        "--kind",
        "mtp",
        "--depth",
        "3",
        "--method",
        "adaspec",
        "--ref",
        mtp_kd,
        *BASE,
        "--output",
        tmp_path / "y",
    )
    assert "has 2 depths, --depth is 3" in err


def test_head_drafter_loads_by_its_saved_kind(mtp_kd, medusa_shared, target_dir):
    from adaspec.drafters.loading import load_drafter

    target = models.load_model(target_dir)
    assert isinstance(load_drafter("mtp", mtp_kd, target), MTPDrafter)
    assert isinstance(load_drafter("medusa", medusa_shared, target), MedusaDrafter)
    with pytest.raises(AdaspecError, match="holds no adaspec heads"):
        load_drafter("mtp", target_dir, target)


def test_head_depth_beyond_the_sequence_is_refused_before_any_work(tmp_path, tiny_target_dir, capsys):
    err = cli_error(
        capsys,
        "train-head",
        "--kind",
        "medusa",
        "--depth",
        "10000",
        "--target",
        tiny_target_dir,
        "--output",
        tmp_path / "x",
    )
    assert "--depth (10000) must be below --max-length (256)" in err and not (tmp_path / "x").exists()
    err = cli_error(capsys, "train-head", "--ttt-steps", "300", "--target", tiny_target_dir, "--output", tmp_path / "y")
    assert "--ttt-steps must be in 1..255" in err
    err = cli_error(
        capsys, "generate", "--target", tiny_target_dir, "--draft", tiny_target_dir, "--prompt", "a", "--gamma", "1000"
    )
    assert "--gamma must be in 1..64" in err
