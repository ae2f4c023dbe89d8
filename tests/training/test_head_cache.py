"""`train-head --teacher-cache`: heads trained from `adaspec cache --hidden-layers` match the live target's
loss and AdaSPEC selection at step 0, run no target forward while training, and refuse mismatched caches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import cli_error, options_from, run, scalars, summary, torchrun, weights

from adaspec import data
from adaspec.data.options import load_split
from adaspec.distill import selection
from adaspec.drafters.eagle.draft_vocab import frequent_tokens
from adaspec.drafters.eagle.model import EagleConfig, EagleHead
from adaspec.models import load_model, load_tokenizer
from adaspec.recipes.train_head.eagle import HeadLoss
from adaspec.recipes.train_head.options import TrainHeadOptions
from adaspec.training.target_signal import open_head_cache

LIMIT, V = 32, 320
FAST = [
    "--limit",
    LIMIT,
    "--max-length",
    64,
    "--val-examples",
    4,
    "--val-max-new-tokens",
    8,
    "--val-every",
    0,
    "--batch-size",
    8,
    "--no-progress",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("head_cache")


def _cache(target: Path, out: Path, layers: str | None = "eagle3,final", top_k: int = V) -> Path:
    args = [
        "cache",
        "--target",
        target,
        "--limit",
        LIMIT,
        "--max-length",
        64,
        "--top-k",
        top_k,
        "--shard-size",
        10,
        "--output",
        out,
        "--no-progress",
    ]
    assert run(*args, *(["--hidden-layers", layers] if layers else [])) == 0
    return out


@pytest.fixture(scope="module")
def full_cache(root, tiny_target_dir) -> Path:
    """K = V: the cached loss is the live one up to the fp16 hidden states."""
    return _cache(tiny_target_dir, root / "full")


def _batch(items: list[dict], idx: list[int]) -> dict:
    batch = data.collate([items[i] for i in idx], 0)
    batch["index"] = torch.tensor(idx)
    return batch


@pytest.mark.parametrize("draft_vocab", [0, 100])
def test_eagle_cached_loss_and_gradient_match_live(full_cache, tiny_target_dir, draft_vocab):
    target = load_model(tiny_target_dir)
    opts = TrainHeadOptions(
        target=str(tiny_target_dir), output="unused", ttt_steps=3, limit=LIMIT, max_length=64, draft_vocab=draft_vocab
    )
    items = data.encode(load_split(opts, "train", LIMIT), load_tokenizer(tiny_target_dir), 64)
    cfg = EagleConfig.for_target(target, **({"draft_vocab_size": draft_vocab} if draft_vocab else {}))
    tokens = (
        frequent_tokens((it["input_ids"][it["prompt_length"] :] for it in items), draft_vocab, V)
        if draft_vocab
        else None
    )
    cache = open_head_cache(str(full_cache), str(tiny_target_dir), target, items, cfg.hidden_layers, 1.0, V)
    batch = _batch(items, [3, 0, 17, 9, 30])
    results = []
    for c in (None, cache):
        head = EagleHead.from_target(target, cfg, seed=4, draft_tokens=tokens)
        per_token, kept, logs = HeadLoss(opts, target, None, V, c)(head, batch, 0)
        per_token.sum().backward()
        results.append(
            (per_token.detach(), kept, logs, {n: p.grad for n, p in head.named_parameters() if p.grad is not None})
        )
    (live, kept_live, logs_live, grad_live), (cached, kept_cached, logs_cached, grad_cached) = results
    assert torch.equal(kept_live, kept_cached)
    torch.testing.assert_close(cached, live, atol=1e-4, rtol=1e-3)  # fp16 hidden states
    for key in ("div_step0", "div_step1", "div_step2"):
        assert logs_cached[key] == pytest.approx(logs_live[key], rel=1e-3)
    assert grad_live.keys() == grad_cached.keys()
    for name, g in grad_live.items():  # fp16 features: the same gradient to ~1e-4 of its norm
        assert float((grad_cached[name] - g).norm()) <= 1e-3 * float(g.norm()), name


def test_eagle_adaspec_selects_the_same_tokens(full_cache, tiny_target_dir):
    target = load_model(tiny_target_dir)
    opts = TrainHeadOptions(
        target=str(tiny_target_dir),
        output="unused",
        ttt_steps=3,
        limit=LIMIT,
        max_length=64,
        method="adaspec",
        ref="unused",
        k=0.4,
    )
    items = data.encode(load_split(opts, "train", LIMIT), load_tokenizer(tiny_target_dir), 64)
    head, ref = EagleHead.from_target(target, seed=1), EagleHead.from_target(target, seed=2)
    cache = open_head_cache(str(full_cache), str(tiny_target_dir), target, items, head.config.hidden_layers, 1.0, V)
    batch = _batch(items, [5, 1, 22, 14, 8, 27])
    kept = []
    for c in (None, cache):
        loss = HeadLoss(opts, target, ref, V, c)
        teacher, states = loss.signal(batch, head.config.hidden_layers)
        feats = torch.cat(list(states), dim=-1)
        with torch.no_grad():
            div, valid, _ = loss.step_divergences(head, head, teacher, feats, batch)
            ref_div = loss.step_divergences(ref, ref, teacher, feats, batch)[0]
        kept.append(
            torch.stack([selection.delta_selection(div[j], ref_div[j], valid[j], 0.4, "top") for j in range(3)])
        )
    assert kept[0].any() and torch.equal(kept[0], kept[1])


def _counting_target(monkeypatch, module, target_dir: Path) -> list[int]:
    """Wrap the recipes' model loading (adaspec.training.setup) so the target's forwards are counted: [forwards so
    far]."""
    count = [0]
    real = module.load_model

    def load(path, *a, **kw):
        model = real(path, *a, **kw)
        if Path(path) == Path(target_dir):
            inner = model.forward

            def forward(*fa, **fk):
                count[0] += 1
                return inner(*fa, **fk)

            model.forward = forward
        return model

    monkeypatch.setattr(module, "load_model", load)
    return count


@pytest.mark.parametrize("kind", ["eagle", "mtp", "medusa"])
def test_cached_training_runs_no_target_forward_and_matches_live(kind, root, full_cache, tiny_target_dir, monkeypatch):
    from adaspec.recipes.train_head.options import run_train_head
    from adaspec.training import setup as module

    args = [
        "train-head",
        "--target",
        tiny_target_dir,
        "--kind",
        kind,
        "--max-steps",
        3,
        "--lr",
        1e-3,
        "--warmup-steps",
        0,
        *FAST,
        *(["--ttt-steps", 3] if kind == "eagle" else ["--depth", 2]),
    ]
    losses, during_training = {}, {}
    for name, extra in (("live", []), ("cached", ["--teacher-cache", full_cache])):
        count = _counting_target(monkeypatch, module, tiny_target_dir)
        at_step: list[int] = []
        out = root / f"{kind}_{name}"
        run_train_head(options_from(args, *extra, "--output", out), on_step=lambda step, b: at_step.append(count[0]))
        # validation runs only after the last step (--val-every 0): steps 0 and 1 ran between these calls
        during_training[name] = at_step[-1] - at_step[0]
        losses[name] = [v for _, v in scalars(out, "train/loss")]
        assert summary(out)["steps"] == 3
    assert during_training == {"live": 2, "cached": 0}
    assert losses["cached"][0] == pytest.approx(losses["live"][0], rel=1e-3)


def test_train_head_refuses_mismatched_caches(root, full_cache, tiny_target_dir, tiny_draft_dir, capsys):
    base = ["train-head", "--target", tiny_target_dir, "--max-steps", 1, *FAST, "--output", root / "refused"]
    final_only = _cache(tiny_target_dir, root / "final_only", layers="final")
    plain = _cache(tiny_target_dir, root / "plain", layers=None)
    assert "holds the hidden states of layers [-1], not [0]" in cli_error(capsys, *base, "--teacher-cache", final_only)
    assert "holds no target hidden states" in cli_error(capsys, *base, "--teacher-cache", plain)
    err = cli_error(
        capsys,
        "train-head",
        "--target",
        tiny_draft_dir,
        "--max-steps",
        1,
        *FAST,
        "--output",
        root / "refused2",
        "--teacher-cache",
        full_cache,
    )
    assert "was built for another target" in err
    assert "another temperature" in cli_error(capsys, *base, "--teacher-cache", full_cache, "--temperature", 2)
    for field, value, what in (("vocab_size", 300, "output vocabulary size"), ("hidden", 64, "hidden size")):
        edited = root / f"edited_{field}"
        shutil.copytree(full_cache, edited)
        m = json.loads((edited / "manifest.json").read_text())
        if field == "hidden":
            m["hidden"]["size"] = value
        else:
            m[field] = value
        (edited / "manifest.json").write_text(json.dumps(m))
        assert f"another {what}" in cli_error(capsys, *base, "--teacher-cache", edited)
    assert "--data-source dataset" in cli_error(
        capsys, *base, "--kind", "mtp", "--data-source", "target", "--teacher-cache", full_cache
    )
    assert "holds the hidden states of layers [0, -1], not [1]" in cli_error(
        capsys, *base[:-2], "--output", root / "r3", "--teacher-cache", full_cache, "--aux-layers", "1,1,1"
    )


def test_help_texts(capsys):
    for command, needles in (
        ("cache", ["--hidden-layers", "eagle3", "--max-hidden-gb", "GB"]),
        ("train-head", ["--teacher-cache", "no target forward"]),
    ):
        with pytest.raises(SystemExit):
            run(command, "--help")
        text = " ".join(capsys.readouterr().out.split())
        assert all(n in text for n in needles), (command, needles)


@pytest.mark.slow
def test_two_processes_match_one_from_the_cache(root, full_cache, tiny_target_dir):
    args = [
        "--target",
        tiny_target_dir,
        "--max-steps",
        2,
        "--lr",
        3e-3,
        "--ttt-steps",
        3,
        "--teacher-cache",
        full_cache,
        *FAST,
    ]
    single = root / "single"
    assert run("train-head", *args, "--output", single) == 0
    multi = root / "multi"
    torchrun("train-head", multi, *args)
    wm, ws = weights(multi), weights(single)
    for k in wm:
        if wm[k].is_floating_point():
            torch.testing.assert_close(wm[k], ws[k], atol=1e-5, rtol=0, msg=k)
