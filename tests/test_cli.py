"""Every command's --help lists every option with help text; flags come from the options dataclasses."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from adaspec import cli


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_lists_every_flag_with_help_text(capsys, command):
    module, cls_name, _, _ = cli.COMMANDS[command]
    options = getattr(importlib.import_module(module), cls_name)
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(options):
        if f.metadata.get("cli") is False:  # a field the command takes no flag for (build's task)
            continue
        assert f.metadata.get("help", "").strip(), f"--{f.name} has no help text"
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        if f.type in (bool, "bool"):
            assert "--no-" + f.name.replace("_", "-") in text


def test_top_level_help_names_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert all(name in text for name in cli.COMMANDS)
