"""`--config` for every command (flags override it, unknown keys refused) and resolved options written back."""

import json

import pytest
from helpers import run

from adaspec import cli, config
from adaspec.errors import AdaspecError

FAST = ["--max-length", "64", "--val-examples", "4", "--no-progress"]


def test_config_sets_options_and_flags_override(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(
        json.dumps({"target": "t", "draft-init": "d", "output": "o", "max_steps": 7, "lr": 0.01, "method": "kd"})
    )
    command, opts = cli.parse_options(["distill", "--config", str(path), "--lr", "0.5"])
    assert command == "distill" and opts.max_steps == 7 and opts.lr == 0.5 and opts.target == "t"
    assert opts.draft_init == "d" and opts.method == "kd"


def test_yaml_config(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "run.yaml"
    path.write_text("target: t\ndraft: [a, b]\ngamma: 3\ntemperature: 0.5\n")
    _, opts = cli.parse_options(["eval", "--config", str(path)])
    assert opts.draft == ["a", "b"] and opts.gamma == 3 and opts.temperature == 0.5


@pytest.mark.parametrize(
    "content, message",
    [
        ({"target": "t", "draft": ["a"], "gama": 3}, "unknown option for adaspec eval: gama"),
        ({"command": "distill", "target": "t"}, "is a config for `adaspec distill`, not `adaspec eval`"),
        ([1, 2], "a config must map option names to values"),
        # values of another type are refused, never coerced ("false" would be read as true)
        ({"target": "t", "draft": ["a"], "cache": "false"}, 'option cache must be true or false, got "false"'),
        ({"target": "t", "draft": ["a"], "gamma": 2.7}, "option gamma must be an integer, got 2.7"),
        ({"target": "t", "draft": ["a"], "gamma": [1, 2]}, "option gamma must be an integer, got [1, 2]"),
        ({"target": None, "draft": ["a"]}, "option target must be a string, got null"),
        ({"target": 123, "draft": ["a"]}, "option target must be a string, got 123"),
        ({"target": "t", "draft": "a"}, 'option draft must be a list of a string or null, got "a"'),
        (
            {"target": "t", "draft": ["a"], "decode_path": "fast"},
            "option decode_path must be one of 'auto', 'lean', 'hf', got \"fast\"",
        ),
        ({"target": "t", "draft": ["a"], "temperature": True}, "option temperature must be a number, got true"),
    ],
)
def test_bad_configs_are_refused_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    assert cli.main(["eval", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert cli.main(["eval", "--config", str(tmp_path / "missing.json")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_resolved_options_rerun_to_the_same_options(tmp_path, tiny_target_dir):
    out = tmp_path / "ft"
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"model": str(tiny_target_dir), "limit": 16, "batch_size": 8, "max_steps": 1}))
    argv = ["train-target", "--config", str(path), "--output", str(out), *FAST]
    assert run(*argv) == 0
    written = json.loads((out / config.RESOLVED_NAME).read_text())
    _, first = cli.parse_options(argv)
    assert written == config.resolved_options("train-target", first)
    assert written["command"] == "train-target" and written["max_steps"] == 1 and written["max_length"] == 64
    _, again = cli.parse_options(["train-target", "--config", str(out / config.RESOLVED_NAME)])
    assert again == first


def test_a_config_with_an_option_s_old_name_still_sets_it_with_a_notice(tmp_path, capsys):
    path = tmp_path / "resolved_options.json"  # as a train-head run wrote it before --loss/--init were renamed
    path.write_text(
        json.dumps({"command": "train-head", "target": "t", "output": "o", "kind": "mtp", "loss": "ce", "init": None})
    )
    _, opts = cli.parse_options(["train-head", "--config", str(path)])
    assert opts.divergence == "ce" and opts.draft_init is None
    err = capsys.readouterr().err
    assert "option loss is now divergence" in err and "option init is now draft_init" in err
    path.write_text(json.dumps({"target": "t", "output": "o", "loss": "ce", "divergence": "fkl"}))
    with pytest.raises(AdaspecError, match="option loss is the old name of divergence; give only divergence"):
        config.load_config(path, "train-head", cli.options_class("train-head"))
