"""`adaspec eval`'s outputs: --json written atomically, never over a model folder, saying when it replaced a file."""

from __future__ import annotations

import json

from helpers import cli_error, run

FAST = ["--n-prompts", "1", "--max-new-tokens", "4", "--loss-examples", "2", "--gamma", "2"]


def test_json_replacing_a_file_says_so(capsys, tmp_path, tiny_target_dir, tiny_draft_dir):
    out = tmp_path / "eval.json"
    out.write_text("old")
    assert run("eval", "--target", tiny_target_dir, "--draft", tiny_draft_dir, *FAST, "--json", out) == 0
    assert "replacing the file that was there" in capsys.readouterr().err
    assert json.loads(out.read_text())["drafts"]
    assert not list(tmp_path.glob("eval.json.tmp*"))


def test_json_into_a_model_folder_or_onto_a_folder_is_refused(capsys, tmp_path, tiny_target_dir, tiny_draft_dir):
    before = sorted(p.name for p in tiny_target_dir.iterdir())
    err = cli_error(
        capsys,
        "eval",
        "--target",
        tiny_target_dir,
        "--draft",
        tiny_draft_dir,
        *FAST,
        "--json",
        tiny_target_dir / "eval.json",
    )
    assert "lies inside the target" in err
    err = cli_error(capsys, "eval", "--target", tiny_target_dir, "--draft", tiny_draft_dir, *FAST, "--json", tmp_path)
    assert "is a directory, not a file" in err
    assert sorted(p.name for p in tiny_target_dir.iterdir()) == before


def test_default_continuation_cache_is_the_users_not_the_models(
    capsys, tmp_path, monkeypatch, tiny_target_dir, tiny_draft_dir
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = sorted(p.name for p in tiny_target_dir.iterdir())
    assert run("eval", "--target", tiny_target_dir, "--draft", tiny_draft_dir, *FAST) == 0
    assert len(list((tmp_path / "xdg" / "adaspec" / "eval").glob("continuations-*.json"))) == 1
    assert sorted(p.name for p in tiny_target_dir.iterdir()) == before
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert run("eval", "--target", tiny_target_dir, "--draft", tiny_draft_dir, *FAST) == 0
    assert len(list((tmp_path / "home" / ".cache" / "adaspec" / "eval").glob("continuations-*.json"))) == 1
