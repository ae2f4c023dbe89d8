"""`adaspec build` end to end at tiny scale on a chat file with system turns, its resume, and its refusals."""

import json
import shlex
from pathlib import Path

import pytest
from helpers import cli_error, run, write_chats


def _args(target: Path, chats: Path, out: Path, *more) -> list:
    return [
        "build",
        "--target",
        target,
        "--data",
        chats,
        "--output",
        out,
        "--max-steps",
        "3",
        "--batch-size",
        "8",
        "--max-length",
        "128",
        "--gammas",
        "1",
        "2",
        "--test-examples",
        "6",
        "--val-examples",
        "4",
        "--max-new-tokens",
        "12",
        "--engine",
        "adaspec",
        "--no-progress",
        *more,
    ]


def _mtimes(out: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in (out / "runs").glob("*/train_summary.json")}


def test_build_trains_measures_exports_and_reports(tmp_path, chat_target, capsys):
    chats, out = write_chats(tmp_path / "chats.jsonl", 60), tmp_path / "build"
    assert run(*_args(chat_target, chats, out)) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    # every servable family on a 2-layer Llama target (EAGLE-1: too shallow for three EAGLE-3 layers), KD
    # and AdaSPEC each, measured in adaspec's engine; MTP left out with vLLM's reason
    assert {(r["drafter"], r["method"]) for r in result["rows"]} == {
        (f, m) for f in ("lm", "eagle", "medusa") for m in ("kd", "adaspec")
    }
    assert "mtp" in result["left_out"]
    assert all(r["engine"] == "adaspec" and r["steps"] == 3 and r["init"] == "fresh" for r in result["rows"])
    assert (
        json.loads((out / "runs" / "eagle_kd" / "config.json").read_text())["adaspec_eagle_head"]["variant"] == "eagle1"
    )
    assert {r["name"] for r in result["rows"]} <= set(result["speed_by_gamma"])
    assert all(set(by_gamma) == {"1", "2"} for by_gamma in result["speed_by_gamma"].values())
    assert (out / "speed_vs_gamma.png").stat().st_size > 0
    # the held-out split is disjoint from training
    train = (out / "data" / "train.jsonl").read_text().splitlines()
    test = (out / "data" / "test.jsonl").read_text().splitlines()
    assert len(test) == 6 and not set(test) & set(train)
    # α of the best drafter is what `adaspec eval` measures for it on the same prompts
    best = result["best"]
    assert "best:" in printed and best["name"] in printed
    eval_json = tmp_path / "eval.json"
    words = shlex.split(best["eval_command"])[2:]
    assert run("eval", *words, "--json", eval_json) == 0
    measured = json.loads(eval_json.read_text())["drafts"]
    assert list(measured.values())[0]["alpha"] == pytest.approx(best["alpha"], abs=1e-12)
    # the winner exported for vLLM and the report ending with the commands that serve it
    assert any((out / "export" / "vllm").iterdir())
    report = (out / "report.md").read_text()
    assert report.index("## Serve it") > report.index("| drafter |")
    assert result["serve"]["vllm"].startswith(f"vllm serve {chat_target} --speculative-config")
    assert f"--speculative-draft-model-path {out / 'export'}" in (
        result["serve"]["sglang"] or f"--speculative-draft-model-path {out / 'export'}"
    )
    # resumed with the same options: nothing is trained or measured again
    before = _mtimes(out)
    assert run(*_args(chat_target, chats, out)) == 0
    assert _mtimes(out) == before
    assert json.loads((out / "results.json").read_text())["rows"] == result["rows"]
    # fewer families: the same runs, reported alone, nothing retrained
    assert run(*_args(chat_target, chats, out, "--drafters", "lm")) == 0
    assert _mtimes(out) == before
    assert {r["drafter"] for r in json.loads((out / "results.json").read_text())["rows"]} == {"lm"}
    capsys.readouterr()
    # another build in the same folder is refused, and nothing of the first is lost
    err = cli_error(capsys, *_args(chat_target, chats, out, "--lr", "0.01"))
    assert "holds another build" in err and "lr" in err
    assert _mtimes(out) == before


def test_build_trains_the_parallel_dflash_drafter_when_named(tmp_path, chat_target):
    out = tmp_path / "build"
    assert run(*_args(chat_target, write_chats(tmp_path / "chats.jsonl", 40), out, "--drafters", "dflash")) == 0
    result = json.loads((out / "results.json").read_text())
    assert {(r["drafter"], r["method"]) for r in result["rows"]} == {("dflash", "kd"), ("dflash", "adaspec")}
    # a block of the largest γ + 1, exported in vLLM's DFlash layout
    assert (
        json.loads((out / "runs" / "dflash_kd" / "config.json").read_text())["adaspec_dflash_head"]["block_size"] == 3
    )
    assert json.loads((out / "export" / "vllm" / "config.json").read_text())["architectures"] == ["DFlashDraftModel"]
    assert '"method": "dflash"' in result["serve"]["vllm"] and result["serve"]["sglang"] is None


def test_build_refuses_bad_input_before_training(tmp_path, chat_target, tiny_target_dir, capsys):
    chats = write_chats(tmp_path / "chats.jsonl", 40)
    # a family vLLM cannot serve: named, with the families it can
    err = cli_error(capsys, *_args(chat_target, chats, tmp_path / "a", "--drafters", "mtp"))
    assert "cannot serve mtp" in err and "lm, eagle, medusa" in err
    # chats but a tokenizer without a template (the tiny NeoX target has none)
    err = cli_error(capsys, *_args(tiny_target_dir, chats, tmp_path / "b"))
    assert "--chat-template" in err
    # no usable record: chats without an assistant turn
    err = cli_error(
        capsys, *_args(chat_target, write_chats(tmp_path / "none.jsonl", 5, assistant=False), tmp_path / "c")
    )
    assert "no usable record" in err
    # too few records for one training batch after the held-out splits
    err = cli_error(capsys, *_args(chat_target, write_chats(tmp_path / "few.jsonl", 12), tmp_path / "d"))
    assert "fewer than one batch" in err
    # a time budget that cannot hold one step
    err = cli_error(capsys, *_args(chat_target, chats, tmp_path / "e", "--max-minutes", "1e-7"))
    assert "cannot fit one training step" in err
    # a folder with other files in it
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "notes.txt").write_text("mine")
    err = cli_error(capsys, *_args(chat_target, chats, tmp_path / "f"))
    assert "holds no build" in err and (tmp_path / "f" / "notes.txt").read_text() == "mine"
    # no --data at all
    err = cli_error(capsys, "build", "--target", chat_target, "--output", tmp_path / "g")
    assert "needs --data" in err
    for name in "abcdeg":  # refused before any run folder was made
        assert not (tmp_path / name / "runs").exists()


def test_max_minutes_cuts_the_run_to_the_steps_that_fit(tmp_path, tiny_target_dir, tiny_draft_dir):
    out = tmp_path / "kd"
    assert (
        run(
            "distill",
            "--target",
            tiny_target_dir,
            "--draft-init",
            tiny_draft_dir,
            "--task",
            "gsm8k",
            "--limit",
            "64",
            "--batch-size",
            "4",
            "--max-length",
            "64",
            "--max-steps",
            "500",
            "--max-minutes",
            "0.0005",
            "--val-every",
            "0",
            "--val-examples",
            "2",
            "--val-max-new-tokens",
            "2",
            "--no-progress",
            "--output",
            out,
        )
        == 0
    )
    steps = json.loads((out / "train_summary.json").read_text())["steps"]
    assert 3 <= steps < 500
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["total"] == steps


def test_build_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        run("build", "--help")
    text = capsys.readouterr().out
    for flag in (
        "--target",
        "--data",
        "--drafters",
        "--draft-init",
        "--max-minutes",
        "--gammas",
        "--engine",
        "--chat-template",
        "--test-examples",
    ):
        assert flag in text
    assert "--task" not in text
