"""The forward-cost benchmark's logic runs and reports what it promises (no timing assertions)."""

from __future__ import annotations

import pytest
import torch

from adaspec.evaluation.forward_cost import CompiledNeoxStep, format_table, measure_forward_cost
from adaspec.models import build_model
from adaspec.models.lean import LeanLM


def test_measure_forward_cost_reports_every_method_and_size():
    results = measure_forward_cost(["tiny-neox"], vocab=64, prefix=8, sizes=(1, 3), repeats=2, warmup=1)
    r = results["tiny-neox"]
    assert set(r["ms"]) == {"hf", "lean"} and set(r["ms"]["lean"]) == {"1", "3"}
    assert all(v > 0 for per in r["ms"].values() for v in per.values())
    assert r["verify_cost_vs_one"]["hf"]["1"] == 1.0 and "lean" in r["vs_hf"] and r["params"] > 0
    assert "tiny-neox" in format_table(results)


@pytest.mark.slow  # torch.compile takes ~10 s per shape
def test_compiled_step_matches_the_lean_forward():
    model = build_model("tiny-neox", 64, seed=1)
    ids = torch.randint(0, 64, (20,), generator=torch.Generator().manual_seed(0))
    ref, _ = LeanLM(model, 64, "t").forward(ids, keep=4)
    lean = LeanLM(model, 64, "t", max_length=32)
    lean.forward(ids[:16])
    got, _ = CompiledNeoxStep(lean).forward(ids[16:], keep=4)
    assert float((got - ref).abs().max()) < 1e-4
