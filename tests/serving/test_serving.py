"""The vLLM seam without vLLM: what is servable, vLLM's counters in adaspec's terms, the rows `measure`
builds from a worker's result (a stand-in worker), and the one-line errors when vLLM is missing or fails."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest
from helpers import cli_error

from adaspec import models
from adaspec.core.metrics import SpecStats
from adaspec.errors import AdaspecError
from adaspec.models import servable as constraints
from adaspec.serving import vllm_engine
from adaspec.serving.vllm_engine import VllmRun, find_vllm_python, measure


def test_every_shipped_preset_has_a_head_size_vllm_takes_and_legacy_ones_are_named():
    for name in models.PRESETS:
        config = models.preset_config(name, vocab_size=64)
        assert constraints.head_size_problem(config) is None, name
    for name in models.LEGACY_PRESETS:
        problem = constraints.head_size_problem(models.preset_config(name, vocab_size=64))
        assert "not one vLLM's attention takes" in problem, name


def test_eagle3_needs_a_target_family_with_auxiliary_hidden_states():
    assert constraints.eagle3_target_problem({"model_type": "llama"}) is None
    assert "gpt_neox models do not expose" in constraints.eagle3_target_problem({"model_type": "gpt_neox"})


def test_warn_unservable_says_each_problem_in_one_line(capsys):
    assert constraints.warn_unservable("x", [None]) is True
    assert constraints.warn_unservable("this draft", [constraints.head_size_problem({"head_dim": 16})]) is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "adaspec: warning: this draft cannot be served by vLLM 0.32.0: head size 16"
    )


def test_vllm_counters_become_adaspecs_rates():
    # 10 drafts of γ = 3: positions accepted 8, 5, 2 times; 2 drafts accepted all three
    stats = SpecStats.from_vllm(3, drafts=10, draft_tokens=30, accepted=15, accepted_per_position=[8, 5, 2])
    assert stats.alpha == pytest.approx(15 / (15 + 8))  # 8 drafts ended with a rejection
    assert stats.alpha_drafted == pytest.approx(0.5)  # vLLM's acceptance rate
    assert stats.tau == pytest.approx(1 + 15 / 10)  # vLLM's mean acceptance length
    assert stats.position_acceptance == pytest.approx([0.8, 0.5, 0.2])


def test_missing_vllm_is_one_line_saying_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.delenv(vllm_engine.ENV_VAR, raising=False)
    monkeypatch.setattr(vllm_engine, "VENV", "no-such-venv")
    with pytest.raises(AdaspecError, match=r"vLLM is not installed: run `make vllm`"):
        find_vllm_python()
    with pytest.raises(AdaspecError, match="vLLM python not found: /nope"):
        find_vllm_python("/nope")


def test_eval_engine_vllm_refuses_before_loading_anything(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv(vllm_engine.ENV_VAR, raising=False)
    monkeypatch.setattr(vllm_engine, "VENV", "no-such-venv")
    err = cli_error(capsys, "eval", "--target", tmp_path / "missing", "--draft", tmp_path / "d", "--engine", "vllm")
    assert "make vllm" in err or "not found" in err
    err = cli_error(capsys, "eval", "--target", "t", "--draft", "d", "--batch-sizes", "0")
    assert "--batch-sizes must be in 1..256" in err


def _fake_python(tmp_path: Path, accepted: list[int], fail_on: str | None = None) -> str:
    """A stand-in for vLLM's python: writes a canned worker result (the target's outputs are [1, 2, 3, 4])."""
    script = tmp_path / "fake_python"
    script.write_text(f"""#!{sys.executable}
import json, sys
job = json.load(open(sys.argv[2]))
spec = job["speculative_config"]
if {fail_on!r} and spec and spec["method"] == {fail_on!r}:
    print("ValueError: vLLM refused this checkpoint"); sys.exit(1)
outs = [[1, 2, 3, 4] if spec is None or i == 0 else [1, 2, 3, 5] for i in range(len(job["prompts"]))]
runs = [{{"temperature": 0.0, "batch": b, "seconds": 1.0 if spec is None else 0.5, "tokens": 8, "outputs": outs,
          "counters": {{"drafts": 0 if spec is None else 2, "draft_tokens": 0 if spec is None else 6,
                       "accepted": 0 if spec is None else sum({accepted!r}),
                       "accepted_per_position": [] if spec is None else {accepted!r}}}}}
        for b in job["batch_sizes"]]
json.dump({{"vllm_version": "0.32.0", "runs": runs}}, open(sys.argv[3], "w"))
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_measure_reports_rows_per_drafter_and_batch_and_refusals(tmp_path, tiny_target_dir):
    target = models.load_model(tiny_target_dir)
    run = VllmRun(
        target=str(tiny_target_dir),
        prompts=[[5, 6], [7, 8]],
        max_tokens=4,
        temperatures=(0.0,),
        gamma=3,
        max_model_len=64,
        batch_sizes=(1, 2),
        eos_token_id=None,
    )
    drafters = {"d": ("lm", str(tiny_target_dir), target), "m": ("mtp", "unused", target)}
    out = measure(_fake_python(tmp_path, [2, 1, 0]), run, drafters, target, tmp_path / "work", log=lambda m: None)
    rows = {(r["drafter"], r["batch"]): r for r in out["rows"]}
    assert set(rows) == {(n, b) for n in ("target", "d", "m") for b in (1, 2)}
    d = rows[("d", 1)]
    assert d["method"] == "draft_model" and d["loaded"] and d["vs_target"] == pytest.approx(2.0)
    assert d["identical_to_target"] == 1  # the stand-in changes every output but the first
    assert d["alpha"] == pytest.approx(3 / (3 + 2)) and d["mean_acceptance_length"] == pytest.approx(2.5)
    assert d["adaspec"]["alpha"] == d["adaspec"]["alpha"]  # adaspec's side was measured (the models agree)
    m = rows[("m", 2)]
    assert not m["loaded"] and "MTP" in m["reason"] and m["tokens_per_s"] is None


def test_a_load_vllm_refuses_is_a_row_with_vllms_reason(tmp_path, tiny_target_dir):
    target = models.load_model(tiny_target_dir)
    run = VllmRun(
        target=str(tiny_target_dir),
        prompts=[[5, 6]],
        max_tokens=4,
        temperatures=(0.0,),
        gamma=3,
        max_model_len=64,
        batch_sizes=(1,),
    )
    out = measure(
        _fake_python(tmp_path, [1, 0, 0], fail_on="draft_model"),
        run,
        {"d": ("lm", str(tiny_target_dir), target)},
        target,
        tmp_path / "work",
        log=lambda m: None,
    )
    row = out["rows"][-1]
    assert not row["loaded"] and "vLLM failed: ValueError: vLLM refused this checkpoint" in row["reason"]


def test_a_failing_target_run_is_one_error_naming_the_log(tmp_path, tiny_target_dir):
    target = models.load_model(tiny_target_dir)
    run = VllmRun(
        target=str(tiny_target_dir), prompts=[[5, 6]], max_tokens=4, temperatures=(0.0,), gamma=3, max_model_len=64
    )
    with pytest.raises(AdaspecError, match=r"vLLM failed: .*\(log: .*vllm.log\)"):
        measure(sys.executable, run, {}, target, tmp_path / "work", log=lambda m: None)  # no vllm module here


def test_the_worker_imports_nothing_of_adaspec():
    source = Path(vllm_engine.WORKER).read_text()
    assert "import adaspec" not in source and "from adaspec" not in source
