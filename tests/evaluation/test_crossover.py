"""The crossover prediction: the formula, the log-size interpolation, a tiny sweep, and the calibration row."""

from __future__ import annotations

import math

import pytest

from adaspec import AdaspecError
from adaspec.evaluation.crossover import (
    calibration,
    crossover_params,
    format_sweep,
    predicted_speedup,
    step_overhead,
    sweep,
)


def test_predicted_speedup_is_tau_times_t1_over_step_cost():
    assert predicted_speedup(3.0, 3, t1=1.0, tv=1.5, d=0.5) == pytest.approx(1.0)
    assert predicted_speedup(2.0, 1, t1=2.0, tv=2.0, d=0.0) == pytest.approx(2.0)
    assert predicted_speedup(3.0, 3, t1=1.0, tv=1.5, d=0.5, overhead=1.0) == pytest.approx(0.75)
    with pytest.raises(AdaspecError, match="need tau"):
        predicted_speedup(0.0, 3, 1.0, 1.0, 0.1)


def test_step_overhead_inverts_the_prediction():
    o = step_overhead(2.5, 3, t1=1.0, tv=1.4, d=0.2, measured_speedup=0.8)
    assert predicted_speedup(2.5, 3, 1.0, 1.4, 0.2, o) == pytest.approx(0.8)
    assert step_overhead(2.5, 3, 1.0, 1.4, 0.2, measured_speedup=5.0) == 0.0


def test_crossover_interpolates_in_log_size():
    assert crossover_params([1e6, 1e8], [0.5, 1.5]) == pytest.approx(1e7)
    assert crossover_params([4e6, 1e6], [1.0, 0.5]) == pytest.approx(4e6)  # unsorted input, exact hit
    assert crossover_params([1e6, 1e7], [0.5, 0.9]) is None
    assert crossover_params([1e6, 1e7], [1.1, 1.3]) is None
    with pytest.raises(AdaspecError):
        crossover_params([1], [1.0, 2.0])


def test_the_table_says_where_the_crossover_is_when_no_pair_of_sizes_brackets_it():
    def line(speedups: list[float], crossing: float | None) -> str:
        rows = [
            {
                "target": f"t{i}",
                "params": 10 ** (6 + i),
                "t1_ms": 1.0,
                "verify_ms": 1.2,
                "verify_cost_vs_one": 1.2,
                "c": 0.1,
                "forwards_only_speedup": s,
                "predicted_speedup": s,
            }
            for i, s in enumerate(speedups)
        ]
        result = {
            "draft": "d",
            "draft_params": 1e5,
            "draft_ms": 0.1,
            "tau": 2.0,
            "gamma": 3,
            "pair_target": "t0",
            "measured_speedup": 1.0,
            "step_overhead_ms": 0.0,
            "rows": rows,
            "crossover_params": crossing,
        }
        return format_sweep(result).splitlines()[-1]

    assert line([0.8, 1.2], 3e6) == "crossover: 3.0M parameters"
    assert "at or below the smallest target swept" in line([1.01, 1.2], None)
    assert "none in the sweep" in line([0.8, 0.9], None)


def test_sweep_measures_every_target_and_the_draft():
    out = sweep(
        ["tiny-neox", "tiny-llama"],
        "tiny-gpt2",
        tau=2.0,
        gamma=2,
        pair_target="tiny-neox",
        measured_speedup=0.01,
        vocab=64,
        prefix=8,
        repeats=2,
    )
    assert [r["target"] for r in out["rows"]] == ["tiny-neox", "tiny-llama"]
    for r in out["rows"]:
        assert r["t1_ms"] > 0 and r["verify_ms"] > 0
        assert r["predicted_speedup"] == pytest.approx(
            predicted_speedup(2.0, 2, r["t1_ms"], r["verify_ms"], out["draft_ms"], out["step_overhead_ms"])
        )
    # slow enough that the solved per-step work is positive: the pair's own prediction is its measurement
    assert out["rows"][0]["predicted_speedup"] == pytest.approx(0.01)
    with pytest.raises(AdaspecError, match="must be one of the swept"):
        sweep(["tiny-neox"], "tiny-gpt2", 2.0, 2, pair_target="tiny-llama", measured_speedup=0.5, vocab=64)


def test_calibration_uses_the_c_of_a_verification_forward():
    measured = {
        "pair": "p",
        "target_params": 10,
        "gamma": 3,
        "verify_cost_ratio": 1.5,
        "rows": [
            {"method": "sd_x", "prompts": "gsm8k:test", "temperature": 0.0, "tau": 2.5, "c": 0.2, "vs_target": 0.9}
        ],
    }
    c = calibration(measured, "sd_x")
    assert c["formula_speedup"] == pytest.approx(2.5 / (1.5 * (3 * 0.2 + 1)))
    assert math.isclose(c["measured_over_formula"], 0.9 / c["formula_speedup"])
    with pytest.raises(AdaspecError, match="no sd_y row"):
        calibration(measured, "sd_y")
