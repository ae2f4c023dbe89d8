"""The decode benchmark (what `adaspec reproduce` times) on tiny models, and its command line."""

from __future__ import annotations

import json

from adaspec.evaluation.speed import decode_benchmark, differing, format_report
from benchmarks.decode import main


def test_decode_benchmark_is_lossless_and_reports_every_method(tiny_target_dir, tiny_draft_dir):
    report = decode_benchmark(
        str(tiny_target_dir),
        str(tiny_draft_dir),
        n_prompts=1,
        max_new_tokens=6,
        context=128,
        gamma=2,
        repeats=1,
        methods=["sd", "hf_assisted"],
    )
    assert list(report["methods"]) == ["target_only", "sd", "hf_assisted"]  # the baseline always runs first
    assert differing(report) == []  # greedy: every method reproduces the target alone
    sd = report["methods"]["sd"]
    assert sd["tau"] >= 1 and sd["predicted_from_forward_ms"] > 0 and "speedup_vs_hf_assisted" in sd
    assert set(report["forward_ms"]) == {"target_1_ms", "target_3_ms", "draft_1_ms"}
    assert report["config"]["context"] == 128 and report["config"]["prompts"] == "gsm8k:test"
    assert "sd vs hf_assisted" in format_report(report)


def test_command_line_writes_the_json_and_refuses_bad_lengths(tiny_target_dir, tiny_draft_dir, tmp_path, capsys):
    out = tmp_path / "decode.json"
    args = ["--target", str(tiny_target_dir), "--draft", str(tiny_draft_dir), "--n-prompts", "1", "--repeats", "1"]
    assert main([*args, "--max-new-tokens", "4", "--methods", "sd", "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["methods"]) == {"target_only", "sd"}
    assert main([*args, "--max-new-tokens", "64", "--context", "32"]) == 2
    assert "leaves no room for a prompt in 32 positions" in capsys.readouterr().err
