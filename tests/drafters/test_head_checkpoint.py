"""Head checkpoints that are truncated, foreign or mis-shaped fail with one line, for every head kind."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaspec import AdaspecError
from adaspec.drafters.eagle.model import EagleConfig, EagleHead
from adaspec.drafters.medusa.export import load_medusa, save_medusa
from adaspec.drafters.medusa.model import build_medusa
from adaspec.drafters.mtp.export import load_mtp, save_mtp
from adaspec.drafters.mtp.model import build_mtp
from adaspec.models import build_model

V = 64


def _save(kind: str, path) -> None:
    target = build_model("tiny-llama", V, seed=1)
    if kind == "eagle":
        EagleHead.from_target(target, EagleConfig.for_target(target)).save_pretrained(path)
    elif kind == "mtp":
        save_mtp(build_mtp(target, depth=2, seed=3), path)
    else:
        save_medusa(build_medusa(target, heads=2), path)


LOAD = {"eagle": EagleHead.from_pretrained, "mtp": load_mtp, "medusa": load_medusa}


@pytest.mark.parametrize("kind", LOAD)
def test_missing_unexpected_and_misshaped_tensors_are_one_line(tmp_path, kind):
    _save(kind, tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(str(file))
    LOAD[kind](tmp_path)  # the intact checkpoint loads
    name = sorted(tensors)[0]

    save_file({k: v for k, v in tensors.items() if k != name}, str(file))
    with pytest.raises(AdaspecError, match=f"does not match its config: missing {name}"):
        LOAD[kind](tmp_path)

    save_file({**tensors, "stray.weight": torch.zeros(2)}, str(file))
    with pytest.raises(AdaspecError, match="unexpected stray.weight"):
        LOAD[kind](tmp_path)

    save_file({**tensors, name: torch.zeros(3, 1)}, str(file))
    with pytest.raises(AdaspecError, match=f"{name} has shape \\(3, 1\\)"):
        LOAD[kind](tmp_path)

    file.write_bytes(b"not safetensors")
    with pytest.raises(AdaspecError, match="could not read"):
        LOAD[kind](tmp_path)

    file.unlink()
    with pytest.raises(AdaspecError, match="has no model.safetensors"):
        LOAD[kind](tmp_path)


@pytest.mark.parametrize("kind", LOAD)
def test_config_without_the_heads_entry_is_refused(tmp_path, kind):
    _save(kind, tmp_path)
    (tmp_path / "config.json").write_text("[]")
    with pytest.raises(AdaspecError, match="is not an adaspec"):
        LOAD[kind](tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(AdaspecError, match="is not an adaspec"):
        LOAD[kind](tmp_path)
