"""Stage 4 of `adaspec build`: every trained drafter measured on the held-out test prompts.

adaspec's engine measures each drafter at every γ of --gammas (the same `evaluate` as `adaspec eval`, so a
row's α is what `adaspec eval` prints for that drafter and γ); vLLM, when installed, measures each at the γ
where it was fastest there. Results are stored per γ under eval/ and only drafters not yet measured are
measured again, so a resumed build redoes no finished measurement.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaspec.drafters import FAMILIES
from adaspec.errors import AdaspecError
from adaspec.io import atomic_write_json

if TYPE_CHECKING:
    from adaspec.recipes.build.command import Build


def _log(msg: str) -> None:
    print(f"[build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def family_of(name: str) -> str:
    """ "lm_kd" -> "lm": a build's run names are <family>_<method>."""
    return name.rsplit("_", 1)[0]


def settings(build: Build, gamma: int) -> Any:
    from adaspec.evaluation.evaluate import EvalSettings

    split = json.loads((build.data_dir / "split.json").read_text())
    return EvalSettings(
        None,
        "test",
        split["test"],
        gamma,
        0.0,
        build.opts.max_new_tokens,
        build.opts.seed,
        context=build.opts.max_length,
        loss_examples=split["test"],
        data=str(build.data_dir),
    )


def eval_command(build: Build, name: str, path: Path, gamma: int) -> str:
    """The `adaspec eval` command that measures the same drafter on the same prompts."""
    import shlex

    s = settings(build, gamma)
    family = family_of(name)
    source = ["--draft", str(path)] if FAMILIES[family].is_draft_model else ["--head", f"{family}={path}"]
    words = [
        "adaspec",
        "eval",
        "--target",
        build.opts.target,
        *source,
        "--data",
        str(build.data_dir),
        "--split",
        "test",
        "--n-prompts",
        str(s.n_prompts),
        "--gamma",
        str(gamma),
        "--max-new-tokens",
        str(s.max_new_tokens),
        "--context",
        str(s.context),
        "--seed",
        str(s.seed),
    ]
    if build.opts.chat_template:
        words += ["--chat-template", build.opts.chat_template]
    return shlex.join(words)


def _target_and_tokenizer(build: Build) -> tuple[Any, Any]:
    from adaspec.models import load_model, load_tokenizer

    o = build.opts
    return (
        load_model(o.target, trust_remote_code=o.trust_remote_code),
        load_tokenizer(o.target, trust_remote_code=o.trust_remote_code, chat_template=o.chat_template),
    )


def _load(name: str, path: Path, target: Any, tokenizer: Any) -> Any:
    from adaspec.drafters.loading import load_drafter
    from adaspec.models import load_model

    family = family_of(name)
    if FAMILIES[family].is_draft_model:
        return load_model(path)
    return load_drafter(family, path, target, tokenizer=tokenizer)


def check_budget(build: Build) -> None:
    """Refuse a --max-minutes whose share per training run cannot hold one training step: one target forward
    over a batch, a step's least cost, timed here before anything is trained."""
    minutes = build.run_minutes
    if minutes is None:
        return
    import torch

    target, _ = _target_and_tokenizer(build)
    ids = torch.zeros(build.opts.batch_size, build.opts.max_length, dtype=torch.long)
    t0 = time.perf_counter()
    with torch.no_grad():
        target(input_ids=ids)
    seconds = time.perf_counter() - t0
    if minutes * 60 < seconds:
        raise AdaspecError(
            f"--max-minutes {build.opts.max_minutes:g} ({minutes * 60:.2f} s per training run) "
            f"cannot fit one training step: one target forward over a batch of {build.opts.batch_size} x "
            f"{build.opts.max_length} tokens takes {seconds:.2f} s here"
        )


def adaspec_sweep(build: Build, runs: dict[str, Path]) -> dict[int, dict[str, Any]]:
    """γ -> evaluate()'s JSON over every drafter of `runs` (its "drafts" keyed by run name)."""
    from adaspec.evaluation.evaluate import evaluate
    from adaspec.models import model_fingerprint

    out: dict[int, dict[str, Any]] = {}
    target = tokenizer = None
    for gamma in build.opts.gammas:
        path = build.out / "eval" / f"gamma{gamma}.json"
        old = json.loads(path.read_text()) if path.exists() else {"drafts": {}}
        missing = [n for n in runs if n not in old["drafts"]]
        if missing:
            if target is None:
                target, tokenizer = _target_and_tokenizer(build)
            _log(f"measuring {', '.join(missing)} at γ = {gamma} in adaspec's engine")
            drafts = {n: _load(n, runs[n], target, tokenizer) for n in missing}
            local = Path(build.opts.target).is_dir()
            new = evaluate(
                target,
                drafts,
                tokenizer,
                settings(build, gamma),
                cache_dir=str(build.out / "eval" / "continuations"),
                target_fingerprint=model_fingerprint(build.opts.target) if local else None,
                log=_log,
            ).to_json()
            old = {**new, "drafts": {**old["drafts"], **new["drafts"]}}
            atomic_write_json(path, old)
        out[gamma] = {**old, "drafts": {n: old["drafts"][n] for n in runs}}
    return out


def best_gamma(sweep: dict[int, dict[str, Any]], name: str) -> int:
    return max(sweep, key=lambda g: (sweep[g]["drafts"][name]["measured_speedup"] or 0.0, -g))


def vllm_python(build: Build) -> str | None:
    """vLLM's python when this build measures in vLLM (None: adaspec's engine only, said in one line)."""
    from adaspec.serving.vllm_engine import find_vllm_python

    if build.opts.engine == "adaspec":
        return None
    try:
        return find_vllm_python(build.opts.vllm_python)
    except AdaspecError as exc:
        if build.opts.engine == "vllm":
            raise
        _log(f"speed is measured in adaspec's engine only: {exc}")
        return None


def vllm_rows(
    build: Build, runs: dict[str, Path], sweep: dict[int, dict[str, Any]], python: str | None
) -> dict[str, dict[str, Any]]:
    """name -> vLLM's row for that drafter at its best γ (batch 1, greedy); {} without vLLM."""
    if python is None:
        return {}
    from adaspec.evaluation.evaluate import prompt_ids
    from adaspec.serving.vllm_engine import VllmRun, measure

    by_gamma: dict[int, list[str]] = {}
    for name in runs:
        by_gamma.setdefault(best_gamma(sweep, name), []).append(name)
    rows: dict[str, dict[str, Any]] = {}
    target = tokenizer = None
    for gamma, names in sorted(by_gamma.items()):
        path = build.out / "eval" / f"vllm_gamma{gamma}.json"
        stored = json.loads(path.read_text()) if path.exists() else {"rows": []}
        have = {r["drafter"] for r in stored["rows"]}
        if not set(names) <= have:
            if target is None:
                target, tokenizer = _target_and_tokenizer(build)
            _log(f"measuring {', '.join(names)} at γ = {gamma} in vLLM")
            prompts, context = prompt_ids(settings(build, gamma), tokenizer, [target])
            run = VllmRun(
                target=build.opts.target,
                prompts=prompts,
                max_tokens=build.opts.max_new_tokens,
                temperatures=(0.0,),
                gamma=gamma,
                max_model_len=context,
                batch_sizes=(1,),
                eos_token_id=tokenizer.eos_token_id,
                seed=build.opts.seed,
                eager=build.opts.vllm_eager,
            )
            served = {n: (family_of(n), str(runs[n]), _load(n, runs[n], target, tokenizer)) for n in names}
            stored = measure(python, run, served, target, log=_log)
            atomic_write_json(path, stored)
        for row in stored["rows"]:
            if row["drafter"] in names:
                rows[row["drafter"]] = {**row, "gamma": gamma}
    return rows
