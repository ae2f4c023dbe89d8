"""The acceptance-aligned variants through `distill` (issue 13 part 3): LK losses, Δ in TVD (live and from a
cache that records which divergence its L_ref is in), soft selection and the k schedule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import cli_error, options_from, run, scalars, summary

from adaspec import data as data_lib
from adaspec import models
from adaspec.distill import losses
from adaspec.distill.teacher import Teacher, shifted_logits
from adaspec.training.run_fingerprint import run_fingerprint

FAST = ["--max-length", "64", "--val-examples", "4", "--val-max-new-tokens", "8", "--val-every", "0", "--no-progress"]
BASE = ["--limit", "32", "--batch-size", "8", "--max-steps", "3", "--lr", "1e-3", "--warmup-steps", "0", *FAST]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("variants")


def _adaspec(target: Path, ref: Path, *extra) -> list:
    return [
        "distill",
        "--target",
        target,
        "--draft-init",
        ref,
        "--method",
        "adaspec",
        "--ref",
        ref,
        "--k",
        "0.4",
        *BASE,
        *extra,
    ]


@pytest.mark.parametrize("loss", ["lk", "lk_kl"])
def test_kd_with_lk_losses(loss, tmp_path, tiny_target_dir, tiny_draft_dir):
    out = tmp_path / loss
    assert (
        run(
            "distill",
            "--target",
            tiny_target_dir,
            "--draft-init",
            tiny_draft_dir,
            "--divergence",
            loss,
            *BASE,
            "--output",
            out,
        )
        == 0
    )
    loss_log, div = dict(scalars(out, "train/loss")), dict(scalars(out, "train/divergence"))
    assert sorted(loss_log) == [1, 2, 3]
    for step in loss_log:
        assert 0 < loss_log[step] < -torch.log(torch.tensor(losses.LK_EPS)).item()
        assert loss_log[step] == pytest.approx(div[step], rel=1e-4)  # every token, mean over them


def test_soft_selection_weights_sum_like_top_k(tmp_path, tiny_target_dir, tiny_draft_dir):
    out = tmp_path / "soft"
    assert (
        run(
            *_adaspec(
                tiny_target_dir, tiny_draft_dir, "--selection", "soft", "--soft-temperature", "0.2", "--output", out
            )
        )
        == 0
    )
    kept = [v for _, v in scalars(out, "train/kept_fraction")]
    assert len(kept) == 3 and all(abs(v - 0.4) <= 0.5 / 128 + 1e-6 for v in kept), kept
    loss, div = scalars(out, "train/loss"), scalars(out, "train/divergence")
    assert all(0 < l < d for (_, l), (_, d) in zip(loss, div))
    assert summary(out)["steps"] == 3


def test_linear_k_schedule_goes_from_1_to_k(tmp_path, tiny_target_dir, tiny_draft_dir):
    out = tmp_path / "ksched"
    assert run(*_adaspec(tiny_target_dir, tiny_draft_dir, "--k-schedule", "linear", "--output", out)) == 0
    kept = [v for _, v in scalars(out, "train/kept_fraction")]
    # steps 0, 1, 2 of 3: k = 1, 0.7, 0.4, each within one token of round(k * n), n >= 128
    for got, want in zip(kept, (1.0, 0.7, 0.4)):
        assert abs(got - want) <= 0.5 / 128 + 1e-6, kept


@pytest.fixture(scope="module")
def tvd_cache(root, tiny_target_dir, tiny_draft_dir) -> Path:
    out = root / "cache_tvd"
    assert (
        run(
            "cache",
            "--target",
            tiny_target_dir,
            "--ref",
            tiny_draft_dir,
            "--limit",
            "32",
            "--max-length",
            "64",
            "--top-k",
            "16",
            "--divergence",
            "tvd",
            "--output",
            out,
            "--no-progress",
        )
        == 0
    )
    return out


def test_delta_in_tvd_from_a_cache_that_records_it(capsys, root, tvd_cache, tiny_target_dir, tiny_draft_dir):
    common = ["--teacher-cache", tvd_cache, "--top-k", "16"]
    out = root / "adaspec_tvd"
    assert run(*_adaspec(tiny_target_dir, tiny_draft_dir, "--delta-divergence", "tvd", *common, "--output", out)) == 0
    assert all(abs(v - 0.4) <= 0.5 / 128 + 1e-6 for _, v in scalars(out, "train/kept_fraction"))
    # Δ in the loss's divergence (fkl) against a cache whose L_ref is TVD: refused
    err = cli_error(capsys, *_adaspec(tiny_target_dir, tiny_draft_dir, *common, "--output", root / "mismatch"))
    assert "another divergence of L_ref (cache: tvd, this run: fkl)" in err
    # KD reads no L_ref: any loss trains from the cache's top-K
    assert (
        run(
            "distill",
            "--target",
            tiny_target_dir,
            "--draft-init",
            tiny_draft_dir,
            "--divergence",
            "lk",
            *BASE,
            *common,
            "--output",
            root / "kd_lk_cached",
        )
        == 0
    )


@pytest.mark.parametrize("cached", [False, True])
def test_teacher_measures_delta_in_its_own_divergence(
    cached, tvd_cache, tiny_target_dir, tiny_draft_dir, tiny_tokenizer
):
    from adaspec.data.options import load_split
    from adaspec.distill.cache_store import TeacherCache
    from adaspec.training.options import TrainOptions

    target, ref = models.load_model(tiny_target_dir).eval(), models.load_model(tiny_draft_dir).eval()
    draft = models.build_model("tiny-gpt2", len(tiny_tokenizer), seed=5)
    opts = TrainOptions(output="unused", limit=32, max_length=64)
    items = data_lib.encode(load_split(opts, "train", opts.limit), tiny_tokenizer, opts.max_length)
    batch = data_lib.collate(items[:4], data_lib.pad_id(tiny_tokenizer))
    batch["index"] = torch.arange(4)
    vocab = len(tiny_tokenizer)
    q = shifted_logits(draft, batch, vocab)
    mask = data_lib.response_mask(batch["labels"])
    with torch.no_grad():
        p, r = shifted_logits(target, batch, vocab), shifted_logits(ref, batch, vocab)
    if cached:
        cache = TeacherCache.open(
            tvd_cache,
            target_path=tiny_target_dir,
            ref_path=tiny_draft_dir,
            items=items,
            divergence="tvd",
            temperature=1.0,
        )
        teacher = Teacher("fkl", 1.0, 0.5, vocab, cache=cache, delta_divergence="tvd")
        c = cache.batch(list(range(4)), batch["input_ids"].shape[1])
        want_loss = losses.sparse_divergence("fkl", c["topk_ids"], c["topk_logprobs"], q)
        want_draft = losses.sparse_divergence("tvd", c["topk_ids"], c["topk_logprobs"], q)
        want_ref = losses.sparse_divergence("tvd", c["topk_ids"], c["topk_logprobs"], r)
    else:
        teacher = Teacher("fkl", 1.0, 0.5, vocab, target=target, ref=ref, delta_divergence="tvd")
        want_loss, want_draft, want_ref = (
            losses.forward_kl(p, q),
            losses.total_variation(p, q),
            losses.total_variation(p, r),
        )
    div, draft_delta, ref_delta = teacher.divergences(q, batch, with_ref=True)
    assert div.requires_grad and not draft_delta.requires_grad
    for got, want in ((div, want_loss), (draft_delta, want_draft), (ref_delta, want_ref)):
        torch.testing.assert_close(got[mask], want.detach()[mask], rtol=1e-5, atol=1e-6)
    assert teacher.divergences(q, batch, with_ref=False)[1:] == (None, None)


def test_new_options_stay_out_of_fingerprints_at_their_default(tiny_target_dir):
    """Runs recorded before these options existed still resume; setting one is a different run."""
    from adaspec.training.setup import RUN_INPUTS

    base = ["distill", "--target", tiny_target_dir, "--output", "o", "--method", "adaspec", "--ref", tiny_target_dir]
    plain = run_fingerprint(options_from(base), RUN_INPUTS)
    assert not {"delta_divergence", "soft_temperature", "k_schedule"} & set(plain)
    for flag, value in (("--delta-divergence", "tvd"), ("--soft-temperature", "0.3"), ("--k-schedule", "linear")):
        opts = options_from(base, flag, value)
        name = flag[2:].replace("-", "_")
        assert run_fingerprint(opts, RUN_INPUTS)[name] == getattr(opts, name)
    fields = {f.name: f for f in dataclasses.fields(type(options_from(base)))}
    assert all(fields[n].metadata.get("help") for n in ("delta_divergence", "soft_temperature", "k_schedule"))


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--k-schedule", "linear"], "--method adaspec"),
        (["--delta-divergence", "tvd"], "--method adaspec"),
        (
            ["--method", "adaspec", "--ref", "REF", "--selection", "soft", "--soft-temperature", "0"],
            "--soft-temperature must be > 0",
        ),
    ],
)
def test_bad_variant_options_are_refused(capsys, tmp_path, tiny_target_dir, extra, needle):
    extra = [str(tiny_target_dir) if a == "REF" else a for a in extra]
    err = cli_error(capsys, "distill", "--target", tiny_target_dir, "--output", tmp_path / "o", *extra)
    assert needle in err
    assert not (tmp_path / "o").exists()
