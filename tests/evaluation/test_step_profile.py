"""The step profile on tiny models: its parts add up to the loop's time and the command writes its JSON."""

from __future__ import annotations

import json

import pytest

from adaspec.core.metrics import SpecStats
from adaspec.evaluation.step_profile import BASELINE, PARTS, step_parts
from benchmarks.step_profile import main


def test_parts_are_the_loop_time_per_step():
    stats = SpecStats(steps=4, decode_time_s=0.010, draft_time_s=0.004, target_time_s=0.003, verify_time_s=0.001)
    parts = step_parts(stats)
    assert set(parts) == set(PARTS)
    assert parts["draft"] == pytest.approx(1.0) and parts["other"] == pytest.approx(0.5)
    assert sum(parts.values()) == pytest.approx(1e3 * stats.decode_time_s / stats.steps)


def test_command_writes_the_split(tiny_target_dir, tiny_draft_dir, tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert (
        main(
            [
                "--target",
                str(tiny_target_dir),
                "--draft",
                f"d={tiny_draft_dir}",
                "--n-prompts",
                "1",
                "--max-new-tokens",
                "6",
                "--gamma",
                "2",
                "--repeats",
                "1",
                "--context",
                "128",
                "--confidences",
                "0",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    d = result["methods"]["d"]
    assert sum(d[f"{k}_ms"] for k in PARTS) == pytest.approx(d["step_ms"], rel=1e-6)
    assert d["tau"] >= 1 and result["methods"][BASELINE]["tokens_per_s"] > 0
    assert result["methods"]["d@0.5"]["mean_gamma"] <= d["mean_gamma"]  # the threshold only shortens chains
    assert {"target_1", "target_3", "d_1"} == set(result["forward_ms"])
    assert "| d |" in capsys.readouterr().out
