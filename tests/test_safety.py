"""Output safety: an output is never an input, a file, or a folder another live process writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from adaspec.errors import AdaspecError
from adaspec.safety import LOCK_NAME, check_output, output_lock


def test_output_that_is_contains_or_lies_inside_an_input_is_refused(tmp_path):
    model = tmp_path / "models" / "target"
    model.mkdir(parents=True)
    with pytest.raises(AdaspecError, match="is the target"):
        check_output(model, {"target": model})
    with pytest.raises(AdaspecError, match="contains the target"):
        check_output(tmp_path / "models", {"target": model})
    with pytest.raises(AdaspecError, match="lies inside the target"):
        check_output(model / "draft", {"target": model})
    link = tmp_path / "link"
    link.symlink_to(model)
    with pytest.raises(AdaspecError, match="is the target"):  # symlinks resolved
        check_output(link, {"target": model})
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    with pytest.raises(AdaspecError, match="is the --data"):
        check_output(data, {"--data": data}, flag="--json", kind="file")
    # siblings, hub ids and absent inputs are fine
    assert check_output(tmp_path / "models" / "draft", {"target": model, "ref": "org/model", "x": None})


def test_output_that_is_a_regular_file_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("keep me")
    with pytest.raises(AdaspecError, match="is an existing file, not a directory"):
        check_output(f, {})
    with pytest.raises(AdaspecError, match="is a directory, not a file"):
        check_output(tmp_path, {}, flag="--json", kind="file")
    assert f.read_text() == "keep me"


def test_lock_is_released_on_exit_and_on_error(tmp_path):
    with output_lock(tmp_path / "o"):
        owner = json.loads((tmp_path / "o" / LOCK_NAME).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    assert not (tmp_path / "o" / LOCK_NAME).exists()
    with pytest.raises(RuntimeError):
        with output_lock(tmp_path / "o"):
            raise RuntimeError("boom")
    assert not (tmp_path / "o" / LOCK_NAME).exists()


def test_live_second_writer_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname()}))
        with pytest.raises(AdaspecError, match=f"in use by process {holder.pid}"):
            with output_lock(tmp_path):
                pass
        assert (tmp_path / LOCK_NAME).exists()  # the owner's lock is left alone
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_is_taken_over_with_a_notice(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with output_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "stale lock" in capsys.readouterr().err
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_another_host_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(AdaspecError, match="on elsewhere"):
        with output_lock(tmp_path):
            pass


def test_export_and_train_head_never_write_over_their_inputs(capsys, tmp_path):
    from helpers import cli_error

    head = tmp_path / "head"
    head.mkdir()
    assert "is the --head" in cli_error(capsys, "export", "--head", head, "--output", head)
    assert "lies inside the target" in cli_error(capsys, "train-head", "--target", head, "--output", head / "x")
    assert list(head.iterdir()) == []
