"""`adaspec cache --hidden-layers`: layer names, the size estimate and its refusal, the stored states against
the target's own features, refusals of mismatched caches, and resume of an interrupted build."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import cli_error, run

from adaspec import data
from adaspec.data.options import load_split
from adaspec.distill.cache_store import TeacherCache
from adaspec.distill.hidden_states import hidden_bytes, hidden_layer_ids
from adaspec.errors import AdaspecError
from adaspec.models import load_model, load_tokenizer, model_fingerprint
from adaspec.models.target import FINAL, default_aux_layers, features
from adaspec.recipes import cache as cache_lib
from adaspec.recipes.cache import CacheOptions, run_cache

LIMIT, MAX_LEN = 12, 64
H = 32  # tiny-neox's hidden size (2 layers)


def _opts(target: Path, output: Path, **kw) -> CacheOptions:
    base = dict(
        target=str(target),
        output=str(output),
        limit=LIMIT,
        max_length=MAX_LEN,
        batch_size=5,
        top_k=16,
        shard_size=5,
        progress=False,
        hidden_layers="0,-1",
    )
    return CacheOptions(**{**base, **kw})


def _items(target: Path) -> list[dict]:
    o = _opts(target, Path("unused"))
    return data.encode(load_split(o, "train", o.limit), load_tokenizer(target), o.max_length)


def _open(target: Path, path: Path, **kw) -> TeacherCache:
    args = dict(
        target_path=target,
        ref_path=None,
        items=_items(target),
        divergence=None,
        temperature=1.0,
        hidden_layers=(0, FINAL),
    )
    return TeacherCache.open(path, **{**args, **kw})


@pytest.fixture(scope="module")
def built(tiny_target_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hidden") / "c"
    run_cache(_opts(tiny_target_dir, out))
    return out


def test_layer_names():
    assert hidden_layer_ids("eagle3", 12) == default_aux_layers(12) == (1, 5, 8)
    assert hidden_layer_ids("final", 12) == (FINAL,)
    assert hidden_layer_ids("eagle3, final,5", 12) == (1, 5, 8, FINAL)
    assert hidden_layer_ids("eagle3", 2) == (0,)  # the clamped default (0, 0, 0), stored once
    assert hidden_layer_ids("1,2,-1", 4) == (1, 2, FINAL)
    with pytest.raises(AdaspecError, match="out of range"):
        hidden_layer_ids("4", 4)
    with pytest.raises(AdaspecError, match="eagle3, final or layer ids"):
        hidden_layer_ids("eagle", 4)


def test_manifest_records_layers_dtype_and_target(built, tiny_target_dir):
    m = json.loads((built / "manifest.json").read_text())
    items = _items(tiny_target_dir)
    positions = sum(len(it["input_ids"]) for it in items)
    assert m["hidden"] == {"layers": [0, FINAL], "size": H, "dtype": "float16", "positions": positions}
    assert m["size_bytes"] > hidden_bytes(items, 2, H)
    assert m["target"]["fingerprint"] == model_fingerprint(tiny_target_dir)
    assert sum(s["positions"] for s in m["shards"]) == positions


def test_stored_states_are_the_targets_features(built, tiny_target_dir):
    items = _items(tiny_target_dir)
    cache = _open(tiny_target_dir, built)
    idx = [7, 0, 11, 3]
    batch = data.collate([items[i] for i in idx], 0)
    width = batch["input_ids"].shape[1]
    with torch.no_grad():
        _, live = features(load_model(tiny_target_dir), batch, (FINAL, 0))
    got = cache.hidden(idx, width, (FINAL, 0))  # any order and subset of the cached layers
    assert got.shape == live.shape == (2, 4, width, H) and got.dtype == torch.float32
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[:, real], live[:, real], atol=2e-3, rtol=1e-3)  # fp16 storage
    assert torch.all(got[:, ~real] == 0)
    assert cache.hidden(idx, width, (0, 0, 0)).shape == (3, 4, width, H)  # EAGLE-3 on a 2-layer target


def test_size_estimate_refused_before_any_model_loads(tiny_target_dir, tmp_path, monkeypatch, capsys):
    def no_load(*a, **kw):
        raise AssertionError("a model was loaded before the size check")

    monkeypatch.setattr(cache_lib, "load_model", no_load)
    items = _items(tiny_target_dir)
    want = hidden_bytes(items, 2, H)
    with pytest.raises(AdaspecError) as exc:
        run_cache(_opts(tiny_target_dir, tmp_path / "c", max_hidden_gb=want / 2e9))
    msg = str(exc.value)
    positions = sum(len(it["input_ids"]) for it in items)
    assert f"{LIMIT} examples ({positions:,} token positions) x 2 layers x {H} hidden x 2 bytes" in msg
    assert f"= {want / 1e9:.2f} GB" in msg and "--max-hidden-gb" in msg
    assert not (tmp_path / "c" / "manifest.json").exists()
    err = cli_error(
        capsys,
        "cache",
        "--target",
        tiny_target_dir,
        "--limit",
        LIMIT,
        "--hidden-layers",
        "eagle3,final",
        "--max-hidden-gb",
        "1e-6",
        "--output",
        tmp_path / "c",
        "--no-progress",
    )
    assert "GB, over --max-hidden-gb 1e-06" in err


def test_bad_hidden_options(tiny_target_dir, tmp_path, capsys):
    with pytest.raises(AdaspecError, match="--max-hidden-gb must be > 0"):
        _opts(tiny_target_dir, tmp_path / "c", max_hidden_gb=0.0)
    assert "out of range" in cli_error(
        capsys,
        "cache",
        "--target",
        tiny_target_dir,
        "--limit",
        LIMIT,
        "--hidden-layers",
        "2",
        "--output",
        tmp_path / "c",
        "--no-progress",
    )


def test_opening_refuses_mismatched_caches(built, tiny_target_dir, tiny_draft_dir, tmp_path):
    with pytest.raises(AdaspecError, match="not \\[1\\]"):
        _open(tiny_target_dir, built, hidden_layers=(0, 1))
    with pytest.raises(AdaspecError, match="another target"):
        _open(tiny_draft_dir, built, items=_items(tiny_target_dir))
    with pytest.raises(AdaspecError, match="another output vocabulary"):
        _open(tiny_target_dir, built, vocab=100)
    edited = tmp_path / "edited"
    shutil.copytree(built, edited)
    m = json.loads((edited / "manifest.json").read_text())
    m["hidden"]["size"] = 64
    (edited / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AdaspecError, match="another hidden size \\(cache: 64, this run: 32\\)"):
        _open(tiny_target_dir, edited, hidden_size=H)
    plain = tmp_path / "plain"
    run_cache(_opts(tiny_target_dir, plain, hidden_layers=None))
    assert "hidden" not in json.loads((plain / "manifest.json").read_text())  # old caches keep their key
    with pytest.raises(
        AdaspecError, match="holds no target hidden states; rebuild it with `adaspec cache --hidden-layers"
    ):
        _open(tiny_target_dir, plain)
    _open(tiny_target_dir, plain, hidden_layers=None)  # a draft-LM run reads it as before


def test_building_into_a_cache_of_other_layers_is_refused(built, tiny_target_dir):
    with pytest.raises(AdaspecError, match="other settings \\(hidden.layers"):
        run_cache(_opts(tiny_target_dir, built, hidden_layers="0"))
    with pytest.raises(AdaspecError, match="other settings \\(hidden"):
        run_cache(_opts(tiny_target_dir, built, hidden_layers=None))


def test_resume_interrupted_build_with_hidden_states(built, tiny_target_dir, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(built, out)
    m = json.loads((out / "manifest.json").read_text())
    first_mtime = (out / "shard-00000.safetensors").stat().st_mtime_ns
    # killed while writing shard 2, after shard 1 landed but before the manifest listed it
    (out / "shard-00002.safetensors").unlink()
    (out / "shard-00002.safetensors.tmp").write_bytes(b"partial")
    m["complete"], m["shards"] = False, m["shards"][:1]
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(AdaspecError, match="incomplete"):
        _open(tiny_target_dir, out)
    run_cache(_opts(tiny_target_dir, out))
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first_mtime
    assert not list(out.glob("*.tmp"))
    a, b = _open(tiny_target_dir, built), _open(tiny_target_dir, out)
    idx = list(range(LIMIT))
    width = max(len(it["input_ids"]) for it in _items(tiny_target_dir))
    assert torch.equal(a.hidden(idx, width, (0, FINAL)), b.hidden(idx, width, (0, FINAL)))
    for key, value in a.batch(idx, width).items():
        assert torch.equal(value, b.batch(idx, width)[key]), key


def test_cli_builds_hidden_states(tiny_target_dir, tmp_path, capsys):
    out = tmp_path / "c"
    assert (
        run(
            "cache",
            "--target",
            tiny_target_dir,
            "--limit",
            4,
            "--max-length",
            MAX_LEN,
            "--hidden-layers",
            "eagle3,final",
            "--output",
            out,
            "--no-progress",
        )
        == 0
    )
    assert "+ hidden states of layers [0, -1]" in capsys.readouterr().out
    assert json.loads((out / "manifest.json").read_text())["hidden"]["layers"] == [0, FINAL]
