"""`--cold-start`: what AdaSPEC does when the draft or head starts untrained (issue 30), declared once for
`distill` and `train-head`, applied only to AdaSPEC from an untrained start, printed and recorded."""

from __future__ import annotations

import dataclasses
import json
import random
import typing
from pathlib import Path

import pytest
from helpers import max_diff, options_from, run, scalars, summary

from adaspec import AdaspecError, config, data
from adaspec.distill import cold_start, selection
from adaspec.recipes.distill import DistillOptions
from adaspec.recipes.train_head.options import TrainHeadOptions
from adaspec.training.run_fingerprint import run_fingerprint
from adaspec.training.setup import RUN_INPUTS

FAST = ["--max-length", "64", "--val-examples", "4", "--val-max-new-tokens", "8", "--val-every", "0", "--no-progress"]
BASE = ["--limit", "32", "--batch-size", "8", "--max-steps", "4", "--lr", "1e-3", "--warmup-steps", "0", *FAST]


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def test_one_option_for_distill_and_train_head():
    d, h = _fields(DistillOptions)["cold_start"], _fields(TrainHeadOptions)["cold_start"]
    assert d.default == h.default == cold_start.DEFAULT and d.metadata == h.metadata
    for cls in (DistillOptions, TrainHeadOptions):
        assert typing.get_args(typing.get_type_hints(cls)["cold_start"]) == cold_start.CHOICES
    assert "--draft-init" in d.metadata["help"] and "eagle or dflash" in d.metadata["help"]
    assert cold_start.FALLBACK not in ("ref", "off")


def test_bad_values_are_refused(capsys, tmp_path):
    with pytest.raises(SystemExit):
        options_from(["distill", "--target", "t", "--output", "o", "--cold-start", "later"])
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"target": "t", "output": "o", "cold_start": "later"}))
    with pytest.raises(AdaspecError, match="option cold_start must be one of 'ref', 'warmup', 'linear', 'off'"):
        config.load_config(path, "distill", DistillOptions)
    with pytest.raises(AdaspecError, match="--cold-start must be one of ref, warmup, linear, off, got 'later'"):
        DistillOptions(target="t", output="o", method="adaspec", ref="r", cold_start="later")  # type: ignore


ADASPEC = ["--method", "adaspec", "--ref", "r"]


@pytest.mark.parametrize(
    "argv, want",
    [
        (["distill"], "off"),  # KD trains every token
        (["distill", "--cold-start", "warmup"], "off"),
        (["distill", *ADASPEC], cold_start.DEFAULT),
        (["distill", *ADASPEC, "--draft-init", "d"], "off"),  # a draft the user trained
        (["distill", *ADASPEC, "--selection", "all"], "off"),  # keeps every token
        (["distill", *ADASPEC, "--cold-start", "off"], "off"),
        (["distill", *ADASPEC, "--cold-start", "warmup", "--k-schedule", "linear"], "linear"),  # already a ramp
        (["distill", *ADASPEC, "--cold-start", "ref", "--k-schedule", "linear"], "ref"),
        (["train-head", "--kind", "eagle"], "off"),
        (["train-head", "--kind", "eagle", *ADASPEC], cold_start.DEFAULT),
        (["train-head", "--kind", "eagle", *ADASPEC, "--draft-init", "i"], cold_start.DEFAULT),  # eagle reads none
        (["train-head", "--kind", "mtp", *ADASPEC, "--cold-start", "linear"], "linear"),
        (["train-head", "--kind", "mtp", *ADASPEC, "--draft-init", "i"], "off"),
        (["train-head", "--kind", "medusa", *ADASPEC, "--selection", "all"], "off"),
    ],
)
def test_applies_only_to_adaspec_from_an_untrained_start(argv, want):
    assert options_from([argv[0], "--target", "t", "--output", "o", *argv[1:]]).cold_start == want


def test_ref_without_a_reference_model_falls_back(capsys):
    opts = options_from(
        [
            "distill",
            "--target",
            "t",
            "--output",
            "o",
            "--method",
            "adaspec",
            "--teacher-cache",
            "c",
            "--cold-start",
            "ref",
        ]
    )
    assert opts.cold_start == cold_start.FALLBACK
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cold start {cold_start.FALLBACK} instead" in err, err


def test_off_stays_out_of_the_fingerprint():
    """Runs made before the option trained as `off`: they still resume; a remedy is another run."""
    base = ["distill", "--target", "t", "--output", "o", *ADASPEC]
    assert "cold_start" not in run_fingerprint(options_from(base, "--cold-start", "off"), {})
    assert "cold_start" not in run_fingerprint(options_from(base, "--draft-init", "d"), {})
    for remedy in ("ref", "warmup", "linear"):
        assert run_fingerprint(options_from(base, "--cold-start", remedy), {})["cold_start"] == remedy
    assert set(RUN_INPUTS) <= set(_fields(DistillOptions))


def test_warmup_schedule():
    ks = [selection.scheduled_k(0.4, "warmup", s, 10) for s in range(12)]
    n = int(selection.WARMUP_FRACTION * 10)
    assert ks == [1.0] * n + [0.4] * (12 - n)


@pytest.fixture(scope="module")
def kd_draft(tmp_path_factory, tiny_target_dir) -> Path:
    out = tmp_path_factory.mktemp("cold_start") / "kd"
    assert (
        run("distill", "--target", tiny_target_dir, "--preset", "tiny-llama", "--method", "kd", *BASE, "--output", out)
        == 0
    )
    return out


@pytest.mark.parametrize(
    "remedy, kept", [("off", [0.4] * 4), ("warmup", [1.0, 1.0, 0.4, 0.4]), ("linear", [1.0, 0.8, 0.6, 0.4])]
)
def test_the_remedy_is_printed_trained_and_recorded(remedy, kept, capsys, tmp_path, tiny_target_dir, kd_draft):
    out = tmp_path / remedy
    capsys.readouterr()
    assert (
        run(
            "distill",
            "--target",
            tiny_target_dir,
            "--preset",
            "tiny-llama",
            "--method",
            "adaspec",
            "--ref",
            kd_draft,
            "--cold-start",
            remedy,
            *BASE,
            "--output",
            out,
        )
        == 0
    )
    printed = [line for line in capsys.readouterr().out.splitlines() if "--cold-start" in line]
    if remedy == "off":  # the behaviour before the option: the top k from the first step, nothing printed
        assert printed == []
    else:
        assert len(printed) == 1 and printed[0].startswith(f"AdaSPEC from an untrained draft: --cold-start {remedy}")
    got = [v for _, v in scalars(out, "train/kept_fraction")]
    assert len(got) == 4 and all(abs(g - w) <= 0.5 / 128 + 1e-6 for g, w in zip(got, kept)), got
    assert summary(out)["cold_start"] == remedy
    assert json.loads((out / config.RESOLVED_NAME).read_text())["cold_start"] == remedy


def test_ref_starts_from_the_reference(tmp_path, tiny_target_dir, kd_draft):
    out = tmp_path / "ref"
    # a learning rate too small to move a weight: the trained draft is its starting point
    assert (
        run(
            "distill",
            "--target",
            tiny_target_dir,
            "--preset",
            "tiny-llama",
            "--method",
            "adaspec",
            "--ref",
            kd_draft,
            "--cold-start",
            "ref",
            *BASE,
            "--lr",
            "1e-12",
            "--output",
            out,
        )
        == 0
    )
    assert max_diff(out, kd_draft) < 1e-6
    assert summary(out)["cold_start"] == "ref"


def test_kd_records_off(kd_draft):
    assert summary(kd_draft)["cold_start"] == "off"
    assert json.loads((kd_draft / config.RESOLVED_NAME).read_text())["cold_start"] == "off"


def test_a_head_starts_from_its_reference(tmp_path, tiny_target_dir):
    common = ["train-head", "--target", tiny_target_dir, "--kind", "mtp", "--depth", "2", *BASE]
    ref = tmp_path / "mtp_kd"
    assert run(*common, "--output", ref) == 0
    out = tmp_path / "mtp_ref"
    assert (
        run(*common, "--method", "adaspec", "--ref", ref, "--cold-start", "ref", "--lr", "1e-12", "--output", out) == 0
    )
    assert max_diff(out, ref) < 1e-6 and summary(out)["cold_start"] == "ref"
    warm = tmp_path / "mtp_warmup"
    assert run(*common, "--method", "adaspec", "--ref", ref, "--cold-start", "warmup", "--output", warm) == 0
    kept = [v for _, v in scalars(warm, "train/kept_depth1")]
    assert kept[:2] == [1.0, 1.0] and all(0.3 < v < 0.5 for v in kept[2:]), kept
    assert summary(warm)["cold_start"] == "warmup"


WORDS = "zero one two three four five six seven eight nine".split()


def _sums(rng: random.Random, n: int) -> str:
    """`n` chats with a system turn: a sum asked in words, answered with a template around the digits."""
    rows = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You are a patient tutor."},
                    {"role": "user", "content": f"What is {WORDS[a]} plus {WORDS[b]}?"},
                    {"role": "assistant", "content": f"{WORDS[a]} plus {WORDS[b]} is {a + b}. Well done for asking!"},
                ]
            }
        )
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_adaspec_from_a_fresh_draft_reaches_kd_by_default(tmp_path):
    """Issue 30 at tiny scale: on a short budget (KD still far from converged, as in the issue), AdaSPEC from the
    same fresh draft trained on 40% of the tokens from the first step reaches about two thirds of KD's greedy α
    on held-out chats; the default cold start must reach 0.9x at the same optimizer steps."""
    chats = tmp_path / "chats"
    chats.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 256), ("validation", 64)):
        (chats / f"{split}.jsonl").write_text(_sums(rng, n))
    tok = tmp_path / "tokenizer"
    texts = (chats / "train.jsonl").read_text().splitlines()
    data.train_tokenizer(texts, 320, "chatml").save_pretrained(tok)
    common = [
        "--data",
        chats,
        "--batch-size",
        "8",
        "--max-length",
        "128",
        "--val-examples",
        "64",
        "--val-every",
        "0",
        "--no-progress",
    ]
    target = tmp_path / "target"
    assert (
        run(
            "train-target",
            *common,
            "--tokenizer",
            tok,
            "--preset",
            "tiny-llama",
            "--max-steps",
            "100",
            "--lr",
            "1e-2",
            "--output",
            target,
        )
        == 0
    )
    draft = [
        "distill",
        *common,
        "--target",
        target,
        "--preset",
        "tiny-llama",
        "--max-steps",
        "40",
        "--lr",
        "3e-4",
        "--val-max-new-tokens",
        "24",
    ]
    kd, default, off = tmp_path / "kd", tmp_path / "adaspec", tmp_path / "adaspec_off"
    assert run(*draft, "--method", "kd", "--output", kd) == 0
    assert run(*draft, "--method", "adaspec", "--ref", kd, "--output", default) == 0
    assert run(*draft, "--method", "adaspec", "--ref", kd, "--cold-start", "off", "--output", off) == 0
    alpha = {
        name: summary(out)["best_greedy_agreement"] for name, out in (("kd", kd), ("default", default), ("off", off))
    }
    assert summary(default)["cold_start"] == cold_start.DEFAULT
    assert alpha["default"] >= 0.9 * alpha["kd"], alpha
    assert alpha["off"] < 0.9 * alpha["kd"], alpha  # the old behaviour fails this test
