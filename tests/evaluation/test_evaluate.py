import json
import math

import pytest
import torch
from helpers import replay_greedy_sd

from adaspec import cli, data, models
from adaspec.core import metrics
from adaspec.decoding import acceptance
from adaspec.errors import AdaspecError
from adaspec.evaluation.evaluate import EvalSettings
from adaspec.evaluation.evaluate import evaluate as evaluate_typed
from adaspec.evaluation.table import format_table
from adaspec.options import command_line
from adaspec.recipes.eval import EvalOptions, run_eval, unique_names


def evaluate(target, drafts, tokenizer, task, **kw):
    """`evaluate` with settings as keywords, as JSON (the schema `adaspec eval --json` writes)."""
    rest = {k: kw.pop(k) for k in ("cache_dir", "target_fingerprint", "log") if k in kw}
    return evaluate_typed(target, drafts, tokenizer, EvalSettings(task, **kw), **rest).to_json()


@pytest.fixture(scope="module")
def tok():
    texts = [e.prompt + e.response for e in data.load_task("gsm8k", "train", limit=200)]
    return data.train_tokenizer(texts, 320)


def noisy_copy(model, scale: float, seed: int = 1):
    """The same weights plus Gaussian noise of `scale` × each matrix's std: a draft that mostly agrees."""
    copy = models.build_model("tiny-neox", models.output_vocab_size(model), seed=0)
    copy.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in copy.parameters():
            if p.dim() > 1:
                p.add_(torch.randn(p.shape, generator=g) * scale * p.std())
    return copy


@pytest.fixture(scope="module")
def pair(tok):
    target = models.build_model("tiny-neox", len(tok), seed=0)
    return target, noisy_copy(target, 0.2)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, tok, pair):
    root = tmp_path_factory.mktemp("models")
    target, noisy = pair
    models.save_model(target, root / "target", tok)
    models.save_model(noisy, root / "noisy", tok)
    models.save_model(models.build_model("tiny-neox", len(tok), seed=7), root / "random")  # no tokenizer
    return root


def test_cli_end_to_end_writes_json(dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "eval.json"
    rc = cli.main(
        [
            "eval",
            "--target",
            str(dirs / "target"),
            "--draft",
            str(dirs / "noisy"),
            str(dirs / "random"),
            "--task",
            "gsm8k",
            "--n-prompts",
            "3",
            "--max-new-tokens",
            "16",
            "--gamma",
            "3",
            "--loss-examples",
            "4",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    for row in (
        "alpha drafted = accepted/drafted",
        "alpha = accepted/(accepted+rejected)",
        "tau",
        "speed-up measured",
        "analytic alpha, greedy",
        "accuracy",
        "noisy",
        "random",
    ):
        assert row in table
    result = json.loads(out.read_text())
    assert set(result) >= {"command", "argv", "config", "target", "drafts"}
    assert "--n-prompts 3" in result["command"] and "--gamma 3" in result["command"]
    cfg, tgt = result["config"], result["target"]
    assert cfg["n_prompts"] == 3 and cfg["gamma"] == 3 and cfg["max_prompt_length"] == 256 - 16
    assert tgt["quality_metric"] == "accuracy" and 0.0 <= tgt["quality"] <= 1.0
    assert len(tgt["per_prompt"]) == 3 and tgt["continuations"]["from_cache"] is False
    # the model folder is never written to: the cache lives in the user's cache folder
    assert tgt["continuations"]["cache_file"].startswith(str(tmp_path / "xdg" / "adaspec" / "eval"))
    assert not (dirs / "target" / "eval_cache").exists()
    assert tgt["stats"]["emitted"] == sum(r["generated_tokens"] for r in tgt["per_prompt"])
    assert math.isfinite(tgt["response_loss"]) and tgt["fingerprint"] == models.model_fingerprint(dirs / "target")
    assert list(result["drafts"]) == ["noisy", "random"]
    keys = {
        "path",
        "params",
        "response_loss",
        "alpha_drafted",
        "alpha",
        "tau",
        "mean_gamma",
        "position_acceptance",
        "c",
        "measured_speedup",
        "measured_speedup_pooled",
        "theoretical_speedup",
        "tokens_per_s",
        "same_as_target",
        "analytic",
        "stats",
        "per_prompt",
    }
    for name, d in result["drafts"].items():
        assert set(d) >= keys, name
        s = d["stats"]
        assert s["drafted"] > 0 and s["sequences"] == 3
        assert d["alpha_drafted"] == pytest.approx(s["accepted"] / s["drafted"])
        assert d["alpha"] == pytest.approx(s["accepted"] / (s["accepted"] + s["rejections"]))
        assert d["alpha"] >= d["alpha_drafted"]
        assert d["tau"] == pytest.approx(s["emitted"] / s["target_forwards"])
        assert d["theoretical_speedup"] == pytest.approx(metrics.theoretical_speedup(d["alpha"], 3, d["c"]))
        assert len(d["position_acceptance"]) == 3
        assert set(d["analytic"]) >= {"alpha_greedy", "alpha_sampling", "n_tokens"}
        assert d["same_as_target"] == 3  # greedy speculative decoding is the target's greedy decoding
        assert d["response_loss"] > 0
    # the untrained random draft agrees less than the near-copy of the target
    noisy, rand = result["drafts"]["noisy"], result["drafts"]["random"]
    assert noisy["alpha"] > rand["alpha"]
    assert noisy["analytic"]["alpha_greedy"] > rand["analytic"]["alpha_greedy"]


def test_empirical_alpha_tested_matches_analytic_greedy_alpha(tok, pair, tmp_path):
    target, draft = pair
    n, max_new, gamma = 12, 48, 4
    r = evaluate(
        target,
        {"noisy": draft},
        tok,
        "gsm8k",
        n_prompts=n,
        gamma=gamma,
        max_new_tokens=max_new,
        loss_examples=2,
        cache_dir=tmp_path,
    )
    d = r["drafts"]["noisy"]
    a_emp, a_ana = d["alpha"], d["analytic"]["alpha_greedy"]
    assert d["analytic"]["n_tokens"] == n * max_new
    assert 0.2 < a_ana < 0.9 and 0.2 < a_emp < 0.9  # mid-range: the comparison means something
    assert abs(a_emp - a_ana) < 0.05
    # alpha = accepted/drafted also charges the never-tested tokens after a rejection: much lower
    assert d["alpha_drafted"] < a_emp - 0.1

    # The residual difference is exactly the positions greedy SD never tests (bonus tokens after gamma
    # agreements): replaying the SD schedule on the per-position agreements reproduces its counters.
    conts = acceptance.Continuations.from_json(
        json.loads(open(r["target"]["continuations"]["cache_file"]).read())["continuations"]
    )
    totals = [0, 0, 0]
    with torch.inference_mode():
        for seq, plen in zip(conts.sequences, conts.prompt_lengths):
            assert len(seq) - plen == max_new  # no early EOS, so the schedule below is the whole story
            ids = torch.tensor([seq])
            pred_t = target(ids).logits[0, plen - 1 : -1].argmax(-1)
            pred_d = draft(ids).logits[0, plen - 1 : -1].argmax(-1)
            assert torch.equal(pred_t, ids[0, plen:])
            agree = (pred_t == pred_d).tolist()
            for i, x in enumerate(replay_greedy_sd(lambda r, k: agree[r + k - 1], gamma, max_new)):
                totals[i] += x
    s = d["stats"]
    assert (s["drafted"], s["accepted"], s["rejections"]) == tuple(totals)
    print(
        f"alpha_tested {a_emp:.4f} vs analytic greedy {a_ana:.4f} on {n * max_new} tokens "
        f"(alpha accepted/drafted {d['alpha']:.4f})"
    )


def test_continuation_cache_is_reused(tok, pair, tmp_path):
    target, draft = pair
    calls = []
    original = target.generate

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    target.generate = counting
    try:
        kw = dict(
            n_prompts=2,
            gamma=2,
            max_new_tokens=8,
            loss_examples=2,
            cache_dir=tmp_path / "c",
            target_fingerprint="abc",
            warmup=False,
        )
        first = evaluate(target, {"d": draft}, tok, "gsm8k", **kw)
        assert len(calls) == 1 and first["target"]["continuations"]["from_cache"] is False
        second = evaluate(target, {"d": draft, "e": draft}, tok, "gsm8k", **kw)
        assert len(calls) == 1 and second["target"]["continuations"]["from_cache"] is True
        assert second["drafts"]["d"]["analytic"] == first["drafts"]["d"]["analytic"]
        # anything that shapes the continuations makes a new entry
        evaluate(target, {"d": draft}, tok, "gsm8k", **{**kw, "max_new_tokens": 6})
        evaluate(target, {"d": draft}, tok, "gsm8k", **{**kw, "target_fingerprint": "other"})
        assert len(calls) == 3
        assert len(list((tmp_path / "c").glob("continuations-*.json"))) == 3
    finally:
        del target.generate


def test_sampling_and_left_truncated_prompts(tok, pair):
    target, draft = pair
    r = evaluate(
        target,
        {"d": draft},
        tok,
        "gsm8k",
        n_prompts=2,
        gamma=3,
        temperature=1.0,
        max_new_tokens=236,
        loss_examples=2,
        top_p=0.9,
        seed=3,
        warmup=False,
    )
    cfg, d = r["config"], r["drafts"]["d"]
    assert cfg["max_prompt_length"] == 20 and cfg["prompts_truncated"] == 2
    assert all(row["prompt_tokens"] == 20 for row in r["target"]["per_prompt"])
    assert 0.0 <= d["alpha_drafted"] <= d["alpha"] <= 1.0
    assert d["analytic"]["sampling_temperature"] == 1.0 and 0.0 < d["analytic"]["alpha_sampling"] <= 1.0
    assert "outputs identical" not in format_table(r)
    with pytest.raises(AdaspecError, match="no room for a prompt"):
        evaluate(target, {"d": draft}, tok, "gsm8k", n_prompts=1, max_new_tokens=256)


def test_context_caps_prompts_below_the_model_context(tok, pair):
    # a training length below the models' context: prompts are cut to it, not to the config's 256
    target, draft = pair
    r = evaluate(
        target,
        {"d": draft},
        tok,
        "gsm8k",
        n_prompts=2,
        gamma=3,
        max_new_tokens=8,
        loss_examples=2,
        context=24,
        warmup=False,
    )
    cfg = r["config"]
    assert cfg["context"] == 24 and cfg["max_prompt_length"] == 16 and cfg["prompts_truncated"] == 2
    assert all(row["prompt_tokens"] == 16 for row in r["target"]["per_prompt"])
    assert all(row["prompt_tokens"] + row["generated_tokens"] <= 24 for row in r["target"]["per_prompt"])
    wide = evaluate(
        target, {"d": draft}, tok, "gsm8k", n_prompts=1, max_new_tokens=8, loss_examples=1, context=10_000, warmup=False
    )
    assert wide["config"]["context"] == 256  # never beyond what the models hold
    for bad in (0, -3, 2.5, True):
        with pytest.raises(AdaspecError, match="context must be an integer >= 1"):
            evaluate(target, {"d": draft}, tok, "gsm8k", n_prompts=1, context=bad)
    with pytest.raises(AdaspecError, match="no room for a prompt"):
        evaluate(target, {"d": draft}, tok, "gsm8k", n_prompts=1, max_new_tokens=8, context=8)


def _opts(dirs, **kw):
    base = dict(
        target=str(dirs / "target"), draft=[str(dirs / "noisy")], n_prompts=1, max_new_tokens=4, loss_examples=1
    )
    return EvalOptions(**{**base, **kw})


def test_clear_errors(dirs, tok, tmp_path, capsys):
    with pytest.raises(AdaspecError, match="draft model directory not found"):
        run_eval(_opts(dirs, draft=[str(dirs / "noisy"), str(tmp_path / "missing")]))
    small = tmp_path / "small"
    models.save_model(models.build_model("tiny-neox", len(tok) - 40, seed=0), small)
    with pytest.raises(AdaspecError, match="different vocabulary sizes"):
        run_eval(_opts(dirs, draft=[str(small)]))
    other_tok = data.train_tokenizer([e.prompt for e in data.load_task("mbpp", "train", limit=40)], len(tok))
    models.save_model(models.build_model("tiny-neox", len(other_tok), seed=0), tmp_path / "other", other_tok)
    with pytest.raises(AdaspecError, match="tokenizers have different vocabularies"):
        run_eval(_opts(dirs, draft=[str(tmp_path / "other")]))
    for bad, match in (
        ({"n_prompts": 0}, "--n-prompts must be >= 1"),
        ({"gamma": 0}, "--gamma"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"draft": []}, "at least one --draft"),
        ({"task": "nope"}, "unknown task"),
        ({"context": 4}, r"--context \(4\) must exceed --max-new-tokens \(4\)"),
    ):
        with pytest.raises(AdaspecError, match=match):
            _opts(dirs, **bad)
    with pytest.raises(AdaspecError, match="n_prompts must be an integer >= 1"):
        evaluate(
            models.build_model("tiny-neox", len(tok)),
            {"d": models.build_model("tiny-neox", len(tok))},
            tok,
            "gsm8k",
            n_prompts=0,
        )
    assert cli.main(["eval", "--target", str(dirs / "target"), "--draft", str(dirs / "noisy"), "--n-prompts", "0"]) == 2
    assert "--n-prompts must be >= 1" in capsys.readouterr().err


def test_names_and_command_line(dirs):
    assert unique_names(["runs/kd/final", "runs/adaspec/final", "x/draft"]) == ["kd/final", "adaspec/final", "draft"]
    assert unique_names(["a/d", "a/d"]) == ["a/d", "a/d#2"]
    opts = _opts(dirs, compare=[str(dirs / "random")], temperature=0.5, cache=False)
    assert opts.draft_paths == [str(dirs / "noisy"), str(dirs / "random")]
    line = command_line("eval", opts)
    assert line.startswith("adaspec eval --target ") and "--compare" in line and "--no-cache" in line
    assert "--temperature 0.5" in line and "--gamma" not in line


def test_eval_measures_a_head_beside_a_draft(dirs, tmp_path, capsys):
    from adaspec.drafters.medusa.export import save_medusa
    from adaspec.drafters.medusa.model import build_medusa

    target = models.load_model(dirs / "target")
    save_medusa(build_medusa(target, 2, 1), tmp_path / "medusa", target)
    out = tmp_path / "eval.json"
    rc = cli.main(
        [
            "eval",
            "--target",
            str(dirs / "target"),
            "--draft",
            str(dirs / "noisy"),
            "--head",
            f"medusa={tmp_path / 'medusa'}",
            "--n-prompts",
            "2",
            "--max-new-tokens",
            "8",
            "--gamma",
            "2",
            "--loss-examples",
            "2",
            "--no-cache",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    head = result["drafts"]["medusa:medusa"]
    assert head["same_as_target"] == 2 and head["params"] > 0 and head["path"] == str(tmp_path / "medusa")
    assert head["response_loss"] is None  # a head is no language model of its own
    assert 0 <= head["analytic"]["alpha_greedy"] <= 1 and head["analytic"]["n_tokens"] > 0
    assert result["drafts"]["noisy"]["analytic"]["alpha_greedy"] is not None
    assert "medusa:medusa" in capsys.readouterr().out
