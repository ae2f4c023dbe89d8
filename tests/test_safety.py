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


# ---- operating-system faults: one line naming the path and the cause, exit 2, nothing half-written left


def test_dangling_symlink_loop_and_unwritable_parent_as_output_are_one_line(tmp_path, monkeypatch):
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(AdaspecError, match="is a dangling symlink"):
        check_output(dangling, {})
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(AdaspecError, match="cannot be resolved|dangling"):
        check_output(loop, {})
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    with pytest.raises(AdaspecError, match=f"cannot be created: {tmp_path} is not writable"):
        check_output(tmp_path / "new", {})


def test_a_full_disk_while_writing_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from adaspec.io import atomic_write_json

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        atomic_write_json(tmp_path / "e.json", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_os_errors_of_a_command_are_one_line(tmp_path, capsys, tiny_target_dir, monkeypatch):
    import errno

    from helpers import run

    def full(path, obj, indent=1):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def last_error(*args) -> str:  # eval logs progress on stderr first; the error is its last, single line
        assert run(*args) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    eval_ = [
        "eval",
        "--target",
        tiny_target_dir,
        "--draft",
        tiny_target_dir,
        "--n-prompts",
        1,
        "--max-new-tokens",
        4,
        "--loss-examples",
        1,
    ]
    monkeypatch.setattr("adaspec.recipes.eval.atomic_write_json", full)
    err = last_error(*eval_, "--json", tmp_path / "e.json")
    assert err == f"adaspec eval: error: {tmp_path / 'e.json'}: No space left on device"
    assert not list(tmp_path.glob("e.json*"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    err = last_error(*eval_, "--cache-dir", a_file)
    assert err.startswith("adaspec eval: error: ") and str(a_file) in err


def test_a_run_refused_at_start_leaves_nothing_that_blocks_the_corrected_rerun(tmp_path, tiny_target_dir, capsys):
    from helpers import cli_error, run

    out = tmp_path / "d"
    common = [
        "distill",
        "--target",
        tiny_target_dir,
        "--output",
        out,
        "--max-steps",
        1,
        "--no-progress",
        "--val-examples",
        2,
        "--val-max-new-tokens",
        4,
        "--max-length",
        64,
        "--preset",
        "tiny-llama",
    ]
    err = cli_error(capsys, *common, "--limit", 2, "--batch-size", 8)
    assert "batch" in err or "examples" in err
    assert run(*common, "--limit", 16, "--batch-size", 8) == 0  # other settings, same folder: not refused
