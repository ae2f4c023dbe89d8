"""Every command's --help lists every option with help text; flags come from the options dataclasses, whose
modules import no torch or transformers; an option's old name still works, with a notice."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from helpers import REPO, options_from

from adaspec import cli


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_lists_every_flag_with_help_text(capsys, command):
    options = cli.options_class(command)
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


def test_building_every_parser_imports_no_torch_or_transformers():
    """`adaspec <command> --help` must answer at once: the options modules stay free of the heavy imports."""
    code = (
        "import sys\nfrom adaspec import cli\nfor c in cli.COMMANDS:\n    cli.build_parser(c)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'accelerate', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_renamed_option_keeps_its_old_flag_with_a_notice(capsys):
    base = ["train-head", "--target", "t", "--output", "o", "--kind", "mtp"]
    old = options_from([*base, "--loss", "ce", "--init", "i"])
    assert (old.divergence, old.draft_init) == ("ce", "i")
    assert old == options_from([*base, "--divergence", "ce", "--draft-init", "i"])
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "adaspec: warning: --loss is now --divergence; the old name goes in the next release",
        "adaspec: warning: --init is now --draft-init; the old name goes in the next release",
    ]
    with pytest.raises(SystemExit) as exc:
        cli.main(["train-head", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--divergence" in text and "--loss" not in text and "--init " not in text  # the old names unlisted
