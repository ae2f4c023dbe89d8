"""The choices `adaspec build` makes, as pure functions: which families, which draft, which split, which winner."""

from __future__ import annotations

import random
from typing import Any

from adaspec.errors import AdaspecError

# build trains the drafter families of adaspec.drafters.FAMILIES in the registry's order, those marked
# build_opt_in only when --drafters names them. The registry is imported where it is used: it loads torch, and
# `adaspec build --help` (which imports this module) should not.
MAX_GAMMA = 16
MAX_HELD_OUT = 100_000
# what a build writes under --output (removed by --overwrite, nothing else is)
BUILD_FOLDERS = ("data", "cache", "runs", "eval", "export", "report.md", "results.json", "speed_vs_gamma.png")
# servable Llama drafts, smallest first: (preset, hidden size)
DRAFT_PRESETS = (("llama-draft-xxs", 32), ("llama-draft-xs", 64), ("llama-draft-s", 128))


def read_config(path: str, trust_remote_code: bool = False) -> dict[str, Any]:
    """A model's config as a dict (folder or hub id), one line when there is none."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code).to_dict()
    except (OSError, ValueError) as exc:
        raise AdaspecError(f"no model config at {path}: {str(exc).splitlines()[0]}") from exc


def serve_problems(target: dict[str, Any], draft: dict[str, Any] | None) -> dict[str, str | None]:
    """Per family, why vLLM cannot serve it on this target (None: it can; `Family.vllm_problem`). `draft`: the
    config of a given --draft-init, whose head size vLLM may not take (a built draft always has a servable one)."""
    from adaspec.drafters import FAMILIES

    return {name: f.vllm_problem(target, draft) for name, f in FAMILIES.items()}


def choose_families(requested: list[str] | None, problems: dict[str, str | None]) -> tuple[list[str], dict[str, str]]:
    """(families to train, why each family not trained is left out). A requested family vLLM cannot serve
    is refused in one line naming the families that can be."""
    from adaspec.drafters import FAMILIES

    opt_in = {name: f.build_opt_in for name, f in FAMILIES.items() if f.build_opt_in}
    servable = [f for f in FAMILIES if problems[f] is None]
    if requested is None:
        left_out = {f: f"vLLM cannot serve it: {problems[f]}" for f in FAMILIES if problems[f]}
        left_out.update({f: why for f, why in opt_in.items() if f in servable})
        return [f for f in servable if f not in opt_in], left_out
    for family in requested:
        if problems[family]:
            raise AdaspecError(
                f"vLLM cannot serve {family} drafters on this target: {problems[family]}; "
                f"families it can serve here: {', '.join(servable) or 'none'}"
            )
    return list(requested), {f: "not asked for (--drafters)" for f in FAMILIES if f not in requested}


def draft_preset_for(target: dict[str, Any]) -> str:
    """The largest servable Llama draft preset at most a quarter of the target's width (the smallest if none
    is): a draft step must cost a small fraction of the target's for drafting to pay."""
    width = int(target.get("hidden_size") or target.get("n_embd") or 0)
    fitting = [name for name, hidden in DRAFT_PRESETS if 4 * hidden <= width]
    return fitting[-1] if fitting else DRAFT_PRESETS[0][0]


def split_examples(examples: list, n_test: int, n_val: int, batch_size: int, seed: int) -> dict[str, list]:
    """A seeded shuffle cut into test, validation and train; refused when fewer than one training batch is
    left."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    check_train_batch(
        len(train),
        batch_size,
        f"{len(examples)} usable records leave {len(train)} for training "
        f"after {n_test} test and {n_val} validation records",
    )
    return {
        "train": [examples[i] for i in train],
        "validation": [examples[i] for i in val],
        "test": [examples[i] for i in test],
    }


def check_train_batch(n_train: int, batch_size: int, what: str | None = None) -> None:
    if n_train < batch_size:
        raise AdaspecError(
            f"{what or f'{n_train} training records'}, fewer than one batch of {batch_size}; lower "
            f"--test-examples / --val-examples / --batch-size or bring more data"
        )


def example_record(example: Any) -> dict[str, Any]:
    """An Example as the JSONL record the build's own data folder holds (prompt/response, or the chat)."""
    if "messages" in example.meta:
        return {"messages": example.meta["messages"]}
    return {"prompt": example.prompt, "response": example.response}


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest drafter, measured in vLLM when it was (what the user serves with), else in adaspec's
    engine; ties go to the higher α."""
    engine = "vllm" if any(r["engine"] == "vllm" and r.get("speedup") is not None for r in rows) else "adaspec"
    candidates = [r for r in rows if r["engine"] == engine and r.get("speedup") is not None]
    if not candidates:
        raise AdaspecError("no drafter could be measured; see the log above")
    return max(candidates, key=lambda r: (r["speedup"], r["alpha"]))
