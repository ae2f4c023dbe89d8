"""The reproduction pipeline end to end on tiny settings: every stage runs, resumes, and writes results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from readme import readme_table, replace_block

from adaspec.cli import main
from adaspec.errors import AdaspecError
from adaspec.recipes.reproduce import pipeline as reproduce
from adaspec.recipes.reproduce import protocols

TINY = protocols.Preset(
    vocab_size=300,
    target="tiny-neox",
    draft="tiny-gpt2",
    max_length=64,
    train_limit=32,
    target_epochs=1.0,
    target_lr=1e-3,
    draft_init_epochs=0.5,
    distill_epochs=0.5,
    distill_lr=1e-3,
    batch_size=8,
    eval_prompts=2,
    eval_max_new_tokens=6,
    gamma=2,
    top_k=16,
    seeds=(0, 1),
)


def test_pipeline_runs_resumes_and_writes_results(tmp_path, monkeypatch):
    monkeypatch.setitem(protocols.PRESETS, "tiny", TINY)
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = [
        "reproduce",
        "--task",
        "gsm8k",
        "--preset",
        "tiny",
        "--runs-dir",
        str(runs),
        "--results-dir",
        str(results),
        "--no-speed-benchmark",
        "--no-progress",
        "--ablations",
        "--long-ablations",
    ]
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
    assert set(res["validation_ce"]) == {
        "target",
        "draft_init",
        "distillspec",
        "adaspec",
        *protocols.ABLATIONS,
        *protocols.LONG_ABLATIONS,
    }
    assert "response CE, validation" in (out / "report.md").read_text()
    assert "Target response cross-entropy on the validation split" in (out / "report.md").read_text()
    assert set(res["ablations"]) == set(protocols.ABLATIONS) | set(protocols.LONG_ABLATIONS)
    long_cfg = json.loads((runs / "gsm8k" / "tiny" / "seed0" / "distillspec_long" / "run_config.json").read_text())
    assert long_cfg["method"] == "kd" and long_cfg["epochs"] == pytest.approx(TINY.distill_epochs / 0.4)
    seed0 = runs / "gsm8k" / "tiny" / "seed0"
    steps = {
        n: json.loads((seed0 / n / "train_summary.json").read_text())["steps"]
        for n in ("distillspec", "adaspec", "distillspec_long", "distillspec_long4", "adaspec_long4")
    }
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

    # experiments/readme.py (outside the package) turns these results into the README's main table
    readme = replace_block("x\n<!-- results:start -->\n<!-- results:end -->\n", "results", readme_table(results))
    assert "| gsm8k | tiny |" in readme
    assert readme_table(results).count("\n") == 2
    assert "| 57.6 / 61.0, +3.4 |" in readme_table(results)  # the paper's GSM8K numbers beside ours


def test_options_are_checked():
    with pytest.raises(AdaspecError, match="unknown task"):
        reproduce.ReproduceOptions(task="nope")
    with pytest.raises(AdaspecError, match="unknown preset"):
        reproduce.ReproduceOptions(preset="huge")


def test_presets_keep_the_capacity_gap():
    from adaspec.models import build_model, count_params

    for name, p in protocols.PRESETS.items():
        ratio = count_params(build_model(p.target, p.vocab_size)) / count_params(build_model(p.draft, p.vocab_size))
        assert ratio >= 10, f"preset {name}: target only {ratio:.1f}x the draft"


def test_pretrained_preset_pretrains_once_then_fine_tunes_the_target(tmp_path, monkeypatch):
    """Both models train on the corpus first (shared by the tasks); the target is then fine-tuned on the
    task's responses and the draft starts from its pretrained weights as they are."""
    from adaspec.recipes import train_target

    made: dict = {}

    def fake_train(opts):
        made[str(Path(opts.output).relative_to(tmp_path / "runs"))] = opts
        Path(opts.output).mkdir(parents=True)
        (Path(opts.output) / "train_summary.json").write_text("{}")

    monkeypatch.setattr(train_target, "run_train_target", fake_train)
    for task in ("gsm8k", "mbpp"):
        pipe = reproduce.Pipeline(
            reproduce.ReproduceOptions(task=task, preset="pretrained", runs_dir=str(tmp_path / "runs"))
        )
        assert pipe.draft_init(pipe.target()) == tmp_path / "runs" / "corpus" / "pretrained" / "draft"
    assert set(made) == {
        "corpus/pretrained/target",
        "corpus/pretrained/draft",
        "gsm8k/pretrained/target",
        "mbpp/pretrained/target",
    }
    p = protocols.PRESETS["pretrained"]
    target, draft = made["corpus/pretrained/target"], made["corpus/pretrained/draft"]
    assert (target.task, target.preset, target.epochs, target.tokenizer, target.train_on_prompt) == (
        "corpus",
        p.target,
        p.pretrain_epochs,
        None,
        True,
    )
    assert (draft.task, draft.preset, draft.epochs, draft.train_on_prompt) == (
        "corpus",
        p.draft,
        p.draft_pretrain_epochs,
        True,
    )
    assert draft.tokenizer == target.output  # one vocabulary for both, trained on the corpus
    sft = made["gsm8k/pretrained/target"]
    assert (sft.task, sft.model, sft.epochs, sft.train_on_prompt) == ("gsm8k", target.output, 3.0, False)
    with pytest.raises(AdaspecError, match="must pretrain the target too"):
        protocols.Preset(**{**TINY.__dict__, "draft_pretrain_epochs": 1.0})


def test_small_tasks_get_more_epochs_but_never_fewer():
    p = protocols.Preset(**{**TINY.__dict__, "min_train_examples": 100})
    scaled = p.for_task(25)
    assert (scaled.target_epochs, scaled.draft_init_epochs, scaled.distill_epochs) == (4.0, 2.0, 2.0)
    assert p.for_task(1000) == p and TINY.for_task(1) == TINY
    # GSM8K's training split is large enough that the committed preset trains it as written
    assert protocols.PRESETS["small"].for_task(7173) == protocols.PRESETS["small"]
    pre = protocols.PRESETS["pretrained"].for_task(700)  # the distillation scaled, the target's fine-tuning not
    assert (pre.target_epochs, pre.distill_epochs) == (3.0, 10.0)


def test_runs_dir_that_is_a_file_or_in_use_is_refused(tmp_path, capsys):
    import os
    import socket

    from helpers import cli_error

    from adaspec.safety import LOCK_NAME

    f = tmp_path / "runs"
    f.write_text("mine")
    err = cli_error(capsys, "reproduce", "--runs-dir", f, "--results-dir", tmp_path / "r", "--no-progress")
    assert "--runs-dir" in err and "is an existing file" in err
    root = tmp_path / "runs2" / "gsm8k" / "demo"
    root.mkdir(parents=True)
    # this test's own process is alive: a second pipeline on the same runs folder is refused
    (root / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    err = cli_error(
        capsys, "reproduce", "--runs-dir", tmp_path / "runs2", "--results-dir", tmp_path / "r", "--no-progress"
    )
    assert "in use by process" in err


@pytest.mark.slow
def test_official_protocol_at_equal_steps_merges_into_results(tmp_path, monkeypatch):
    """--protocol official: the authors' optimiser and batch shapes, every run at DistillSpec's optimizer
    steps, in its own run folder; its block joins results.json without touching the other protocol's keys."""
    from dataclasses import replace

    monkeypatch.setitem(protocols.PRESETS, "tiny", replace(TINY, train_limit=48, seeds=(0,)))
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = [
        "reproduce",
        "--task",
        "gsm8k",
        "--preset",
        "tiny",
        "--runs-dir",
        str(runs),
        "--results-dir",
        str(results),
        "--no-speed-benchmark",
        "--no-progress",
    ]
    assert main(argv) == 0
    path = results / "gsm8k" / "results.json"
    before = json.loads(path.read_text())
    assert main([*argv, "--protocol", "official", "--ablations"]) == 0
    after = json.loads(path.read_text())
    block = after.pop("official_protocol")
    assert after == before  # every key of the adaspec protocol kept as it was
    assert block["command"].endswith("--ablations --protocol official")
    names = {
        "distillspec",
        "adaspec",
        "kd_big_batch",
        "random_big_batch",
        "adaspec_bottom",
        *(f"adaspec_k{k}" for k in (0.2, 0.6, 0.8, 1.0)),
    }
    assert set(block["alpha_greedy"]) == names | {"draft_init"}
    assert set(block["optimizer_steps"]) == names and len(set(block["optimizer_steps"].values())) == 1
    assert block["global_batch"] == {
        "distillspec": 8,
        "adaspec": 20,
        "kd_big_batch": 20,
        "random_big_batch": 20,
        "adaspec_bottom": 20,
        "adaspec_k0.2": 40,
        "adaspec_k0.6": 13,
        "adaspec_k0.8": 10,
        "adaspec_k1.0": 8,
    }
    official = runs / "gsm8k" / "tiny" / "official" / "seed0"
    cfg = json.loads((official / "adaspec" / "run_config.json").read_text())
    assert (cfg["lr"], cfg["weight_decay"], cfg["schedule"], cfg["warmup_steps"]) == (3e-4, 0.1, "constant", 0)
    assert (cfg["budget_by"], cfg["selection_group"], cfg["batch_size"]) == ("batch", 5, 20)
    assert cfg["draft_init"] == str(runs / "gsm8k" / "tiny" / "draft_init")  # shared with the other protocol
    assert "The authors' protocol" in (results / "gsm8k" / "report.md").read_text()
    old_cfg = json.loads((runs / "gsm8k" / "tiny" / "seed0" / "adaspec" / "run_config.json").read_text())
    assert (old_cfg["budget_by"], old_cfg["schedule"], old_cfg["batch_size"]) == ("epochs", "cosine", 8)

    # the adaspec protocol's command, rerun, keeps the official block
    assert main(argv) == 0
    assert json.loads(path.read_text())["official_protocol"] == block
    table = readme_table(results)
    assert "Under the authors' protocol" in table and "--protocol official` |" in table
    with pytest.raises(AdaspecError, match="long-ablations"):
        reproduce.ReproduceOptions(protocol="official", long_ablations=True)


@pytest.mark.slow
def test_official_variants_train_and_report(tmp_path, monkeypatch):
    """--variants end to end: every variant trains at equal steps, Δ in TVD from its own cache, all judged."""
    from dataclasses import replace

    monkeypatch.setitem(protocols.PRESETS, "tiny", replace(TINY, train_limit=48, seeds=(0,)))
    runs, results = tmp_path / "runs", tmp_path / "results"
    assert (
        main(
            [
                "reproduce",
                "--task",
                "gsm8k",
                "--preset",
                "tiny",
                "--runs-dir",
                str(runs),
                "--results-dir",
                str(results),
                "--no-speed-benchmark",
                "--no-progress",
                "--protocol",
                "official",
                "--variants",
            ]
        )
        == 0
    )
    block = json.loads((results / "gsm8k" / "results.json").read_text())["official_protocol"]
    assert set(block["variants_vs_kd"]) == set(protocols.OFFICIAL_VARIANTS)
    assert len(set(block["optimizer_steps"].values())) == 1
    seed0 = runs / "gsm8k" / "tiny" / "official" / "seed0"
    assert json.loads((seed0 / "cache_ref_tvd" / "manifest.json").read_text())["divergence"] == "tvd"
    assert "Acceptance-aligned variants" in (results / "gsm8k" / "report.md").read_text()
    (results / "variants").mkdir()
    (results / "gsm8k").rename(results / "variants" / "gsm8k")  # a variants run kept apart from the main table
    table = readme_table(results)
    assert "| task | seeds | LK: -log α" in table and "| gsm8k | 1 |" in table


def _planned_runs(
    tmp_path, monkeypatch, *flags: str, protocol: str = "adaspec", heads: list[str] | None = None
) -> dict:
    """The DistillOptions (and TrainHeadOptions) each distillation (head) stage of `reproduce` would run,
    by run folder (nothing trained or evaluated)."""
    from adaspec.recipes import distill
    from adaspec.recipes.train_head import options as head_options

    made: dict = {}

    def fake_run(opts):
        out = Path(opts.output)
        made[str(out.relative_to(tmp_path / "runs" / "gsm8k" / "small"))] = opts
        out.mkdir(parents=True)
        (out / "train_summary.json").write_text("{}")

    monkeypatch.setattr(distill, "run_distill", fake_run)
    monkeypatch.setattr(head_options, "run_train_head", fake_run)
    monkeypatch.setattr(reproduce.Pipeline, "target", lambda self: self.root / "target")
    monkeypatch.setattr(reproduce.Pipeline, "draft_init", lambda self, target: self.root / "draft_init")
    monkeypatch.setattr(reproduce.Pipeline, "cache", lambda self, target, ref, out, divergence="fkl": out)
    monkeypatch.setattr(reproduce.Pipeline, "evaluate", lambda self, target, init, drafts: drafts)
    drafts = reproduce.Pipeline(
        reproduce.ReproduceOptions(
            task="gsm8k",
            preset="small",
            runs_dir=str(tmp_path / "runs"),
            protocol=protocol,
            heads=heads,
            **{f: True for f in flags},
        )
    ).run()
    assert {
        str(p.relative_to(tmp_path / "runs" / "gsm8k" / "small")) for by in drafts.values() for p in by.values()
    } == set(made)
    return made


def test_adaspec_protocol_runs_as_before(tmp_path, monkeypatch):
    """The committed results' command still trains exactly what it trained: epochs / k at KD's batch."""
    made = _planned_runs(tmp_path, monkeypatch, "ablations", "long_ablations")
    assert set(made) == {f"seed{s}/{n}" for s in (0, 1, 2) for n in ("distillspec", "adaspec")} | {
        f"seed0/{n}" for n in (*protocols.ABLATIONS, *protocols.LONG_ABLATIONS)
    }
    for name, o in made.items():
        assert (o.lr, o.weight_decay, o.schedule, o.warmup_steps, o.batch_size) == (2e-3, 0.0, "cosine", 20, 16)
        assert o.selection_group is None and o.max_steps is None
        kd = name.endswith(("distillspec", "distillspec_long", "distillspec_long4"))
        assert o.method == ("kd" if kd else "adaspec") and o.match_token_budget == (not kd)
        if not kd:
            assert o.budget_by == "epochs" and o.ref.endswith("distillspec")
    assert made["seed0/distillspec_long"].epochs == pytest.approx(2.5)
    assert made["seed0/adaspec_long4"].epochs == pytest.approx(4.0) and made["seed1/adaspec"].k == 0.4


def test_official_protocol_runs(tmp_path, monkeypatch):
    made = _planned_runs(tmp_path, monkeypatch, "ablations", protocol="official")
    per_seed = ("distillspec", "adaspec", "kd_big_batch", "random_big_batch")
    assert set(made) == {f"official/seed{s}/{n}" for s in (0, 1, 2) for n in per_seed} | {
        f"official/seed0/{n}" for n in protocols.OFFICIAL_ABLATIONS
    }
    for name, o in made.items():
        assert (o.lr, o.weight_decay, o.schedule, o.warmup_steps, o.batch_size) == (3e-4, 0.1, "constant", 0, 16)
        assert o.epochs == 1.0 and o.budget_by == "batch" and o.draft_init.endswith("small/draft_init")
        kd = name.endswith(("distillspec", "kd_big_batch"))
        assert o.method == ("kd" if kd else "adaspec") and o.selection_group == (None if kd else 5)
        assert o.match_token_budget == (not name.endswith("distillspec"))
    assert made["official/seed2/kd_big_batch"].k == 0.4 and made["official/seed0/adaspec_k0.2"].k == 0.2
    assert made["official/seed1/random_big_batch"].selection == "random"
    assert made["official/seed0/adaspec"].teacher_cache.endswith("official/seed0/cache_ref")


def test_official_variants_run_every_seed_at_equal_steps(tmp_path, monkeypatch):
    made = _planned_runs(tmp_path, monkeypatch, "variants", protocol="official")
    per_seed = ("distillspec", "adaspec", "kd_big_batch", "random_big_batch", *protocols.OFFICIAL_VARIANTS)
    assert set(made) == {f"official/seed{s}/{n}" for s in (0, 1, 2) for n in per_seed}
    for seed in (0, 1, 2):
        runs = {n: made[f"official/seed{seed}/{n}"] for n in per_seed}
        control = runs["kd_big_batch"]
        for name in ("lk", "lk_kl"):  # KD at AdaSPEC's batch with only the loss changed
            o = runs[name]
            assert (o.method, o.divergence, o.ref, o.teacher_cache) == ("kd", name, None, control.teacher_cache)
            assert (o.k, o.match_token_budget, o.budget_by, o.selection_group) == (0.4, True, "batch", None)
        adaspec = runs["adaspec"]
        for name, field, value in (
            ("adaspec_tvd", "delta_divergence", "tvd"),
            ("adaspec_soft", "selection", "soft"),
            ("adaspec_ksched", "k_schedule", "linear"),
        ):
            o = runs[name]
            assert getattr(o, field) == value and o.ref == adaspec.ref and o.selection_group == 5
            assert (o.k, o.match_token_budget, o.lr, o.schedule) == (0.4, True, 3e-4, "constant")
        # Δ in TVD reads a cache whose L_ref is TVD; the others AdaSPEC's
        assert runs["adaspec_tvd"].teacher_cache.endswith(f"official/seed{seed}/cache_ref_tvd")
        assert runs["adaspec_soft"].teacher_cache == adaspec.teacher_cache
    with pytest.raises(AdaspecError, match="--variants belongs to --protocol official"):
        reproduce.ReproduceOptions(variants=True)
    assert reproduce.command_line(reproduce.ReproduceOptions(protocol="official", variants=True)).endswith(
        "--protocol official --variants"
    )


def _evals(names: list[str], alpha: float) -> dict:
    draft = {
        "alpha_tested": alpha,
        "alpha": alpha / 2,
        "analytic": {"alpha_greedy": alpha, "alpha_sampling": alpha},
        "tau": 2.0,
        "c": 0.1,
        "measured_speedup": 1.5,
        "theoretical_speedup": 1.6,
        "params": 10,
        "response_loss": 3.0,
        "position_acceptance": [alpha],
    }
    return {
        0: {
            "target": {"params": 100, "response_loss": 2.0, "quality_metric": "accuracy", "quality": 0.1},
            "drafts": {n: draft for n in names},
        }
    }


def test_official_block_merges_and_survives_the_other_protocol(tmp_path):
    from adaspec.recipes.reproduce.report import write_results
    from adaspec.recipes.reproduce.report_official import write_official

    out = tmp_path / "gsm8k"
    names = ["distillspec", "adaspec"]
    summaries = {n: {0: {"steps": 5, "epochs": 1.0, "batch_size": 16, "history": []}} for n in names}
    main_res = write_results(
        "adaspec reproduce x",
        "gsm8k",
        "small",
        TINY,
        _evals(names, 0.5),
        summaries,
        None,
        out,
        {"target": [2.0], **{n: [3.0] for n in names}},
    )
    (out / "notes.md").write_text("hand-written reading\n")
    before = json.loads((out / "results.json").read_text())
    before["unknown_key"] = 1
    (out / "results.json").write_text(json.dumps(before))
    official = [*names, "kd_big_batch", "random_big_batch"]
    summaries = {
        n: {
            0: {
                "steps": 7,
                "epochs": 1.0 if n == "distillspec" else 2.5,
                "batch_size": 16 if n == "distillspec" else 40,
                "history": [],
            }
        }
        for n in official
    }
    block = write_official(
        "adaspec reproduce y --protocol official",
        "gsm8k",
        "small",
        TINY,
        _evals(official, 0.6),
        summaries,
        out,
        {n: [3.0] for n in official},
        {"lr": 3e-4, "weight_decay": 0.1, "schedule": "constant", "selection_group": 5},
    )
    merged = json.loads((out / "results.json").read_text())
    assert merged.pop("official_protocol") == block and merged == before
    assert block["alpha_greedy"]["kd_big_batch"] == 0.6 and block["alpha_greedy_seeds"]["adaspec"] == [0.6]
    assert block["optimizer_steps"] == dict.fromkeys(official, 7)
    assert block["global_batch"] == {"distillspec": 16, "adaspec": 40, "kd_big_batch": 40, "random_big_batch": 40}
    report = (out / "report.md").read_text()
    assert "The authors' protocol" in report and "| 40 | 2.5 | 7 | 60.0 |" in report
    assert report.endswith("hand-written reading\n") and "official_training_curves.png" in report
    # the adaspec protocol rewritten (its own command rerun) keeps the official block
    write_results(
        "adaspec reproduce x",
        "gsm8k",
        "small",
        TINY,
        _evals(names, 0.5),
        summaries,
        None,
        out,
        {"target": [2.0], **{n: [3.0] for n in names}},
    )
    assert json.loads((out / "results.json").read_text())["official_protocol"] == block
    assert main_res["alpha_greedy"]["adaspec"] == 0.5
    table = readme_table(tmp_path)
    assert "| gsm8k | 60.0 | 60.0 | +0.0 | 57.6 / 61.0, +3.4 | 60.0 | 60.0 | 7 | 16 / 40 | 1 |" in table
    assert "--preset pretrained" not in table

    # the pretrained regime (results/pretrained/<task>) gets its own rows, beside the run from scratch above
    alphas = {"draft_init": 0.4, "distillspec": 0.5, "adaspec": 0.55, "kd_big_batch": 0.52, "random_big_batch": 0.45}
    evals = _evals(official, 0.0)
    evals[0]["drafts"] = {n: {**evals[0]["drafts"]["adaspec"], "alpha_tested": a} for n, a in alphas.items()}
    write_official(
        "adaspec reproduce --preset pretrained",
        "gsm8k",
        "pretrained",
        TINY,
        evals,
        summaries,
        tmp_path / "pretrained" / "gsm8k",
        {"target": [1.5], "draft_init": [2.5], "distillspec": [2.25]},
        {"lr": 3e-4, "weight_decay": 0.1, "schedule": "constant", "selection_group": 5},
    )
    row = next(r for r in readme_table(tmp_path).splitlines() if "`adaspec reproduce --preset pretrained`" in r)
    assert row.startswith(
        "| gsm8k | 0.00M / 0.00M | 1.50 / 2.50 / 2.25 | accuracy 0.100 | 40.0 | 50.0 | 55.0 | "
        "+5.0 | 52.0 | 45.0 | +3.0 | 60.0 / 60.0 | 1 |"
    )


def test_variants_are_judged_against_the_better_kd_and_tabled(tmp_path):
    from adaspec.recipes.reproduce.report_official import variant_verdicts, write_official

    names = ["distillspec", "adaspec", "kd_big_batch", "random_big_batch", *protocols.OFFICIAL_VARIANTS]
    alphas = {
        "distillspec": [0.50, 0.52, 0.51],
        "kd_big_batch": [0.55, 0.56, 0.54],
        "adaspec": [0.5, 0.5, 0.5],
        "random_big_batch": [0.5, 0.5, 0.5],
        "lk": [0.575, 0.58, 0.57],
        "lk_kl": [0.56, 0.57, 0.55],
        "adaspec_tvd": [0.60, 0.50, 0.55],
        "adaspec_soft": [0.54, 0.55, 0.53],
        "adaspec_ksched": [0.5, 0.5, 0.5],
    }
    evals = {
        s: {**_evals(names, 0.5)[0], "drafts": {n: {**_evals([n], alphas[n][s])[0]["drafts"][n]} for n in names}}
        for s in range(3)
    }
    summaries = {n: {s: {"steps": 7, "epochs": 2.5, "batch_size": 40, "history": []} for s in range(3)} for n in names}
    for task in ("gsm8k", "xsum"):
        block = write_official(
            "adaspec reproduce y --protocol official --variants",
            task,
            "small",
            TINY,
            evals,
            summaries,
            tmp_path / task,
            {n: [3.0] for n in names},
            {"lr": 3e-4, "weight_decay": 0.1, "schedule": "constant", "selection_group": 5},
        )
    v = block["variants_vs_kd"]
    assert v == variant_verdicts(block) and set(v) == set(protocols.OFFICIAL_VARIANTS)
    assert {x["kd"] for x in v.values()} == {"kd_big_batch"}  # the better KD run by mean α
    assert v["lk"]["gain"] == pytest.approx(0.025) and v["lk"]["spread"] == pytest.approx(0.015)
    # lk: +2.5 > 1.5 spread; lk_kl +1.0 < spread 2.0; tvd +0.5 in a wide spread; soft and ksched lose
    assert {n: x["beats"] for n, x in v.items()} == {
        "lk": True,
        "lk_kl": False,
        "adaspec_tvd": False,
        "adaspec_soft": False,
        "adaspec_ksched": False,
    }
    report = (tmp_path / "xsum" / "report.md").read_text()
    assert "| LK: -log α, every token at AdaSPEC's batch | +2.5 | 1.5 | yes |" in report
    table = readme_table(tmp_path)
    assert "| xsum | 3 | +2.5 (± 1.5) ✓ | +1.0 (± 2.0) |" in table
    assert "Tasks won: lk 2 of 2, lk_kl 0 of 2" in table
    # a block without variants renders no variants lines
    plain = {n: alphas[n] for n in ("distillspec", "adaspec", "kd_big_batch")}
    assert variant_verdicts({"alpha_greedy_seeds": plain}) == {}


def test_heads_train_resume_and_join_the_results(tmp_path, monkeypatch):
    """--heads: per-seed heads on the frozen target after the drafts, each stage resumable, evaluated in the
    seed's evaluation beside the drafts; adding head kinds later trains and measures only the new ones."""
    from dataclasses import replace

    monkeypatch.setitem(protocols.PRESETS, "tiny", replace(TINY, train_limit=16, head_epochs=1.0, head_ttt_steps=2))
    runs, results = tmp_path / "runs", tmp_path / "results"
    argv = [
        "reproduce",
        "--task",
        "gsm8k",
        "--preset",
        "tiny",
        "--runs-dir",
        str(runs),
        "--results-dir",
        str(results),
        "--no-speed-benchmark",
        "--no-progress",
    ]
    assert main([*argv, "--heads", "eagle"]) == 0
    root = runs / "gsm8k" / "tiny"
    assert sorted(p.name for p in (root / "seed0" / "heads").iterdir()) == ["eagle", "eagle1", "eagle_adaspec"]
    assert sorted(p.name for p in (root / "seed1" / "heads").iterdir()) == ["eagle", "eagle_adaspec"]
    eval0 = json.loads((root / "seed0" / "eval_gsm8k.json").read_text())
    stamps = {p: p.stat().st_mtime for p in runs.rglob("model.safetensors")}

    assert main([*argv, "--heads", "medusa", "mtp", "eagle"]) == 0
    # nothing trained before is trained again; the new heads are measured alone, the old entries kept
    assert all(p.stat().st_mtime == t for p, t in stamps.items())
    assert sorted(p.name for p in (root / "seed1" / "heads").iterdir()) == [
        "eagle",
        "eagle_adaspec",
        "medusa",
        "mtp",
        "mtp_adaspec",
    ]
    after = json.loads((root / "seed0" / "eval_gsm8k.json").read_text())
    assert after["drafts"]["eagle"] == eval0["drafts"]["eagle"]
    assert after["drafts"]["adaspec"] == eval0["drafts"]["adaspec"]

    cfg = json.loads((root / "seed1" / "heads" / "mtp_adaspec" / "run_config.json").read_text())
    assert (cfg["kind"], cfg["method"], cfg["k"], cfg["match_token_budget"], cfg["budget_by"]) == (
        "mtp",
        "adaspec",
        0.4,
        True,
        "epochs",
    )
    assert cfg["ref"] == str(root / "seed1" / "heads" / "mtp") and cfg["depth"] == TINY.gamma
    cfg = json.loads((root / "seed0" / "heads" / "eagle1" / "run_config.json").read_text())
    assert (cfg["variant"], cfg["method"], cfg["ttt_steps"], cfg["init_seed"]) == ("eagle1", "kd", 2, 0)
    steps = {
        n: json.loads((root / "seed0" / "heads" / n / "train_summary.json").read_text())["steps"]
        for n in ("eagle", "eagle_adaspec", "mtp", "mtp_adaspec", "medusa")
    }
    # epochs / k at the KD head's batch: 2.5x its steps, as the AdaSPEC draft
    assert steps["eagle"] == steps["mtp"] == steps["medusa"] == 2
    assert steps["eagle_adaspec"] == steps["mtp_adaspec"] == 5

    res = json.loads((results / "gsm8k" / "results.json").read_text())
    heads = ("eagle", "eagle_adaspec", "eagle1", "mtp", "mtp_adaspec", "medusa")
    assert res["command"].endswith("--heads eagle mtp medusa")
    assert list(res["heads"]) == list(heads)
    assert res["heads"]["eagle_adaspec"]["ref"] == "eagle" and res["heads"]["medusa"]["params"] > 0
    for name in heads:
        assert len(res["alpha_greedy_seeds"][name]) == (1 if name == "eagle1" else 2)
        assert 0 <= res["alpha_greedy"][name] <= 1 and name in res["alpha_greedy_std"]
        assert all(0 <= a <= 1 for a in res["alpha_analytic_greedy_seeds"][name])  # heads have an analytic α
        assert len(res["position_acceptance"][name]) == TINY.gamma
        assert name not in res["validation_ce"] and name not in res["val_loss"]  # no language model
    report = (results / "gsm8k" / "report.md").read_text()
    assert "## Drafter heads on the frozen target" in report and "| mtp_adaspec | MTP modules, AdaSPEC |" in report
    assert "AdaSPEC − KD, greedy α points" in report and "EAGLE-3 − EAGLE-1 (seed 0)" in report
    table = readme_table(results)
    assert "| EAGLE-3 KD | EAGLE-3 AdaSPEC | EAGLE-1 KD | MTP KD | MTP AdaSPEC | Medusa KD |" in table
    assert table.count("| gsm8k | tiny |") == 2  # the main row and the heads row
    (results / "heads").mkdir()
    (results / "gsm8k").rename(results / "heads" / "gsm8k")  # a heads run kept apart from the main table
    table = readme_table(results)
    assert table.count("| gsm8k | tiny |") == 1 and "| EAGLE-3 KD | EAGLE-3 AdaSPEC |" in table


def test_head_options_are_checked(capsys):
    from helpers import cli_error

    for bad in (["nope"], [], ["eagle", "lm"]):
        with pytest.raises(AdaspecError, match="--heads takes eagle, mtp, medusa"):
            reproduce.ReproduceOptions(heads=bad)
    assert reproduce.ReproduceOptions(heads=["medusa", "eagle", "medusa"]).heads == ["eagle", "medusa"]
    err = cli_error(capsys, "reproduce", "--heads", "eagle3", "--no-progress")
    assert "--heads takes eagle, mtp, medusa" in err
    opts = reproduce.ReproduceOptions(heads=["mtp"], seeds=[1])
    assert reproduce.command_line(opts).endswith("--seeds 1 --heads mtp")
    assert reproduce.command_line(reproduce.ReproduceOptions(results_dir="results/heads")) == (
        "adaspec reproduce --task gsm8k --preset demo --results-dir results/heads"
    )


@pytest.mark.parametrize("protocol", ["adaspec", "official"])
def test_head_runs_follow_the_drafts_protocol(tmp_path, monkeypatch, protocol):
    made = _planned_runs(tmp_path, monkeypatch, protocol=protocol, heads=["eagle", "mtp", "medusa"])
    made = {name: o for name, o in made.items() if "/heads/" in name}
    small = protocols.PRESETS["small"]
    base = "official/" if protocol == "official" else ""
    per_seed = ("eagle", "eagle_adaspec", "mtp", "mtp_adaspec", "medusa")
    assert set(made) == {f"{base}seed{s}/heads/{n}" for s in (0, 1, 2) for n in per_seed} | {
        f"{base}seed0/heads/eagle1"
    }
    for name, o in made.items():
        seed = int(name.split("seed")[1][0])
        head = name.rsplit("/", 1)[1]
        assert o.target.endswith("small/target") and o.seed == o.init_seed == seed
        assert o.epochs == small.head_epochs and o.batch_size == small.batch_size
        assert (o.lr, o.schedule) == ((3e-4, "constant") if protocol == "official" else (small.distill_lr, "cosine"))
        assert o.budget_by == ("batch" if protocol == "official" else "epochs")
        if o.kind == "eagle":
            assert o.ttt_steps == small.head_ttt_steps and o.variant == ("eagle1" if head == "eagle1" else "eagle3")
        else:
            assert o.depth == small.gamma
        adaspec = head.endswith("_adaspec")
        assert o.method == ("adaspec" if adaspec else "kd") and o.match_token_budget == adaspec
        if adaspec:
            assert o.k == 0.4 and o.ref.endswith(f"{base}seed{seed}/heads/{head.split('_')[0]}")
