"""The tree benchmark's logic on tiny models: every drafter's chains, trees, adaptive and kept-rows methods
run, reproduce the target alone, and the summary and tables come from the rows."""

from __future__ import annotations

import json

import pytest

from adaspec.core.tree_shape import parse_tree_spec
from adaspec.decoding.lm import LMDrafter
from adaspec.drafters.eagle.drafter import EagleDrafter
from adaspec.drafters.eagle.model import EagleHead
from adaspec.drafters.medusa.model import MedusaDrafter, build_medusa
from adaspec.evaluation.trees import (
    BASELINE,
    benchmark,
    default_trees,
    format_rows,
    ideal_tree_over_chain,
    step_cost_at,
)
from adaspec.models import load_model, load_tokenizer, output_vocab_size
from benchmarks.tree import main


def test_benchmark_rows_summary_and_lossless_greedy(tiny_target_dir, tiny_draft_dir):
    target, draft = load_model(tiny_target_dir), load_model(tiny_draft_dir)
    tok = load_tokenizer(tiny_target_dir)
    vocab = output_vocab_size(target)
    head = EagleHead.from_target(target).eval()
    drafters = {
        "draft": LMDrafter(draft, vocab),
        "eagle": EagleDrafter(head),
        "medusa": MedusaDrafter(build_medusa(target, heads=2), target),
    }
    keep = {"draft": LMDrafter(draft, vocab, keep_tree_rows=True), "eagle": EagleDrafter(head, keep_tree_rows=True)}
    trees = {"draft": ["2,2,3", "adaptive:6,3,2"], "eagle": ["2,2,3"], "medusa": ["cartesian:2,2"]}
    assert all(parse_tree_spec(t).depth <= 2 for t in default_trees(drafters["medusa"]))  # within the heads' bound
    assert "4,6,20" in default_trees(drafters["draft"])
    result = benchmark(
        target,
        tok,
        drafters,
        keep,
        "gsm8k",
        n_prompts=1,
        max_new_tokens=6,
        chains=[2, 3],
        trees=trees,
        repeats=1,
        context=128,
    )
    kinds = {(r["drafter"], r["kind"]) for r in result["rows"]}
    assert {
        ("-", "target"),
        ("draft", "chain"),
        ("draft", "tree"),
        ("draft", "adaptive"),
        ("draft", "keep"),
        ("eagle", "keep"),
        ("medusa", "tree"),
    } <= kinds
    assert not any(r["drafter"] == "medusa" and r["kind"] == "chain" and r["spec"] == "3" for r in result["rows"])
    for r in result["rows"]:
        assert r["outputs_differing"] == 0, r  # greedy: every method reproduces the target alone
        assert r["tokens_per_s"] > 0
        if r["method"] != BASELINE:
            assert r["tau"] >= 1 and r["draft_ms_per_step"] >= 0
    assert set(result["summary"]) == {"draft", "eagle", "medusa"}
    s = result["summary"]["draft"]
    assert s["tree_over_chain_tokens_per_s"] > 0 and isinstance(s["goal_met"], bool)
    assert s["ideal_tree_over_chain_tokens_per_s"] > 0 and s["ideal_tree"].startswith("draft:")
    assert result["verify_cost_vs_1"][1] == 1.0 and result["eagle2_published"]["ratio"] > 1
    table = format_rows(json.loads(json.dumps(result)))  # as the README generator reads it back
    assert "| draft | keep 3,4,8 |" in table and "EAGLE-2 published" in table


def test_command_line_writes_the_json(tiny_target_dir, tiny_draft_dir, tmp_path, capsys):
    out = tmp_path / "tree.json"
    code = main(
        [
            "--target",
            str(tiny_target_dir),
            "--draft",
            f"d={tiny_draft_dir}",
            "--n-prompts",
            "1",
            "--max-new-tokens",
            "4",
            "--chains",
            "2",
            "--trees",
            "2,2,3",
            "--repeats",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["pair"] == "demo" and "benchmarks/tree.py" in result["command"]
    assert {r["method"] for r in result["rows"]} == {
        "target",
        "d:chain-2",
        "d:tree-2,2,3",
        "d:adaptive-adaptive:24,6,4",
        "d:keep-3,4,8",
    }
    assert main(["--target", str(tiny_target_dir), "--draft", "nonsense"]) == 2
    assert "must be NAME=DIR" in capsys.readouterr().err


def test_step_cost_interpolates_the_monotone_costs():
    costs = {1: 1.0, 2: 1.2, 4: 1.1, 8: 2.0}  # the dip at 4 is noise: made flat, 1.15 from 2 to 4
    assert step_cost_at(costs, 1) == 1.0 and step_cost_at(costs, 2) == pytest.approx(1.15)
    assert step_cost_at(costs, 6) == pytest.approx(1.15 + 0.5 * 0.85)
    assert step_cost_at(costs, 2.5) == pytest.approx(1.15)
    assert step_cost_at(costs, 1.5) == pytest.approx(1.075)


def test_ideal_tree_bound_takes_the_tree_overheads_away():
    costs = {1: 1.0, 3: 1.2, 6: 1.5}
    chain = {
        "tau": 2.0,
        "mean_gamma": 2,
        "mean_depth": 2,
        "draft_ms_per_step": 1.0,
        "target_ms_per_step": 1.2,
        "other_ms_per_step": 0.1,
    }
    # the same shape as the chain, however slow its own run was, gets the chain's speed back
    assert ideal_tree_over_chain({**chain, "draft_ms_per_step": 9.0}, chain, costs) == pytest.approx(1.0)
    # 5 nodes over depth 3 at τ 3: draft 3 x 0.5, verify 1.2 x 1.5 / 1.2 (6 tokens against 3), other 0.1
    tree = {"tau": 3.0, "mean_gamma": 5, "mean_depth": 3}
    assert ideal_tree_over_chain(tree, chain, costs) == pytest.approx((3.0 / 3.1) / (2.0 / 2.3))


def test_summarize_rewrites_the_summary_from_saved_rows(tiny_target_dir, tiny_draft_dir, tmp_path, capsys):
    out = tmp_path / "tree.json"
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
                "4",
                "--chains",
                "2",
                "--trees",
                "2,2,3",
                "--repeats",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    saved = json.loads(out.read_text())
    saved["summary"] = {}
    out.write_text(json.dumps(saved))
    assert main(["--summarize", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["rows"] == saved["rows"] and "ideal_tree_over_chain_tokens_per_s" in again["summary"]["d"]
    assert main(["--summarize", str(tmp_path / "missing.json")]) == 2
    assert "cannot summarize" in capsys.readouterr().err
