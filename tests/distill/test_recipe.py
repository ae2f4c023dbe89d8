"""`distill` through the CLI: KD divergences, AdaSPEC selection, data sources, token budget, resume,
2-process DDP against 1 process, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import cli_error, max_diff, options_from, run, scalars, summary, torchrun

from adaspec import models
from adaspec.decoding.acceptance import greedy_continuations
from adaspec.recipes import distill
from adaspec.training import loop as train
from adaspec.training.setup import matched_budget

FAST = ["--max-length", "64", "--val-examples", "4", "--val-max-new-tokens", "8", "--val-every", "0", "--no-progress"]
# 32 examples in global micro-batches of 8; Adam moves each weight by ~lr a step, so 3 steps move them by
# ~3e-3, far above the 1e-5 tolerance of the comparisons and far above round-off amplified by Adam (~lr * 1e-3)
BASE = ["--limit", "32", "--batch-size", "8", "--max-steps", "3", "--lr", "1e-3", "--warmup-steps", "0", *FAST]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distill")


@pytest.fixture(scope="module")
def target_dir(root, tiny_target_dir, tiny_tokenizer) -> Path:
    """The tiny target with its output head scaled up: confident next-token predictions, as a trained target
    has. A random model is nearly uniform, so KD divergences are ~0.01 nats and their gradients (q - p) are
    differences of near-equal numbers; Adam normalises those tiny gradients and turns float round-off
    (different batch shapes or reduction order, e.g. 2 processes vs 1) into visible weight differences."""
    model = models.load_model(tiny_target_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(30)
    out = root / "sharp_target"
    models.save_model(model, out, tiny_tokenizer)
    return out


@pytest.fixture(scope="module")
def kd_run(root, target_dir, tiny_draft_dir) -> Path:
    """Plain KD from --draft-init, dataset responses: the baseline several tests compare against."""
    out = root / "kd"
    assert (
        run("distill", "--target", target_dir, "--draft-init", tiny_draft_dir, "--method", "kd", *BASE, "--output", out)
        == 0
    )
    return out


@pytest.fixture(scope="module")
def varied_data(root) -> Path:
    """Short GSM8K-based examples whose responses differ in length (at --max-length 64 the task's own
    prompts fill 48 tokens and every response is cut to 16): 7 to 38 response tokens, so the processes hold
    different numbers of tokens."""
    from adaspec import data

    path = root / "varied.jsonl"
    rows = [
        {"prompt": ex.prompt.split("\n")[0][:30] + "\n", "response": ex.response[: 12 + 7 * (i % 6)]}
        for i, ex in enumerate(data.load_task("gsm8k", "train", limit=32))
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ADASPEC_SEQ = ["--method", "adaspec", "--k", "0.4", "--per-sequence", "--normalize", "kept"]


@pytest.fixture(scope="module")
def adaspec_per_sequence_run(root, target_dir, tiny_draft_dir, varied_data) -> Path:
    out = root / "adaspec_seq"
    assert (
        run(
            "distill",
            "--target",
            target_dir,
            "--draft-init",
            tiny_draft_dir,
            "--ref",
            tiny_draft_dir,
            *ADASPEC_SEQ,
            "--data",
            varied_data,
            *BASE,
            "--output",
            out,
        )
        == 0
    )
    return out


# ------------------------------------------------------------------------------------------ smoke tests


def test_kd_outputs(kd_run, tiny_draft_dir):
    from transformers import AutoModelForCausalLM

    out = kd_run
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.model_type == "llama"
    for sub in ("best", "last"):
        assert (out / sub / "model.safetensors").is_file()
    assert (out / "last" / "trainer_state.pt").is_file()
    assert list((out / "logs").glob("events.out.tfevents.*"))
    s = summary(out)
    assert s["steps"] == 3 and s["epochs"] == 1.0 and 0 <= s["best_greedy_agreement"] <= 1
    assert s["history"][-1]["step"] == 3
    assert max_diff(out, tiny_draft_dir) > 1e-3  # the draft was trained
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize("divergence", ["fkl", "rkl", "tvd", "jsd"])
def test_kd_divergences(divergence, tmp_path, target_dir):
    out = tmp_path / divergence
    # a draft built from a preset (the default path when there is no --draft-init)
    assert (
        run(
            "distill",
            "--target",
            target_dir,
            "--preset",
            "tiny-gpt2",
            "--init-seed",
            "3",
            "--divergence",
            divergence,
            *BASE,
            "--max-steps",
            "2",
            "--output",
            out,
        )
        == 0
    )
    loss, div = dict(scalars(out, "train/loss")), dict(scalars(out, "train/divergence"))
    assert sorted(loss) == [1, 2]
    for step in loss:
        assert 0 < loss[step] < 10
        # KD trains on every response token, normalised by their count: the loss is the mean divergence
        assert loss[step] == pytest.approx(div[step], rel=1e-4)
    if divergence == "tvd":
        assert all(v <= 1 for v in loss.values())
    if divergence == "jsd":
        assert all(v <= 0.6932 for v in loss.values())  # beta 0.5 JSD is bounded by log 2
    assert all(v == pytest.approx(1.0) for _, v in scalars(out, "train/kept_fraction"))


def test_adaspec_keeps_fraction_k(root, target_dir, tiny_draft_dir, adaspec_per_sequence_run):
    out = root / "adaspec"
    assert (
        run(
            "distill",
            "--target",
            target_dir,
            "--draft-init",
            tiny_draft_dir,
            "--method",
            "adaspec",
            "--ref",
            tiny_draft_dir,
            "--k",
            "0.4",
            *BASE,
            "--output",
            out,
        )
        == 0
    )
    # round(k * n) of the n >= 8 * 16 response tokens of a micro-batch; per sequence of each one's n >= 7
    for run_dir, tol in ((out, 0.5 / 128), (adaspec_per_sequence_run, 0.5 / 7)):
        kept = [v for _, v in scalars(run_dir, "train/kept_fraction")]
        assert len(kept) == 3
        assert all(abs(v - 0.4) <= tol + 1e-6 for v in kept), kept
    loss, div = scalars(out, "train/loss"), scalars(out, "train/divergence")
    # sum over the kept 40% / all response tokens (--normalize response): below the mean divergence
    assert all(0 < l < d for (_, l), (_, d) in zip(loss, div))
    assert summary(out)["steps"] == 3


def test_adaspec_selection_all_is_plain_kd(root, kd_run, target_dir, tiny_draft_dir):
    out = root / "adaspec_all"
    assert (
        run(
            "distill",
            "--target",
            target_dir,
            "--draft-init",
            tiny_draft_dir,
            "--method",
            "adaspec",
            "--ref",
            target_dir,
            "--selection",
            "all",
            "--k",
            "0.3",
            *BASE,
            "--output",
            out,
        )
        == 0
    )
    assert max_diff(out, kd_run) < 1e-6
    assert max_diff(out / "last", kd_run / "last") < 1e-6


def test_data_source_target_trains_on_target_continuations(tmp_path, target_dir, tiny_draft_dir, tiny_tokenizer):
    out = tmp_path / "target_src"
    assert (
        run(
            "distill",
            "--target",
            target_dir,
            "--draft-init",
            tiny_draft_dir,
            "--data-source",
            "target",
            "--gen-temperature",
            "0",
            "--gen-max-new-tokens",
            "6",
            *BASE,
            "--max-steps",
            "2",
            "--output",
            out,
        )
        == 0
    )
    (cached,) = out.glob("target_responses-*.json")  # named by the target and settings that made it
    made = json.loads(cached.read_text())
    assert len(made["sequences"]) == 32
    from adaspec.data import encode
    from adaspec.data.options import load_split
    from adaspec.training.options import TrainOptions

    opts = TrainOptions(output=str(out), limit=32, max_length=64)
    items = encode(load_split(opts, "train", 32), tiny_tokenizer, 64)
    prompts = [it["input_ids"][: it["prompt_length"]] for it in items[:8]]
    target = models.load_model(target_dir)
    expected = greedy_continuations(target, prompts, 6, tiny_tokenizer.eos_token_id)
    assert made["sequences"][:8] == expected.sequences
    assert made["prompt_lengths"] == [it["prompt_length"] for it in items]
    assert summary(out)["steps"] == 2


def test_data_source_draft_and_mix(tmp_path, kd_run, target_dir, tiny_draft_dir):
    common = ["distill", "--target", target_dir, "--draft-init", tiny_draft_dir, "--gen-max-new-tokens", "6", *BASE]
    outs = {name: tmp_path / name for name in ("draft", "mix0", "mix1")}
    assert run(*common, "--data-source", "draft", "--output", outs["draft"]) == 0
    # mix with ratio 0 never goes on-policy (= dataset), with ratio 1 always (= draft)
    assert run(*common, "--data-source", "mix", "--mix-ratio", "0", "--output", outs["mix0"]) == 0
    assert run(*common, "--data-source", "mix", "--mix-ratio", "1", "--output", outs["mix1"]) == 0
    assert max_diff(outs["mix0"], kd_run) < 1e-6
    assert max_diff(outs["mix1"], outs["draft"]) < 1e-6
    assert max_diff(outs["draft"], kd_run) > 1e-4  # on-policy responses are other training data
    assert summary(outs["draft"])["steps"] == 3


def test_matched_budget_arithmetic():
    # the authors' GSM8K runs: 7,473 examples, 8 processes x 2 for 3 epochs (KD) against 8 x 5 for 7.5 (AdaSPEC)
    assert matched_budget(7473, 16, 1, 3.0, 0.4, "batch") == (40, 7.5, 1401)
    assert train.planned_steps(7473, 16, 1, 3.0) == 1401  # the reference run's steps (checkpoint-1404 there)
    assert train.planned_steps(7473, 40, 1, 7.5) == 1395  # epochs / k alone would drop the incomplete batches
    assert matched_budget(7173, 16, 1, 1.0, 0.4, "batch") == (40, 2.5, train.planned_steps(7173, 16, 1, 1.0))
    assert matched_budget(100, 16, 2, 1.0, 0.5, "batch") == (32, 2.0, 3)
    # adaspec's own protocol: epochs / k at KD's batch, 1/k the steps
    assert matched_budget(7173, 16, 1, 1.0, 0.4, "epochs") == (16, 2.5, None)


def test_match_token_budget(tmp_path, target_dir, tiny_draft_dir):
    common = [
        "distill",
        "--target",
        target_dir,
        "--draft-init",
        tiny_draft_dir,
        "--limit",
        "40",
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--k",
        "0.5",
        *FAST,
    ]
    runs = {
        "kd": ["--method", "kd"],
        "by_batch": ["--method", "adaspec", "--match-token-budget", "--selection-group", "3"],
        "kd_big": ["--method", "kd", "--match-token-budget"],
        "by_epochs": ["--method", "adaspec", "--match-token-budget", "--budget-by", "epochs"],
    }
    for name, extra in runs.items():
        ref = ["--ref", target_dir] if "adaspec" in extra else []
        assert run(*common, *extra, *ref, "--output", tmp_path / name) == 0
    s = {name: summary(tmp_path / name) for name in runs}
    # KD: 5 batches of 8. The authors' matching: batch 8 / 0.5 = 16 for 1 / 0.5 = 2 epochs, at KD's 5 steps
    # (2 epochs of 40 // 16 = 2 batches would be 4); KD shaped the same way trains every token of those batches
    assert (s["kd"]["batch_size"], s["kd"]["epochs"], s["kd"]["steps"]) == (8, 1.0, 5)
    for name in ("by_batch", "kd_big"):
        assert (s[name]["batch_size"], s[name]["epochs"], s[name]["steps"]) == (16, 2.0, 5)
    # adaspec's own protocol (the committed main table): epochs / k at the same batch, 1 / k the steps
    assert (s["by_epochs"]["batch_size"], s["by_epochs"]["epochs"], s["by_epochs"]["steps"]) == (8, 2.0, 10)
    kept = [v for _, v in scalars(tmp_path / "by_batch", "train/kept_fraction")]
    assert len(kept) == 5 and all(abs(v - 0.5) < 0.05 for v in kept)
    assert [v for _, v in scalars(tmp_path / "kd_big", "train/kept_fraction")] == [1.0] * 5


def test_resume_adaspec_random_selection(tmp_path, target_dir, tiny_draft_dir, capsys):
    """Random selection draws per step from the seed, so a resumed run trains on what an uninterrupted one did."""

    args = [
        "distill",
        "--target",
        target_dir,
        "--draft-init",
        tiny_draft_dir,
        "--method",
        "adaspec",
        "--ref",
        target_dir,
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
        # stop before step 3's update: the resumed run redoes steps 3 and 4 from the step-2 save
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill.run_distill(options_from(args, "--output", resumed), on_step=stop_at_step_3)
    assert json.loads((resumed / "last" / "trainer_state.json").read_text())["step"] == 2
    capsys.readouterr()
    assert run(*args, "--output", resumed) == 0
    assert "resumed from" in capsys.readouterr().out
    assert max_diff(resumed / "last", straight / "last") < 1e-6


# ---------------------------------------------------------------------------------------- multi-process


def _check_same_as_single_process(multi: Path, single: Path, proc: subprocess.CompletedProcess) -> None:
    # one process group, not two independent runs: only the main process prints
    assert proc.stdout.count("draft: ") == 1, proc.stdout
    assert summary(multi)["steps"] == summary(single)["steps"] == 3
    assert max_diff(multi, single) < 1e-5
    assert max_diff(multi / "last", single / "last") < 1e-5
    # the logged loss is the global batch's, not the main process's half
    for (s1, a), (s2, b) in zip(scalars(multi, "train/loss"), scalars(single, "train/loss")):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-4)


def test_two_processes_kd_match_one(root, kd_run, target_dir, tiny_draft_dir):
    """--batch-size is the global micro-batch: 2 processes × 4 examples = 1 process × 8, same gradient."""
    out = root / "kd_ddp"
    proc = torchrun("distill", out, "--target", target_dir, "--draft-init", tiny_draft_dir, "--method", "kd", *BASE)
    _check_same_as_single_process(out, kd_run, proc)


def test_two_processes_adaspec_per_sequence_match_one(
    root, adaspec_per_sequence_run, target_dir, tiny_draft_dir, varied_data
):
    # Per-sequence selection depends only on each sequence, so it is independent of how the global batch is
    # split. Micro-batch-wide selection (the default) ranks the tokens of each process's share separately
    # under DDP, so its kept set (and the weights) can differ slightly from a single-process run.
    out = root / "adaspec_seq_ddp"
    # --normalize kept on responses of varied length: the processes keep different numbers of tokens, and
    # the loss must still be divided by the kept tokens of the whole global micro-batch
    proc = torchrun(
        "distill",
        out,
        "--target",
        target_dir,
        "--draft-init",
        tiny_draft_dir,
        "--ref",
        tiny_draft_dir,
        *ADASPEC_SEQ,
        "--data",
        varied_data,
        *BASE,
    )
    _check_same_as_single_process(out, adaspec_per_sequence_run, proc)


# ------------------------------------------------------------------------------------------------ errors


@pytest.fixture(scope="module")
def bad_models(root, tiny_tokenizer) -> dict[str, Path]:
    from adaspec import data

    small = root / "small_vocab"  # fewer output rows than the tokenizer has tokens, saved without a tokenizer
    models.save_model(models.build_model("tiny-neox", len(tiny_tokenizer) - 20, seed=0), small)
    other_tok = data.train_tokenizer(
        [e.prompt + e.response for e in data.load_task("gsm8k", "train", limit=50)], vocab_size=len(tiny_tokenizer)
    )
    other = root / "other_tokenizer"
    models.save_model(models.build_model("tiny-neox", len(other_tok), seed=0), other, other_tok)
    return {"small": small, "other": other}


def test_vocab_mismatch_is_refused(capsys, tmp_path, target_dir, tiny_draft_dir, bad_models):
    common = ["distill", "--target", target_dir, "--output", tmp_path / "o", *BASE]
    err = cli_error(capsys, *common, "--draft-init", bad_models["small"])
    assert "vocabulary sizes" in err and "target and draft" in err
    err = cli_error(capsys, *common, "--draft-init", bad_models["other"])
    assert "tokenizers have different vocabularies" in err
    err = cli_error(
        capsys, *common, "--draft-init", tiny_draft_dir, "--method", "adaspec", "--ref", bad_models["small"]
    )
    assert "target and reference" in err


def test_draft_saved_without_tokenizer_is_accepted(tmp_path, target_dir, tiny_tokenizer):
    bare = tmp_path / "bare"
    models.save_model(models.build_model("tiny-neox", len(tiny_tokenizer), seed=5), bare)  # weights only
    assert (
        run(
            "distill",
            "--target",
            target_dir,
            "--draft-init",
            bare,
            *BASE,
            "--max-steps",
            "1",
            "--output",
            tmp_path / "o",
        )
        == 0
    )


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--method", "adaspec"], "--ref"),
        (["--method", "adaspec", "--ref", "REF", "--k", "0"], "k must be in (0, 1], got 0"),
        (["--method", "adaspec", "--ref", "REF", "--k", "1.5"], "k must be in (0, 1], got 1.5"),
        (["--data-source", "draft", "--teacher-cache", "CACHE"], "--teacher-cache"),
        (["--data-source", "mix", "--teacher-cache", "CACHE"], "--teacher-cache"),
        # the target's responses are not the dataset's the cache was made on
        (["--data-source", "target", "--teacher-cache", "CACHE"], "--teacher-cache"),
    ],
)
def test_bad_options_are_refused(capsys, tmp_path, target_dir, extra, needle):
    extra = [str(target_dir) if a == "REF" else str(tmp_path) if a == "CACHE" else a for a in extra]
    err = cli_error(capsys, "distill", "--target", target_dir, "--output", tmp_path / "o", *extra)
    assert needle in err
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_empty_data_is_refused(capsys, tmp_path, target_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    err = cli_error(capsys, "distill", "--target", target_dir, "--data", empty, "--output", tmp_path / "o", *BASE)
    assert "empty.jsonl" in err and "no examples" in err
    (tmp_path / "data" / "gsm8k").mkdir(parents=True)
    (tmp_path / "data" / "gsm8k" / "train.jsonl").write_text("")
    err = cli_error(
        capsys, "distill", "--target", target_dir, "--data-dir", tmp_path / "data", "--output", tmp_path / "o", *BASE
    )
    assert "gsm8k" in err and "no examples" in err


def test_bad_paths_are_refused(capsys, tmp_path, target_dir, tiny_draft_dir):
    missing = tmp_path / "no_such_target"
    err = cli_error(capsys, "distill", "--target", missing, "--output", tmp_path / "o", *BASE)
    assert str(missing) in err and "not found" in err
    err = cli_error(
        capsys,
        "distill",
        "--target",
        target_dir,
        "--method",
        "adaspec",
        "--ref",
        tmp_path / "no_such_ref",
        "--output",
        tmp_path / "o",
        *BASE,
    )
    assert "no_such_ref" in err


def test_corrupt_checkpoint_is_refused(capsys, tmp_path, target_dir, tiny_draft_dir):
    for name, source in (("target", target_dir), ("draft", tiny_draft_dir)):
        corrupt = tmp_path / f"corrupt_{name}"
        shutil.copytree(source, corrupt)
        blob = (corrupt / "model.safetensors").read_bytes()
        (corrupt / "model.safetensors").write_bytes(blob[: len(blob) // 3])
        target, draft = (corrupt, tiny_draft_dir) if name == "target" else (target_dir, corrupt)
        err = cli_error(capsys, "distill", "--target", target, "--draft-init", draft, "--output", tmp_path / "o", *BASE)
        assert str(corrupt) in err and "corrupt" in err


def test_distill_warns_when_vllm_cannot_serve_the_draft(tmp_path, tiny_target_dir, capsys):
    assert (
        run("distill", "--target", tiny_target_dir, "--preset", "neox-draft-xxs", "--output", tmp_path / "d", *BASE)
        == 0
    )  # a legacy preset: 16-wide heads
    err = capsys.readouterr().err
    assert "adaspec: warning: the draft written to" in err and "head size 16 is not one vLLM's attention takes" in err
    assert run("distill", "--target", tiny_target_dir, "--preset", "tiny-llama", "--output", tmp_path / "e", *BASE) == 0
    assert "cannot be served by vLLM" not in capsys.readouterr().err
