"""`adaspec train-head --kind dflash` through the shared loop (KD learns and resumes; AdaSPEC selection per
slot; the teacher cache gives the live loss), and `adaspec export` of the head in vLLM's DFlash layout."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import cli_error, options_from, run, scalars, summary
from safetensors.torch import load_file

from adaspec import data
from adaspec.data.options import load_split
from adaspec.drafters.dflash import DFlashDrafter, DFlashHead
from adaspec.drafters.dflash.export import MASK_EMBEDDING
from adaspec.drafters.target_parts import target_parts
from adaspec.models import load_model, load_tokenizer
from adaspec.recipes.train_head.dflash import BlockLoss, sample_anchors
from adaspec.recipes.train_head.options import TrainHeadOptions
from adaspec.training.target_signal import open_head_cache

FAST = [
    "--kind",
    "dflash",
    "--block-size",
    3,
    "--anchors",
    8,
    "--max-length",
    64,
    "--val-examples",
    4,
    "--val-max-new-tokens",
    12,
    "--no-progress",
    "--limit",
    32,
    "--batch-size",
    8,
]


def test_train_dflash_kd_learns_and_resumes(tmp_path, tiny_target_dir):
    from adaspec.recipes.train_head.options import run_train_head

    out = tmp_path / "head"
    args = [
        "train-head",
        "--target",
        tiny_target_dir,
        "--max-steps",
        20,
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
    assert s["kind"] == "dflash" and s["steps"] == 20 and 0 <= s["best_accept_length"] <= 2
    assert {"agreement_slot1", "agreement_slot2"} <= set(s["history"][-1])
    losses = [v for _, v in scalars(out, "train/loss")]
    assert sum(losses[-4:]) < sum(losses[:4])
    head = DFlashHead.from_pretrained(out)
    assert head.config.block_size == 3 and head.config.hidden_layers == (1,)  # a 2-layer target: L // 2
    DFlashDrafter.load(str(out), load_model(tiny_target_dir))  # what eval and generate load


def test_anchors_start_blocks_whose_next_token_is_a_response_token():
    response = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]], dtype=torch.bool)  # [B, T-1]
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    anchors, real = sample_anchors(response, mask, 5, torch.Generator().manual_seed(0))
    assert sorted(anchors[0][real[0]].tolist()) == [2, 3, 4]  # token a + 1 is a response token
    assert sorted(anchors[1][real[1]].tolist()) == [1, 2]


def test_adaspec_keeps_k_per_slot_and_refuses_another_block(tmp_path, tiny_target_dir, capsys):
    ref = tmp_path / "ref"
    common = ["--target", tiny_target_dir, "--max-steps", 2, *FAST]
    assert run("train-head", *common, "--output", ref) == 0
    out = tmp_path / "adaspec"
    assert (
        run(
            "train-head",
            *common,
            "--method",
            "adaspec",
            "--ref",
            ref,
            "--k",
            0.5,
            "--cold-start",
            "off",
            "--output",
            out,
        )
        == 0
    )
    kept = [v for _, v in scalars(out, "train/kept_fraction")]
    assert all(0.4 < v < 0.6 for v in kept), kept
    capsys.readouterr()
    error = cli_error(
        capsys,
        "train-head",
        *common,
        "--block-size",
        4,
        "--method",
        "adaspec",
        "--ref",
        ref,
        "--output",
        tmp_path / "other",
    )
    assert "block_size 3" in error and "same DFlash options" in error


def test_cached_loss_matches_live(tmp_path, tiny_target_dir):
    cache_dir = tmp_path / "cache"
    assert (
        run(
            "cache",
            "--target",
            tiny_target_dir,
            "--limit",
            32,
            "--max-length",
            64,
            "--top-k",
            320,
            "--shard-size",
            10,
            "--output",
            cache_dir,
            "--no-progress",
            "--hidden-layers",
            "1",
        )
        == 0
    )
    target = load_model(tiny_target_dir)
    opts = TrainHeadOptions(
        target=str(tiny_target_dir), output="unused", kind="dflash", block_size=3, anchors=8, limit=32, max_length=64
    )
    items = data.encode(load_split(opts, "train", 32), load_tokenizer(tiny_target_dir), 64)
    head = DFlashHead.from_target(target, seed=2)
    cache = open_head_cache(str(cache_dir), str(tiny_target_dir), target, items, head.config.hidden_layers, 1.0, 320)
    batch = data.collate([items[i] for i in (3, 0, 17, 9)], 0)
    batch["index"] = torch.tensor([3, 0, 17, 9])
    live, kept_live, _ = BlockLoss(opts, target_parts(target), target, None)(head, batch, 0)
    cached, kept_cached, _ = BlockLoss(opts, target_parts(target), target, None, cache)(head, batch, 0)
    assert live.abs().sum() > 0 and torch.equal(kept_live, kept_cached)
    torch.testing.assert_close(cached, live, atol=1e-3, rtol=1e-3)  # fp16 hidden states in the cache


def test_export_command_writes_vllms_dflash_layout(tmp_path, tiny_target_dir, tiny_draft_dir, capsys):
    out = tmp_path / "head"
    assert (
        run("train-head", "--target", tiny_draft_dir, "--max-steps", 1, "--draft-layers", 2, "--output", out, *FAST)
        == 0
    )
    exported = tmp_path / "vllm"
    assert run("export", "--head", out, "--target", tiny_draft_dir, "--dtype", "float32", "--output", exported) == 0
    assert "cannot be served" not in capsys.readouterr().err  # a Llama target: vLLM can
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["DFlashDraftModel"] and config["model_type"] == "qwen3"
    assert config["num_hidden_layers"] == 2 and config["dflash_config"] == {
        "mask_token_id": 319,
        "target_layer_ids": [0, 1],
        "block_size": 3,
    }
    assert set(load_file(str(exported / "model.safetensors"))) >= {"fc.weight", "layers.1.self_attn.k_norm.weight"}
    mask = torch.load(exported / MASK_EMBEDDING, weights_only=True)
    assert mask["mask_token_id"] == 319
    assert torch.equal(mask["embedding"], DFlashHead.from_pretrained(out).mask_embedding.detach())
    assert run("export", "--head", out, "--target", tiny_target_dir, "--output", tmp_path / "neox") == 0
    assert "DFlash reads auxiliary hidden states" in capsys.readouterr().err  # a GPT-NeoX target: warned


def test_dflash_option_errors_are_one_line(tmp_path, tiny_target_dir, capsys):
    common = ["train-head", "--target", tiny_target_dir, "--kind", "dflash", "--output", tmp_path / "x"]
    assert "--block-size must be in 2.." in cli_error(capsys, *common, "--block-size", 100_000)
    assert "--anchors must be in 1.." in cli_error(capsys, *common, "--anchors", 0)
    assert "--draft-layers must be in 1..32" in cli_error(capsys, *common, "--draft-layers", 10_000)
    assert "not --divergence ce" in cli_error(capsys, *common, "--divergence", "ce")
    # the target's responses train mtp/medusa heads only (an eagle or dflash head once ignored the flag)
    assert "--data-source target is for --kind mtp/medusa" in cli_error(capsys, *common, "--data-source", "target")
    assert "strictly increasing" in cli_error(capsys, *common, "--aux-layers", "1,0", "--max-steps", 1, *FAST[2:])
