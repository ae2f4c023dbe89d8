"""`adaspec train-head --kind eagle` through the shared loop, and `adaspec export` of the trained head."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cli_error, options_from, run, scalars, summary, torchrun, weights
from safetensors.torch import load_file, save_file

from adaspec.drafters.eagle.export import load_exported
from adaspec.drafters.eagle.model import EagleHead
from adaspec.drafters.eagle.training import unroll
from adaspec.models import load_model

FAST = [
    "--max-length",
    "64",
    "--val-examples",
    "4",
    "--val-max-new-tokens",
    "12",
    "--no-progress",
    "--limit",
    "32",
    "--batch-size",
    "8",
    "--ttt-steps",
    "3",
]


def test_train_head_kd_learns_and_resumes(tmp_path, tiny_target_dir):
    from adaspec.recipes.train_head.options import run_train_head

    out = tmp_path / "head"
    args = [
        "train-head",
        "--target",
        tiny_target_dir,
        "--max-steps",
        24,
        "--lr",
        3e-3,
        "--warmup-steps",
        0,
        "--save-every",
        3,
        *FAST,
    ]

    def stop_at_step_3(step: int, batches: list) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_train_head(options_from(args, "--output", out), on_step=stop_at_step_3)
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 3
    assert run(*args, "--output", out) == 0  # the same run again: resumes from last/ at step 3
    s = summary(out)
    assert s["steps"] == 24 and 0 <= s["best_agreement"] <= 1
    losses = [v for _, v in scalars(out, "train/loss")]
    assert sum(losses[-4:]) < sum(losses[:4])
    head = EagleHead.from_pretrained(out)
    target = load_model(tiny_target_dir)
    assert head.config.hidden_layers == (0, 0, 0)  # a 2-layer target: the clamped default
    assert torch.equal(head.embed_tokens.weight, target.get_input_embeddings().weight)  # frozen copy
    assert "agreement_step1" in s["history"][-1]


def test_train_head_adaspec_selection_and_reduced_vocabulary(tmp_path, tiny_target_dir):
    ref = tmp_path / "ref"
    common = ["--target", tiny_target_dir, "--draft-vocab", 100, "--max-steps", 2, *FAST]
    assert run("train-head", *common, "--output", ref) == 0
    out = tmp_path / "adaspec"
    assert run("train-head", *common, "--method", "adaspec", "--ref", ref, "--k", 0.5, "--output", out) == 0
    kept = [v for _, v in scalars(out, "train/kept_fraction")]
    assert all(0.45 < v < 0.55 for v in kept), kept
    head = EagleHead.from_pretrained(out)
    assert head.config.draft_vocab_size == 100 and int(head.t2d.sum()) == 100
    assert torch.equal(head.d2t, EagleHead.from_pretrained(ref).d2t)


def test_train_head_eagle1_then_export(tmp_path, tiny_target_dir, capsys):
    out = tmp_path / "head"
    assert (
        run(
            "train-head",
            "--target",
            tiny_target_dir,
            "--variant",
            "eagle1",
            "--feature-weight",
            1.0,
            "--max-steps",
            2,
            "--output",
            out,
            *FAST,
        )
        == 0
    )
    assert scalars(out, "train/feature_loss")
    exported = tmp_path / "served"
    assert run("export", "--head", out, "--output", exported, "--dtype", "float32", "--target", tiny_target_dir) == 0
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["EagleLlamaForCausalLM"]  # vLLM's layout by default
    assert config["adaspec_export"] == {"server": "vllm", "checked_with": "vllm 0.32.0"}
    for folder, command in ((out, "train-head"), (exported, "export")):  # every command writes its options
        assert json.loads((folder / "resolved_options.json").read_text())["command"] == command
    assert "cannot be served" not in capsys.readouterr().err  # a 32-wide head on a Llama-family-free check
    target = load_model(tiny_target_dir)
    head, back = EagleHead.from_pretrained(out), load_exported(exported, target=target)
    feats, ids = torch.randn(1, 6, 32), torch.randint(0, 320, (1, 6))
    with torch.no_grad():
        assert torch.equal(unroll(back, feats, ids, 2).logits, unroll(head, feats, ids, 2).logits)


def test_train_head_errors(tmp_path, tiny_target_dir, capsys):
    assert "needs --ref" in cli_error(
        capsys, "train-head", "--target", tiny_target_dir, "--method", "adaspec", "--output", tmp_path / "x"
    )
    assert "eagle1 only" in cli_error(
        capsys, "train-head", "--target", tiny_target_dir, "--feature-weight", 1, "--output", tmp_path / "x"
    )
    assert "out of range" in cli_error(
        capsys, "train-head", "--target", tiny_target_dir, "--aux-layers", "0,1,2", "--output", tmp_path / "x", *FAST
    )
    out = tmp_path / "head"
    assert run("train-head", "--target", tiny_target_dir, "--max-steps", 1, "--output", out, *FAST) == 0
    assert "too shallow" in capsys.readouterr().err  # warned when trained, refused when exported
    assert "too shallow" in cli_error(capsys, "export", "--head", out, "--output", tmp_path / "e")
    assert "is not a head checkpoint" in cli_error(
        capsys, "export", "--head", tmp_path / "none", "--output", tmp_path / "e"
    )


def test_export_medusa_and_mtp_heads_and_warn_what_vllm_cannot_serve(tmp_path, tiny_draft_dir, capsys):
    target = tiny_draft_dir  # a Llama: DeepSeek's MTP naming needs its RMSNorm
    common = ["--target", target, "--depth", 2, "--max-steps", 1, *FAST]
    assert run("train-head", "--kind", "medusa", *common, "--output", tmp_path / "medusa") == 0
    assert run("train-head", "--kind", "mtp", *common, "--output", tmp_path / "mtp") == 0
    assert "mtp heads written to" in capsys.readouterr().err  # vLLM has no model for adaspec's MTP modules
    assert (
        run(
            "export",
            "--head",
            tmp_path / "medusa",
            "--output",
            tmp_path / "m",
            "--target",
            target,
            "--dtype",
            "float32",
        )
        == 0
    )
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["MedusaModel"]
    assert run("export", "--head", tmp_path / "mtp", "--output", tmp_path / "x", "--target", target) == 0
    err = capsys.readouterr().err
    assert "these MTP modules cannot be served by vLLM 0.32.0: vLLM serves MTP drafters only" in err
    assert "pass --target" in cli_error(capsys, "export", "--head", tmp_path / "mtp", "--output", tmp_path / "y")
    assert "--format is for EAGLE heads" in cli_error(
        capsys, "export", "--head", tmp_path / "medusa", "--format", "eagle1", "--output", tmp_path / "z"
    )


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, tiny_target_dir):
    """--batch-size is the global micro-batch: 2 processes x 4 sequences = 1 process x 8, same gradient."""
    args = ["--target", tiny_target_dir, "--max-steps", 3, "--lr", 3e-3, "--val-every", 0, *FAST]
    single = tmp_path / "single"
    assert run("train-head", *args, "--output", single) == 0
    multi = tmp_path / "multi"
    proc = torchrun("train-head", multi, *args)
    assert proc.stdout.count("head: ") == 1, proc.stdout  # one process group, not two runs
    assert summary(multi)["steps"] == summary(single)["steps"] == 3
    wm, ws = weights(multi), weights(single)
    assert wm.keys() == ws.keys()
    for k in wm:
        if wm[k].is_floating_point():
            torch.testing.assert_close(wm[k], ws[k], atol=1e-5, rtol=0, msg=k)
        else:
            assert torch.equal(wm[k], ws[k]), k
    for (s1, a), (s2, b) in zip(scalars(multi, "train/loss"), scalars(single, "train/loss")):
        assert s1 == s2 and a == pytest.approx(b, rel=1e-4)


def test_head_loss_agrees_with_the_shared_multi_step_loss(tiny_target_dir):
    from adaspec.distill.steps import multi_step_loss, step_divergences
    from adaspec.drafters.eagle.draft_vocab import restrict_to_draft
    from adaspec.drafters.eagle.training import step_weights
    from adaspec.recipes.train_head.eagle import HeadLoss, target_signal
    from adaspec.recipes.train_head.options import TrainHeadOptions

    target = load_model(tiny_target_dir)
    head = EagleHead.from_target(target)
    opts = TrainHeadOptions(target=str(tiny_target_dir), output="unused", ttt_steps=3)
    ids = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :5] = -100  # prompts of 5 tokens: index 0 (no prediction in the unroll) is never scored
    labels[1, 10:] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    per_token, kept, _ = HeadLoss(opts, target, None, 320)(head, batch, 0)
    logits, feats = target_signal(target, ids, batch["attention_mask"], head.config.hidden_layers)
    step_logits = list(unroll(head, feats, ids, 3).logits)
    divs = step_divergences("fkl", restrict_to_draft(logits, head.d2t), step_logits)
    response = labels[:, 1:] != -100
    shared, _ = multi_step_loss(divs, response, step_weights(3).tolist())
    # the same weighted terms at the same positions (step j's value at t placed at t + j)
    torch.testing.assert_close(per_token.sum(), shared.sum())
    assert float(per_token.detach()[~response].abs().sum()) == 0.0
    assert torch.equal(kept, response)


def test_export_refuses_non_finite_weights_and_configs_missing_fields(tmp_path, tiny_target_dir, capsys):
    out = tmp_path / "head"
    assert (
        run("train-head", "--target", tiny_target_dir, "--variant", "eagle1", "--max-steps", 1, "--output", out, *FAST)
        == 0
    )
    good = load_file(str(out / "model.safetensors"))
    bad = {k: v.clone() for k, v in good.items()}
    bad["fc.weight"][0, 0] = float("nan")
    save_file(bad, str(out / "model.safetensors"))
    err = cli_error(capsys, "export", "--head", out, "--output", tmp_path / "e")
    assert "fc.weight holds non-finite values" in err and not (tmp_path / "e" / "model.safetensors").exists()
    save_file(good, str(out / "model.safetensors"))
    config = json.loads((out / "config.json").read_text())
    for key in ("hidden_size", "vocab_size"):
        del config["adaspec_eagle_head"][key]
    (out / "config.json").write_text(json.dumps(config))
    assert "the head config lacks hidden_size, vocab_size" in cli_error(
        capsys, "export", "--head", out, "--output", tmp_path / "f"
    )


def test_a_head_knows_its_target(tmp_path, tiny_target_dir, tiny_draft_dir, tiny_tokenizer, capsys):
    from adaspec import models

    out = tmp_path / "head"
    assert (
        run(
            "train-head",
            "--target",
            tiny_target_dir,
            "--kind",
            "medusa",
            "--depth",
            2,
            "--max-steps",
            1,
            "--output",
            out,
            *FAST,
        )
        == 0
    )
    record = json.loads((out / "target.json").read_text())
    assert record["architecture"] == "GPTNeoXForCausalLM" and record["vocab_size"] == 320
    other = tmp_path / "other"  # the same shape, other weights: a fine-tuned target can still use its head
    models.save_model(models.build_model("tiny-neox", len(tiny_tokenizer), seed=5), other, tiny_tokenizer)
    gen = ["generate", "--drafter", "medusa", "--head", out, "--prompt", "Tom has", "--gamma", 2, "--max-new-tokens", 4]
    capsys.readouterr()
    assert run(*gen, "--target", other) == 0
    assert "was trained on other weights of this target's shape" in capsys.readouterr().err
    assert "refused by --strict" in cli_error(capsys, *gen, "--target", other, "--strict")
    assert "trained for a target with architecture GPTNeoXForCausalLM; this target has LlamaForCausalLM" in cli_error(
        capsys, *gen, "--target", tiny_draft_dir
    )
    assert run(*gen, "--target", tiny_target_dir) == 0
    assert "warning" not in capsys.readouterr().err
    (out / "target.json").unlink()  # a head trained before targets were recorded: said, not refused
    assert run(*gen, "--target", tiny_target_dir) == 0
    assert "records no target" in capsys.readouterr().err


def test_a_head_refuses_a_target_with_another_tokenizer(tmp_path, tiny_target_dir, capsys):
    from adaspec import data, models

    out = tmp_path / "head"
    assert (
        run(
            "train-head",
            "--target",
            tiny_target_dir,
            "--kind",
            "medusa",
            "--depth",
            2,
            "--max-steps",
            1,
            "--output",
            out,
            *FAST,
        )
        == 0
    )
    texts = [ex.prompt for ex in data.load_task("alpaca", "train", limit=200)]
    other_tok = data.train_tokenizer(texts, vocab_size=320)  # the same size, other tokens
    retok = tmp_path / "retok"
    models.save_model(models.load_model(tiny_target_dir), retok, other_tok)
    err = cli_error(capsys, "generate", "--target", retok, "--drafter", "medusa", "--head", out, "--prompt", "a")
    assert "was trained with another tokenizer than this target's" in err
