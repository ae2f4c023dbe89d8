"""The reproduction pipeline end to end on tiny settings: every stage runs, resumes, and writes results."""

from __future__ import annotations

import json

import pytest

from adaspec.reproduce import pipeline as reproduce
from adaspec.cli import main
from adaspec.errors import AdaspecError
from adaspec.reproduce.report import readme_table, update_readme

TINY = reproduce.Preset(vocab_size=300, target="tiny-neox", draft="tiny-gpt2", max_length=64, train_limit=32,
                        target_epochs=1.0, target_lr=1e-3, draft_init_epochs=0.5, distill_epochs=0.5,
                        distill_lr=1e-3, batch_size=8, eval_prompts=2, eval_max_new_tokens=6, gamma=2, top_k=16,
                        seeds=(0, 1))


def test_pipeline_runs_resumes_and_writes_results(tmp_path, monkeypatch):
    monkeypatch.setitem(reproduce.PRESETS, "tiny", TINY)
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = ["reproduce", "--task", "gsm8k", "--preset", "tiny", "--runs-dir", str(runs), "--results-dir",
            str(results), "--no-speed-benchmark", "--no-progress", "--ablations", "--long-ablations"]
    assert main(argv) == 0
    out = results / "gsm8k"
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "gsm8k" and res["command"].startswith("adaspec reproduce --task gsm8k --preset tiny")
    assert set(res["params"]) == {"target", "draft"}
    for name in ("distillspec", "adaspec"):
        assert len(res["alpha_greedy_seeds"][name]) == 2
        assert 0.0 <= res["alpha_greedy"][name] <= 1.0
    assert "target" in res["val_loss"] and "draft_init" in res["alpha_greedy"]
    # the capacity gap is judged on the validation split (the training distribution), for every model
    assert set(res["validation_ce"]) == {"target", "draft_init", "distillspec", "adaspec", *reproduce.ABLATIONS,
                                         *reproduce.LONG_ABLATIONS}
    assert "response CE, validation" in (out / "report.md").read_text()
    assert "Target response cross-entropy on the validation split" in (out / "report.md").read_text()
    assert set(res["ablations"]) == set(reproduce.ABLATIONS) | set(reproduce.LONG_ABLATIONS)
    long_cfg = json.loads((runs / "gsm8k" / "tiny" / "seed0" / "distillspec_long" / "run_config.json").read_text())
    assert long_cfg["method"] == "kd" and long_cfg["epochs"] == pytest.approx(TINY.distill_epochs / 0.4)
    seed0 = runs / "gsm8k" / "tiny" / "seed0"
    steps = {n: json.loads((seed0 / n / "train_summary.json").read_text())["steps"]
             for n in ("distillspec", "adaspec", "distillspec_long", "distillspec_long4", "adaspec_long4")}
    # the equal-steps controls: KD as long as AdaSPEC, and both at 4x that
    assert steps["distillspec_long"] == steps["adaspec"] > steps["distillspec"]
    assert steps["distillspec_long4"] == steps["adaspec_long4"] >= 3 * steps["adaspec"]
    report = (out / "report.md").read_text()
    assert res["command"] in report and "DistillSpec" in report
    assert {p.name for p in out.glob("*.png")} == {"training_curves.png", "alpha.png", "position_acceptance.png"}

    # a rerun finds every stage done: nothing is trained again
    stamps = {p: p.stat().st_mtime for p in runs.rglob("model.safetensors")}
    assert main(argv) == 0
    assert stamps == {p: p.stat().st_mtime for p in runs.rglob("model.safetensors")}

    # evaluation keeps prompt + continuation within the training length; one measured before that is redone
    eval_file = runs / "gsm8k" / "tiny" / "seed0" / "eval_gsm8k.json"
    measured = json.loads(eval_file.read_text())
    assert measured["config"]["context"] == TINY.max_length
    assert measured["config"]["max_prompt_length"] == TINY.max_length - TINY.eval_max_new_tokens
    measured["config"]["context"] = 1024
    eval_file.write_text(json.dumps(measured))
    assert main(argv) == 0
    assert json.loads(eval_file.read_text())["config"]["context"] == TINY.max_length
    assert stamps == {p: p.stat().st_mtime for p in runs.rglob("model.safetensors")}

    # adaspec starts from the same initial draft as the reference/DistillSpec draft
    cfg = json.loads((runs / "gsm8k" / "tiny" / "seed0" / "adaspec" / "run_config.json").read_text())
    assert cfg["draft_init"].endswith("draft_init") and cfg["ref"].endswith("distillspec")
    assert cfg["match_token_budget"] and cfg["k"] == 0.4

    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results:start -->\n<!-- results:end -->\n<!-- benchmarks:start -->\n"
                      "<!-- benchmarks:end -->\n")
    update_readme(readme, results)
    assert "| gsm8k | tiny |" in readme.read_text()
    assert readme_table(results).count("\n") == 2
    assert "| 57.6 / 61.0, +3.4 |" in readme_table(results)  # the paper's GSM8K numbers beside ours


def test_options_are_checked():
    with pytest.raises(AdaspecError, match="unknown task"):
        reproduce.ReproduceOptions(task="nope")
    with pytest.raises(AdaspecError, match="unknown preset"):
        reproduce.ReproduceOptions(preset="huge")


def test_presets_keep_the_capacity_gap():
    from adaspec.models import build_model, count_params
    for name, p in reproduce.PRESETS.items():
        ratio = count_params(build_model(p.target, p.vocab_size)) / count_params(build_model(p.draft, p.vocab_size))
        assert ratio >= 10, f"preset {name}: target only {ratio:.1f}x the draft"


def test_small_tasks_get_more_epochs_but_never_fewer():
    p = reproduce.Preset(**{**TINY.__dict__, "min_train_examples": 100})
    scaled = p.for_task(25)
    assert (scaled.target_epochs, scaled.draft_init_epochs, scaled.distill_epochs) == (4.0, 2.0, 2.0)
    assert p.for_task(1000) == p and TINY.for_task(1) == TINY
    # GSM8K's training split is large enough that the committed preset trains it as written
    assert reproduce.PRESETS["small"].for_task(7173) == reproduce.PRESETS["small"]
