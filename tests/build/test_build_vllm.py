"""`adaspec build --engine vllm`: the drafters measured in the real vLLM too, the winner chosen there.

Needs vLLM's environment (`make vllm`; `make test` builds it and sets ADASPEC_REQUIRE_VLLM=1, so CI runs it).
"""

import json
import os

import pytest
from helpers import run, write_chats

from adaspec.errors import AdaspecError
from adaspec.serving.vllm_engine import find_vllm_python

pytestmark = pytest.mark.vllm
ALPHA_TOL = 0.03  # as tests/serving/test_vllm_engine.py: float kernels of two engines may flip near-ties


def test_build_measures_in_vllm_and_picks_the_winner_there(tmp_path, chat_target):
    try:
        python = find_vllm_python()
    except AdaspecError as exc:
        if os.environ.get("ADASPEC_REQUIRE_VLLM") == "1":
            raise
        pytest.skip(str(exc))
    out = tmp_path / "build"
    assert (
        run(
            "build",
            "--target",
            chat_target,
            "--data",
            write_chats(tmp_path / "chats.jsonl", 60),
            "--output",
            out,
            "--drafters",
            "lm",
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
            "vllm",
            "--vllm-python",
            python,
            "--vllm-eager",
            "--no-progress",
        )
        == 0
    )
    result = json.loads((out / "results.json").read_text())
    served = [r for r in result["rows"] if r["engine"] == "vllm"]
    assert {r["method"] for r in served} == {"kd", "adaspec"}
    for row in served:
        # vLLM loaded the draft and its own counters give the α adaspec measures on vLLM's schedule
        assert row["loaded"] and row["speedup"] > 0
        assert row["alpha"] == pytest.approx(row["alpha_same_schedule"], abs=ALPHA_TOL)
    assert result["best"]["engine"] == "vllm"
    assert "vllm serve" in (out / "report.md").read_text()
