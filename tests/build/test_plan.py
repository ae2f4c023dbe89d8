"""The pure choices of `adaspec build`: families, draft preset, EAGLE variant, split, winner."""

import pytest

from adaspec.data import Example
from adaspec.drafters import FAMILIES
from adaspec.errors import AdaspecError
from adaspec.models.servable import SERVABLE_HEAD_SIZES
from adaspec.recipes.build import plan


def test_families_are_what_vllm_serves_and_a_requested_unservable_one_is_refused():
    llama = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 2, "num_hidden_layers": 4}
    families, left_out = plan.choose_families(None, plan.serve_problems(llama, None))
    assert families == ["lm", "eagle", "medusa"] and set(left_out) == {"mtp", "dflash"}
    assert "only when --drafters names it" in left_out["dflash"]
    assert plan.choose_families(["dflash"], plan.serve_problems(llama, None))[0] == ["dflash"]
    neox = {**llama, "model_type": "gpt_neox"}  # vLLM's GPT-NeoX exposes no auxiliary hidden states
    with pytest.raises(AdaspecError, match="cannot serve dflash"):
        plan.choose_families(["dflash"], plan.serve_problems(neox, None))
    odd = {**llama, "num_attention_heads": 4}  # head size 16: no vLLM attention backend takes it
    problems = plan.serve_problems(odd, {"hidden_size": 48, "num_attention_heads": 2})
    assert plan.choose_families(None, problems)[0] == ["medusa"]
    with pytest.raises(AdaspecError, match="cannot serve eagle .* families it can serve here: medusa"):
        plan.choose_families(["eagle"], problems)
    assert plan.choose_families(["medusa", "lm"], plan.serve_problems(llama, None))[0] == ["medusa", "lm"]


def test_draft_preset_is_servable_and_at_most_a_quarter_of_the_target_width():
    from adaspec.models import PRESETS

    for width, preset in [
        (32, "llama-draft-xxs"),
        (192, "llama-draft-xxs"),
        (256, "llama-draft-xs"),
        (4096, "llama-draft-s"),
    ]:
        assert plan.draft_preset_for({"hidden_size": width}) == preset
        _, hidden, _, heads, _ = PRESETS[preset]
        assert hidden // heads in SERVABLE_HEAD_SIZES


def test_eagle3_only_where_vllm_reads_three_distinct_layers():
    options = FAMILIES["eagle"].train_options  # what a build trains an EAGLE head for γ with
    assert options(4, {"model_type": "llama", "num_hidden_layers": 8}) == {"variant": "eagle3", "ttt_steps": 4}
    assert options(4, {"model_type": "llama", "num_hidden_layers": 2})["variant"] == "eagle1"
    assert options(4, {"model_type": "gpt_neox", "num_hidden_layers": 8})["variant"] == "eagle1"


def test_split_is_seeded_disjoint_and_needs_one_training_batch():
    examples = [Example(f"p{i}", f"r{i}", {}) for i in range(30)]
    a = plan.split_examples(examples, 5, 4, 8, seed=0)
    assert a == plan.split_examples(examples, 5, 4, 8, seed=0) != plan.split_examples(examples, 5, 4, 8, seed=1)
    assert [len(a[k]) for k in ("train", "validation", "test")] == [21, 4, 5]
    assert sorted(ex.prompt for part in a.values() for ex in part) == sorted(ex.prompt for ex in examples)
    with pytest.raises(AdaspecError, match="fewer than one batch of 32"):
        plan.split_examples(examples, 5, 4, 32, seed=0)


def test_winner_is_measured_in_vllm_when_it_was():
    rows = [
        {"engine": "adaspec", "speedup": 1.5, "alpha": 0.5},
        {"engine": "vllm", "speedup": 1.1, "alpha": 0.4},
        {"engine": "vllm", "speedup": 1.1, "alpha": 0.6},
        {"engine": "vllm", "speedup": None, "alpha": 0.9},
    ]
    assert plan.best_row(rows) is rows[2]
    assert plan.best_row(rows[:1]) is rows[0]
    with pytest.raises(AdaspecError):
        plan.best_row([])
