"""Which tokens AdaSPEC keeps: the analysis uses the training selection, keeps k of each group, and its
command writes the JSON and the histogram."""

from __future__ import annotations

import json

import pytest
import torch

from adaspec import data
from adaspec.distill.losses import forward_kl
from adaspec.distill.selection import num_kept
from adaspec.evaluation.delta_distribution import measure, summarize, token_deltas
from adaspec.models import load_model, load_tokenizer
from benchmarks.delta_distribution import main


@pytest.fixture()
def models(tiny_target_dir, tiny_draft_dir):
    tok = load_tokenizer(tiny_target_dir)
    items = data.encode(data.load_task("gsm8k", "train", limit=10), tok, 64)
    return load_model(tiny_target_dir), load_model(tiny_draft_dir), items, data.pad_id(tok)


def test_kept_tokens_are_the_top_k_by_delta_in_each_group(models):
    target, draft, items, pad = models
    batch = data.collate(items[:6], pad)
    mask = data.response_mask(batch["labels"])
    with torch.no_grad():
        p = target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        q = draft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    # the target as its own reference: Δ is then KL(p‖q_draft) itself, which must rank the kept tokens first
    t = token_deltas(p.float(), p.float(), q.float(), batch["labels"], k=0.4, group=3)
    torch.testing.assert_close(t["delta"], forward_kl(p.float(), q.float())[mask])
    rows = torch.arange(6)[:, None].expand_as(mask)[mask]
    for g in (0, 1):  # rows 0-2 and 3-5: each keeps 40% of its response tokens, the largest Δ
        d, kept = t["delta"][rows // 3 == g], t["kept"][rows // 3 == g]
        assert int(kept.sum()) == num_kept(0.4, d.numel())
        assert d[kept].min() >= d[~kept].max()
    s = summarize(t)
    assert s["kept"]["n"] + s["dropped"]["n"] == int(mask.sum())
    assert s["kept"]["quantiles"]["0.5"] > s["dropped"]["quantiles"]["0.5"]
    assert 0 <= s["kept"]["accepted"] <= 1 and s["kept_fraction"] == pytest.approx(s["kept"]["n"] / int(mask.sum()))


def test_measure_covers_every_example_once(models):
    target, draft, items, pad = models
    per = measure(target, draft, {"a": draft, "b": target}, items, pad, batch_size=4, k=0.4, group=None)
    n = sum(int(data.response_mask(data.collate([it], pad)["labels"]).sum()) for it in items)
    assert per["a"]["delta"].numel() == per["b"]["delta"].numel() == n
    assert torch.all(per["a"]["delta"] == 0)  # the draft is its own reference


def test_command_writes_json_and_plot(tiny_target_dir, tiny_draft_dir, tmp_path, capsys):
    out = tmp_path / "delta.json"
    assert (
        main(
            [
                "--target",
                str(tiny_target_dir),
                "--ref",
                str(tiny_target_dir),
                "--draft",
                f"init={tiny_draft_dir}",
                "--examples",
                "6",
                "--max-length",
                "64",
                "--batch-size",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert set(result["drafts"]) == {"init"} and result["examples"] == 6 and "delta_distribution" in result["command"]
    assert out.with_suffix(".png").exists()
    assert (
        main(["--target", str(tiny_target_dir), "--ref", str(tiny_target_dir), "--draft", "nodir", "--out", str(out)])
        == 2
    )
    assert "must be NAME=DIR" in capsys.readouterr().err
