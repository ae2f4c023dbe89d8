"""Teacher cache: build, refusals, exactness at K = V, error vs K, resume, corruption, cached distillation."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from adaspec import cli, data
from adaspec.data import encode
from adaspec.data.options import load_split
from adaspec.distill import losses
from adaspec.distill.cache_store import TeacherCache, items_fingerprint
from adaspec.errors import AdaspecError
from adaspec.models import build_model, load_model, save_model
from adaspec.recipes.cache import CacheOptions, run_cache
from adaspec.training import setup
from adaspec.training.options import TrainOptions

REPO = Path(__file__).resolve().parents[2]
N_ITEMS = 12
MAX_LEN = 64


def _records(n: int) -> list[dict]:
    rows = []
    with open(REPO / "data" / "gsm8k" / "train.jsonl") as fh:
        for line, _ in zip(fh, range(n)):
            rec = json.loads(line)
            rows.append({"prompt": rec["question"][:120] + "\n", "response": rec["answer"][:160]})
    return rows


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A tokenizer (V ~ 400), a target, another target, a reference and a data file, all tiny."""
    root = tmp_path_factory.mktemp("cache")
    recs = _records(300)
    tok = data.train_tokenizer([r["prompt"] + r["response"] for r in recs], vocab_size=400)
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs[:40]))
    dirs = {}
    for name, seed in (("target", 0), ("other_target", 1), ("ref", 2)):
        dirs[name] = root / name
        save_model(build_model("tiny-neox", len(tok), seed=seed), dirs[name], tok)
    return {"root": root, "data": str(path), "tok": tok, "V": len(tok), **{k: str(v) for k, v in dirs.items()}}


def _opts(env: dict, output: Path, **kw) -> CacheOptions:
    base = dict(
        target=env["target"],
        ref=env["ref"],
        output=str(output),
        task=None,
        data=env["data"],
        limit=N_ITEMS,
        max_length=MAX_LEN,
        batch_size=5,
        top_k=16,
        shard_size=5,
        progress=False,
    )
    return CacheOptions(**{**base, **kw})


def _items(env: dict, limit: int = N_ITEMS) -> list[dict]:
    o = _opts(env, env["root"] / "unused", limit=limit)
    return encode(load_split(o, "train", o.limit), env["tok"], o.max_length)


@pytest.fixture(scope="module")
def built(env) -> Path:
    out = env["root"] / "c16"
    rc = cli.main(
        [
            "cache",
            "--target",
            env["target"],
            "--ref",
            env["ref"],
            "--data",
            env["data"],
            "--limit",
            str(N_ITEMS),
            "--max-length",
            str(MAX_LEN),
            "--top-k",
            "16",
            "--batch-size",
            "5",
            "--shard-size",
            "5",
            "--output",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    return out


def _open(env: dict, path: Path, **kw) -> TeacherCache:
    args = dict(target_path=env["target"], ref_path=env["ref"], items=_items(env), divergence="fkl", temperature=1.0)
    return TeacherCache.open(path, **{**args, **kw})


# ---------------------------------------------------------------------------------------------- options


def test_data_flags_match_train_options():
    train = {f.name: f for f in dataclasses.fields(TrainOptions)}
    for name in ("task", "data", "prompt_field", "response_field", "data_dir", "limit", "max_length"):
        mine = next(f for f in dataclasses.fields(CacheOptions) if f.name == name)
        assert mine.default == train[name].default and mine.type == train[name].type, name
    for f in dataclasses.fields(CacheOptions):
        assert f.metadata.get("help"), f.name


@pytest.mark.parametrize(
    "bad",
    [
        dict(top_k=0),
        dict(batch_size=0),
        dict(temperature=0.0),
        dict(beta=1.5),
        dict(shard_size=0),
        dict(limit=0),
        dict(max_length=1),
        dict(task="nope", data=None),
        dict(task=None, data=None),
    ],
)
def test_option_ranges(env, bad):
    with pytest.raises(AdaspecError):
        _opts(env, env["root"] / "x", **bad)


# ---------------------------------------------------------------------------------------------- contents


def test_manifest_and_layout(env, built):
    m = json.loads((built / "manifest.json").read_text())
    assert m["complete"] and m["top_k"] == 16 and m["divergence"] == "fkl" and m["vocab_size"] == env["V"]
    assert m["data"]["items_fingerprint"] == items_fingerprint(_items(env))
    assert m["data"]["max_length"] == MAX_LEN and m["data"]["limit"] == N_ITEMS
    assert m["target"]["fingerprint"] and m["ref"]["fingerprint"] and m["tokenizer_vocab_hash"]
    assert len(m["shards"]) == 3 and sorted(p.name for p in built.glob("shard-*")) == [s["file"] for s in m["shards"]]
    c = _open(env, built)
    assert c.has_ref and c.top_k == 16


def test_batch_alignment_and_padding(env, built):
    items = _items(env)
    c = _open(env, built)
    idx = [7, 0, 3]
    batch = data.collate([items[i] for i in idx], 0)
    width = batch["input_ids"].shape[1]
    got = c.batch(idx, width, "cpu")
    mask = data.response_mask(batch["labels"])
    assert got["topk_ids"].shape == (3, width - 1, 16) and got["topk_ids"].dtype == torch.long
    assert got["topk_logprobs"].shape == (3, width - 1, 16) and got["ref_div"].shape == (3, width - 1)
    # response rows are real distributions, everything else is the finite filler
    lp = got["topk_logprobs"]
    assert torch.all(lp[mask] <= 0) and torch.all(lp[mask].exp().sum(-1) <= 1 + 1e-5)
    assert torch.all(lp[~mask] == 0) and torch.all(got["topk_ids"][~mask] == 0)
    q = torch.randn(3, width - 1, env["V"])
    for kind in losses.KINDS:
        div = losses.sparse_divergence(kind, got["topk_ids"], lp, q)
        assert torch.isfinite(div).all(), kind
    # the stored top-1 is the target's argmax at the same shifted position
    target = load_model(env["target"])
    with torch.no_grad():
        logits = target(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    assert torch.equal(got["topk_ids"][..., 0][mask], logits.argmax(-1)[mask])


# ---------------------------------------------------------------------------------------------- refusals


def test_refuses_other_target(env, built):
    with pytest.raises(AdaspecError, match="another target"):
        _open(env, built, target_path=env["other_target"])


def test_refuses_other_reference(env, built):
    with pytest.raises(AdaspecError, match="another reference"):
        _open(env, built, ref_path=env["other_target"])


def test_refuses_other_data(env, built):
    with pytest.raises(AdaspecError, match="another training data"):
        _open(env, built, items=_items(env, limit=N_ITEMS - 1))
    items = _items(env)
    items[3] = {**items[3], "labels": items[3]["labels"][:-1] + [-100]}
    with pytest.raises(AdaspecError, match="another training data"):
        _open(env, built, items=items)


@pytest.mark.parametrize(
    "kw, what",
    [
        (dict(divergence="rkl"), "divergence"),
        (dict(temperature=2.0), "temperature"),
        (dict(top_k=32), "top-k"),
        (dict(vocab=10), "output vocabulary"),
    ],
)
def test_refuses_other_settings(env, built, kw, what):
    with pytest.raises(AdaspecError, match=f"another {what}"):
        _open(env, built, **kw)


def test_refuses_other_tokenizer(env, built, tmp_path):
    tok = data.train_tokenizer([r["prompt"] for r in _records(50)], vocab_size=300)
    other = tmp_path / "t"
    shutil.copytree(env["target"], other)
    tok.save_pretrained(str(other))
    with pytest.raises(AdaspecError, match="another tokenizer"):
        _open(env, built, target_path=str(other))


def test_build_into_cache_of_other_settings_refused(env, built):
    with pytest.raises(AdaspecError, match="other settings.*top_k"):
        run_cache(_opts(env, built, top_k=8))
    with pytest.raises(AdaspecError, match="other settings.*divergence"):
        run_cache(_opts(env, built, divergence="tvd"))


def test_missing_cache_errors(env, tmp_path):
    with pytest.raises(AdaspecError, match="not found"):
        _open(env, tmp_path / "nope")
    with pytest.raises(AdaspecError, match="no manifest.json"):
        _open(env, tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(AdaspecError, match="cache format"):
        _open(env, tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": 1, "complete": true}')
    with pytest.raises(AdaspecError, match="malformed"):
        _open(env, tmp_path)


# ---------------------------------------------------------------------------------------------- resume


def test_resume_partial_build(env, built, tmp_path):
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
        _open(env, out)
    run_cache(_opts(env, out))
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == first_mtime
    assert not list(out.glob("*.tmp"))
    a, b = _open(env, built), _open(env, out)
    width = max(len(it["input_ids"]) for it in _items(env))
    ga, gb = a.batch(list(range(N_ITEMS)), width), b.batch(list(range(N_ITEMS)), width)
    for key in ga:
        assert torch.allclose(ga[key], gb[key], atol=1e-6), key


def test_corrupt_shard(env, built, tmp_path, capsys):
    out = tmp_path / "c"
    shutil.copytree(built, out)
    shard = out / "shard-00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(AdaspecError, match="corrupt cache shard .*shard-00001.*checksum"):
        _open(env, out)
    shard.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(AdaspecError, match="corrupt cache shard"):
        _open(env, out, verify=False)
    run_cache(_opts(env, out))
    assert "redoing it" in capsys.readouterr().err
    _open(env, out)


# ---------------------------------------------------------------------------------------------- exactness


def _cached_vs_exact(env: dict, cache_dir: Path, kind: str, draft: torch.nn.Module) -> tuple[float, float]:
    """Mean |sparse - exact| draft divergence and |cached L_ref - exact L_ref| over all response tokens."""
    items = _items(env)
    c = TeacherCache.open(
        cache_dir, target_path=env["target"], ref_path=env["ref"], items=items, divergence=kind, temperature=1.0
    )
    target, ref = load_model(env["target"]), load_model(env["ref"])
    idx = list(range(N_ITEMS))
    batch = data.collate([items[i] for i in idx], 0)
    mask = data.response_mask(batch["labels"])
    got = c.batch(idx, batch["input_ids"].shape[1], "cpu")
    with torch.no_grad():
        p, q, r = (
            m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            for m in (target, draft, ref)
        )
    exact = losses.per_token_divergence(kind, p, q)[mask]
    sparse = losses.sparse_divergence(kind, got["topk_ids"], got["topk_logprobs"], q)[mask]
    ref_exact = losses.per_token_divergence(kind, p, r)[mask]
    return float((sparse - exact).abs().mean()), float((got["ref_div"][mask] - ref_exact).abs().mean())


@pytest.mark.parametrize("kind", ["fkl", "jsd"])
def test_full_vocabulary_cache_is_exact(env, tmp_path, kind):
    out = tmp_path / "full"
    run_cache(_opts(env, out, top_k=env["V"], divergence=kind, shard_size=100))
    draft = build_model("tiny-neox", env["V"], seed=5)
    err, ref_err = _cached_vs_exact(env, out, kind, draft)
    assert err < 1e-5 and ref_err < 1e-5, (err, ref_err)


def test_error_decreases_with_k(env, tmp_path):
    draft = build_model("tiny-neox", env["V"], seed=5)
    errors = {}
    for k in (20, 64, 256, env["V"]):
        out = tmp_path / f"k{k}"
        run_cache(_opts(env, out, top_k=k, shard_size=100))
        errors[k] = _cached_vs_exact(env, out, "fkl", draft)
    print("\nmean |cached - exact| per token (draft fkl, L_ref fkl), V =", env["V"])
    for k, (e, r) in errors.items():
        print(f"  K={k:4d}: draft {e:.3e}  ref {r:.3e}")
    ks = sorted(errors)
    assert all(errors[a][0] > errors[b][0] for a, b in zip(ks, ks[1:]))
    assert all(errors[a][1] > errors[b][1] for a, b in zip(ks, ks[1:]))
    assert errors[env["V"]][0] < 1e-5


# ---------------------------------------------------------------------------------------------- distill


def _distill_opts(env: dict, out: Path, **kw):
    from adaspec.recipes.distill import DistillOptions

    base = dict(
        output=str(out),
        target=env["target"],
        task=None,
        data=env["data"],
        limit=N_ITEMS,
        max_length=MAX_LEN,
        batch_size=4,
        max_steps=3,
        val_every=0,
        val_examples=4,
        val_max_new_tokens=6,
        preset="tiny-neox",
        init_seed=7,
        warmup_steps=1,
        progress=False,
        method="adaspec",
        ref=env["ref"],
        k=0.5,
        # the draft built from the preset, never loaded from the reference's path (whose forwards are counted)
        cold_start="off",
    )
    return DistillOptions(**{**base, **kw})


def test_on_policy_refused_with_cache(env, built):
    for source in ("draft", "mix"):
        with pytest.raises(AdaspecError, match="on-policy"):
            _distill_opts(env, env["root"] / "x", teacher_cache=str(built), data_source=source)


def test_distill_from_cache_runs_no_teacher_forward(env, tmp_path, monkeypatch):
    from adaspec.recipes import distill

    out = tmp_path / "cache_full"
    run_cache(_opts(env, out, top_k=env["V"], shard_size=100))
    calls = {"target": 0, "ref": 0}
    in_training = {"on": False}
    forwards_in_training = {"target": 0, "ref": 0}
    real_load = setup.load_model

    def counting_load(path, *a, **kw):
        model = real_load(path, *a, **kw)
        name = "target" if str(path) == env["target"] else "ref" if str(path) == env["ref"] else None
        if name:
            inner = model.forward

            def forward(*fa, **fk):
                calls[name] += 1
                forwards_in_training[name] += in_training["on"]
                return inner(*fa, **fk)

            model.forward = forward
        return model

    def loop(step, batches):
        in_training["on"] = True

    monkeypatch.setattr(setup, "load_model", counting_load)
    distill.run_distill(_distill_opts(env, tmp_path / "cached", teacher_cache=str(out)), on_step=loop)
    assert forwards_in_training == {"target": 0, "ref": 0}
    assert calls["target"] > 0  # the validation continuations, made before training
    summary = json.loads((tmp_path / "cached" / "train_summary.json").read_text())
    assert summary["steps"] == 3

    # the uncached run from the same seed reaches the same draft: the cache is aligned end to end
    calls.update(target=0, ref=0)
    in_training["on"] = False
    distill.run_distill(_distill_opts(env, tmp_path / "exact"), on_step=loop)
    assert forwards_in_training["target"] >= 3 and forwards_in_training["ref"] >= 3
    a, b = load_model(tmp_path / "cached"), load_model(tmp_path / "exact")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-5), name


def test_distill_refuses_cache_without_reference(env, tmp_path):
    from adaspec.recipes import distill

    out = tmp_path / "noref"
    run_cache(_opts(env, out, ref=None))
    with pytest.raises(AdaspecError, match="no reference divergence"):
        distill.run_distill(_distill_opts(env, tmp_path / "d", teacher_cache=str(out), ref=None))


def test_distill_prints_the_cache_k_and_refuses_fewer_than_top_k(env, built, tmp_path, capsys):
    from adaspec.recipes import distill

    with pytest.raises(AdaspecError, match="holds the target's top-16 per token, fewer than --top-k 32"):
        distill.run_distill(_distill_opts(env, tmp_path / "d", teacher_cache=str(built), top_k=32))
    distill.run_distill(_distill_opts(env, tmp_path / "ok", teacher_cache=str(built), top_k=16, max_steps=1))
    assert "the target's top-16 per token and L_ref" in capsys.readouterr().out
