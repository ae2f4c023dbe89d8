"""The drafters benchmark's logic on tiny models: every method runs, rows carry the agreed schema."""

from __future__ import annotations

import torch

from adaspec.evaluation.drafters import BASELINE, benchmark, format_rows
from adaspec.models import load_model, load_tokenizer


def test_benchmark_rows_schema_and_lossless_greedy(tiny_target_dir, tiny_draft_dir):
    target, draft = load_model(tiny_target_dir), load_model(tiny_draft_dir)
    tok = load_tokenizer(tiny_target_dir)
    result = benchmark(
        target,
        tok,
        {"draft": draft},
        ["gsm8k"],
        n_prompts=1,
        max_new_tokens=6,
        gamma=2,
        temperatures=[0.0, 1.0],
        repeats=1,
        context=128,
    )
    methods = {(r["temperature"], r["method"]) for r in result["rows"]}
    assert {
        (0.0, BASELINE),
        (0.0, "hf_generate"),
        (0.0, "sd_draft"),
        (0.0, "hf_assisted"),
        (0.0, "hf_prompt_lookup"),
        (1.0, "sd_draft"),
    } <= methods
    for r in result["rows"]:
        assert {"method", "tokens_per_s", "vs_target", "alpha", "tau"} <= set(r)
        assert r["tokens_per_s"] > 0
        if r["temperature"] == 0:
            assert r["outputs_differing"] == 0, r  # greedy: every method reproduces the target alone
    sd = next(r for r in result["rows"] if r["method"] == "sd_draft" and r["temperature"] == 0)
    assert 0 <= sd["alpha"] <= 1 and sd["tau"] >= 1 and sd["predicted_speedup"] > 0
    assert len(sd["position_acceptance"]) == 2  # acceptance at draft positions 1 and 2 (γ = 2)
    assert result["target_params"] > 0 and result["verify_cost_ratio"] > 0
    assert "sd_draft" in format_rows(result)
    assert torch.get_num_threads() >= 1
