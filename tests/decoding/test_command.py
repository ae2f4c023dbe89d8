"""Smoke test of `adaspec generate` on tiny saved models with a word-level tokenizer."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from adaspec import AdaspecError
from adaspec.cli import main
from adaspec.models import build_model, save_model
from adaspec.recipes.generate import GenerateOptions

torch.set_num_threads(1)

WORDS = ["<eos>", "<unk>"] + [f"w{i}" for i in range(46)]


def word_tokenizer(words=WORDS) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = word_tokenizer()
    target = build_model("tiny-neox", len(WORDS), seed=1)
    draft = copy.deepcopy(target)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * 0.1 * p.abs().mean())
    save_model(target, root / "target", tok)
    save_model(draft, root / "draft", tok)
    other = build_model("tiny-neox", len(WORDS) + 3, seed=2)
    save_model(other, root / "other", word_tokenizer(WORDS + ["a", "b", "c"]))
    return root


def test_generate_streams_text_and_prints_stats(model_dirs, capsys):
    code = main(
        [
            "generate",
            "--target",
            str(model_dirs / "target"),
            "--draft",
            str(model_dirs / "draft"),
            "--prompt",
            "w1 w2 w3",
            "--gamma",
            "3",
            "--max-new-tokens",
            "12",
            "--no-stop-at-eos",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    target = build_model("tiny-neox", len(WORDS), seed=1)
    ids = torch.tensor([[WORDS.index(w) for w in ("w1", "w2", "w3")]])
    expected = target.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12, eos_token_id=None, pad_token_id=0
    )[0]
    assert len(expected) == 3 + 12
    # the prompt, then the streamed continuation, on one line (special tokens are not printed)
    assert out.splitlines()[0] == " ".join(WORDS[t] for t in expected.tolist() if t > 1)
    assert "alpha drafted (accepted/drafted)" in out and "tokens/s" in out


def test_generate_json_matches_library_greedy(model_dirs, capsys):
    code = main(
        [
            "generate",
            "--target",
            str(model_dirs / "target"),
            "--draft",
            str(model_dirs / "draft"),
            "--prompt",
            "w5 w6",
            "--max-new-tokens",
            "10",
            "--adaptive-gamma",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    # a confidence threshold stops chains early and changes nothing in the output
    assert (
        main(
            [
                "generate",
                "--target",
                str(model_dirs / "target"),
                "--draft",
                str(model_dirs / "draft"),
                "--prompt",
                "w5 w6",
                "--max-new-tokens",
                "10",
                "--draft-confidence",
                "0.9",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["tokens"] == result["tokens"]
    target = build_model("tiny-neox", len(WORDS), seed=1)
    ids = torch.tensor([[WORDS.index("w5"), WORDS.index("w6")]])
    expected = target.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=10, eos_token_id=0, pad_token_id=0
    )[0, 2:].tolist()
    assert result["tokens"] == expected
    assert result["text"] == " ".join(WORDS[t] for t in expected if t > 1)  # <eos>, <unk> are special
    stats = result["stats"]
    assert stats["emitted"] == len(expected) and 0 <= stats["alpha_drafted"] <= 1 and stats["tau"] >= 1


def test_generate_sampling_with_seed_is_reproducible(model_dirs, capsys):
    args = [
        "generate",
        "--target",
        str(model_dirs / "target"),
        "--draft",
        str(model_dirs / "draft"),
        "--prompt",
        "w7",
        "--temperature",
        "1.0",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--json",
        "--max-new-tokens",
        "8",
    ]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)["tokens"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == first


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--gamma", "0"], "--gamma must be in 1..64"),
        (["--temperature", "-1"], "temperature must be"),
        (["--top-p", "0"], "top_p must be in"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--draft-confidence", "1.5"], "--draft-confidence must be in [0, 1]"),
    ],
)
def test_generate_rejects_bad_options(model_dirs, capsys, flags, message):
    code = main(
        ["generate", "--target", str(model_dirs / "target"), "--draft", str(model_dirs / "draft"), "--prompt", "w1"]
        + flags
    )
    assert code == 2
    assert message in capsys.readouterr().err


def test_generate_rejects_mismatched_vocabularies(model_dirs, capsys):
    code = main(
        ["generate", "--target", str(model_dirs / "target"), "--draft", str(model_dirs / "other"), "--prompt", "w1"]
    )
    assert code == 2
    assert "different vocabularies" in capsys.readouterr().err


def test_options_check_ranges_from_python():
    with pytest.raises(AdaspecError, match="--gamma-max"):
        GenerateOptions(target="t", draft="d", prompt="p", gamma=6, gamma_max=4, adaptive_gamma=True)
    with pytest.raises(AdaspecError, match="--prompt is empty"):
        GenerateOptions(target="t", draft="d", prompt="")


def test_generate_with_a_head_drafter_gives_the_target_greedy_text(model_dirs, capsys, tmp_path):
    from adaspec.drafters.mtp.export import save_mtp
    from adaspec.drafters.mtp.model import build_mtp
    from adaspec.models import load_model

    target = load_model(model_dirs / "target")
    save_mtp(build_mtp(target, depth=2), tmp_path / "mtp")
    common = [
        "generate",
        "--target",
        str(model_dirs / "target"),
        "--prompt",
        "w1 w2 w3",
        "--gamma",
        "2",
        "--max-new-tokens",
        "10",
        "--no-stop-at-eos",
        "--json",
    ]
    assert main([*common, "--draft", str(model_dirs / "draft")]) == 0
    with_draft = json.loads(capsys.readouterr().out)
    assert main([*common, "--drafter", "mtp", "--head", str(tmp_path / "mtp"), "--decode-path", "hf"]) == 0
    with_head = json.loads(capsys.readouterr().out)
    assert with_head["tokens"] == with_draft["tokens"]
    for bad in (["--drafter", "mtp"], ["--drafter", "mtp", "--head", str(tmp_path), "--draft", "x"]):
        assert main(["generate", "--target", str(model_dirs / "target"), "--prompt", "w1", *bad]) == 2
    assert "needs --head DIR" in capsys.readouterr().err


def test_context_length_error_is_printed_alone(model_dirs, capsys):
    assert (
        main(
            [
                "generate",
                "--target",
                str(model_dirs / "target"),
                "--draft",
                str(model_dirs / "draft"),
                "--prompt",
                " ".join(["w1"] * 300),
                "--max-new-tokens",
                "8",
            ]
        )
        == 2
    )
    out, err = capsys.readouterr()
    assert out == ""  # the prompt is not echoed before the error
    assert len(err.strip().splitlines()) == 1
    assert "exceeds the target model's context of 256 positions" in err


def test_generate_streams_the_prompt_even_without_new_text(model_dirs, capsys):
    assert (
        main(
            [
                "generate",
                "--target",
                str(model_dirs / "target"),
                "--draft",
                str(model_dirs / "draft"),
                "--prompt",
                "w1 w2",
                "--max-new-tokens",
                "1",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("w1 w2")


def test_generate_with_trees_gives_the_target_greedy_text_for_every_drafter(model_dirs, capsys, tmp_path):
    from adaspec.drafters.eagle.model import EagleHead
    from adaspec.drafters.medusa.export import save_medusa
    from adaspec.drafters.medusa.model import build_medusa
    from adaspec.drafters.mtp.export import save_mtp
    from adaspec.drafters.mtp.model import build_mtp
    from adaspec.models import load_model

    target = load_model(model_dirs / "target")
    save_mtp(build_mtp(target, depth=2), tmp_path / "mtp")
    save_medusa(build_medusa(target, heads=2), tmp_path / "medusa")
    EagleHead.from_target(target).save_pretrained(tmp_path / "eagle")
    common = [
        "generate",
        "--target",
        str(model_dirs / "target"),
        "--prompt",
        "w1 w2 w3",
        "--max-new-tokens",
        "10",
        "--no-stop-at-eos",
        "--json",
    ]
    assert main([*common, "--draft", str(model_dirs / "draft")]) == 0
    chain = json.loads(capsys.readouterr().out)["tokens"]
    runs = [
        ["--draft", str(model_dirs / "draft"), "--tree", "3,3,8"],
        ["--draft", str(model_dirs / "draft"), "--tree", "adaptive:8,3,2"],
        ["--drafter", "eagle", "--head", str(tmp_path / "eagle"), "--tree", "2,3,5"],
        ["--drafter", "mtp", "--head", str(tmp_path / "mtp"), "--tree", "[[0],[1],[0,0]]"],
        ["--drafter", "medusa", "--head", str(tmp_path / "medusa"), "--tree", "cartesian:3,2", "--decode-path", "hf"],
    ]
    for flags in runs:
        assert main([*common, *flags]) == 0, flags
        result = json.loads(capsys.readouterr().out)
        assert result["tokens"] == chain, flags
        assert result["stats"]["tree_steps"] == result["stats"]["steps"]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("3,4", "needs 3 integers"),
        ("3,x,2", "comma-separated integers"),
        ("0,3,4", "top_k must be an integer >= 1"),
        ("[[0],[0,0,0]]", "no parent path"),
        ("[[0], 1]", "JSON list of rank lists"),
        ("[[0]", "JSON list of rank lists"),
        ("cartesian:2,0", "widths must be integers >= 1"),
        ("adaptive:8,3", "needs 3 integers"),
        ("bushy", "--tree must be"),
    ],
)
def test_generate_rejects_bad_tree_specs_in_one_line(model_dirs, capsys, spec, message):
    code = main(
        [
            "generate",
            "--target",
            str(model_dirs / "target"),
            "--draft",
            str(model_dirs / "draft"),
            "--prompt",
            "w1",
            "--tree",
            spec,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_tree_options_conflict_with_adaptive_gamma_and_deep_head_trees(model_dirs, capsys, tmp_path):
    with pytest.raises(AdaspecError, match="with --tree use --tree adaptive"):
        GenerateOptions(target="t", draft="d", prompt="p", tree="2,2,3", adaptive_gamma=True)
    from adaspec.drafters.medusa.export import save_medusa
    from adaspec.drafters.medusa.model import build_medusa
    from adaspec.drafters.target_record import write_record
    from adaspec.models import load_model, load_tokenizer

    target = load_model(model_dirs / "target")
    save_medusa(build_medusa(target, heads=2), tmp_path / "medusa")
    write_record(tmp_path / "medusa", target, load_tokenizer(model_dirs / "target"))  # as train-head does
    assert (
        main(
            [
                "generate",
                "--target",
                str(model_dirs / "target"),
                "--prompt",
                "w1 w2",
                "--drafter",
                "medusa",
                "--head",
                str(tmp_path / "medusa"),
                "--tree",
                "2,3,4",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "at most 2 tokens deep; got a tree of depth 3" in err and len(err.splitlines()) == 1
