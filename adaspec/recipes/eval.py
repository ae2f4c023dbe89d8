"""`adaspec eval`: drafts measured against a target, side by side (adaspec.evaluation.evaluate)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import PreTrainedModel

from adaspec.decoding.drafter import Drafter
from adaspec.drafters.loading import load_drafter
from adaspec.errors import AdaspecError
from adaspec.evaluation.evaluate import EvalSettings, evaluate, prompt_ids
from adaspec.evaluation.table import format_table, format_vllm_table
from adaspec.io import atomic_write_json, user_cache_dir
from adaspec.models import check_vocab_compatible, load_model, load_tokenizer, model_fingerprint, saved_tokenizer
from adaspec.models.lean import LEAN
from adaspec.options import command_line
from adaspec.recipes.eval_options import EvalOptions
from adaspec.safety import check_output
from adaspec.serving.vllm_engine import VllmRun, find_vllm_python, measure


def unique_names(paths: list[str]) -> list[str]:
    """Shortest path suffixes that tell the drafts apart ("kd/final", "adaspec/final")."""
    parts = [Path(p).resolve().parts if Path(p).exists() else Path(p).parts for p in paths]
    names = []
    for i, p in enumerate(parts):
        for k in range(1, len(p) + 1):
            name = "/".join(p[-k:])
            if all("/".join(q[-k:]) != name for j, q in enumerate(parts) if j != i) or k == len(p):
                break
        names.append(name)
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # the same path given twice
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}#{seen[name]}"
    return names


def _is_local(path: str) -> bool:
    return Path(path).exists() or path.startswith((".", "/", "~"))


# The eval command top to bottom: load, measure with `evaluate`, print, write JSON, optionally vLLM.
def run_eval(opts: EvalOptions) -> int:
    paths = opts.draft_paths
    for path in [opts.target, *paths]:  # fail before loading anything large
        if _is_local(path) and not Path(path).is_dir():
            role = "target" if path == opts.target else "draft"
            raise AdaspecError(f"{role} model directory not found: {path}")
    if opts.json:
        check_output(
            opts.json,
            {
                "target": opts.target,
                "--data": opts.data,
                **{f"draft {p}": p for p in paths},
                **{f"head {h}": h.partition("=")[2] for h in opts.head or []},
            },
            flag="--json",
            kind="file",
        )
    vllm_python = find_vllm_python(opts.vllm_python) if opts.engine == "vllm" else None  # before any work
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    log = lambda msg: print(f"[eval] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    target = load_model(opts.target, trust_remote_code=opts.trust_remote_code, device=device)
    tokenizer = load_tokenizer(opts.target, trust_remote_code=opts.trust_remote_code, chat_template=opts.chat_template)
    drafts: dict[str, PreTrainedModel | Drafter] = {}
    sources: dict[str, tuple[str, str]] = {}  # name -> (drafter family, folder)
    for name, path in zip(unique_names(paths), paths):
        draft = load_model(path, trust_remote_code=opts.trust_remote_code, device=device)
        draft_tokenizer = saved_tokenizer(path, opts.trust_remote_code)
        check_vocab_compatible(target, draft, tokenizer, draft_tokenizer, names=("target", f"draft {path}"))
        drafts[name], sources[name] = draft, ("lm", path)
    for spec in opts.head or []:
        kind, _, path = spec.partition("=")
        name = f"{kind}:{Path(path).name}"
        drafts[name] = load_drafter(kind, path, target, strict=opts.strict, tokenizer=tokenizer)
        sources[name] = (kind, path)
    local = _is_local(opts.target)
    fingerprint = model_fingerprint(opts.target) if local else None
    cache_dir = None
    if opts.cache:
        cache_dir = opts.cache_dir or str(user_cache_dir() / "eval")
    settings = EvalSettings(
        None if opts.data else opts.task,
        opts.split,
        opts.n_prompts,
        opts.gamma,
        opts.temperature,
        opts.max_new_tokens,
        opts.seed,
        top_p=opts.top_p,
        adaptive_gamma=opts.adaptive_gamma,
        context=opts.context,
        loss_examples=opts.loss_examples,
        data_dir=opts.data_dir,
        data=opts.data,
        prompt_field=opts.prompt_field,
        response_field=opts.response_field,
        lean=LEAN[opts.decode_path],
    )
    result = evaluate(
        target, drafts, tokenizer, settings, cache_dir=cache_dir, target_fingerprint=fingerprint, log=log
    ).to_json()
    result = {"command": command_line("eval", opts), "argv": sys.argv, **result}
    result["target"]["path"] = opts.target
    for name, (_, path) in sources.items():
        result["drafts"][name]["path"] = path
    print(format_table(result))
    if vllm_python is not None:
        prompts, context = prompt_ids(
            settings, tokenizer, [target, *(d for d in drafts.values() if isinstance(d, PreTrainedModel))]
        )
        run = VllmRun(
            target=opts.target,
            prompts=prompts,
            max_tokens=opts.max_new_tokens,
            temperatures=(opts.temperature,),
            gamma=opts.gamma,
            max_model_len=context,
            batch_sizes=tuple(opts.batch_sizes),
            eos_token_id=tokenizer.eos_token_id,
            seed=opts.seed,
            eager=opts.vllm_eager,
        )
        served = {name: (kind, path, drafts[name]) for name, (kind, path) in sources.items()}
        result["vllm"] = measure(vllm_python, run, served, target)
        print(format_vllm_table(result["vllm"]))
    if opts.json:
        replaced = Path(opts.json).exists()
        atomic_write_json(opts.json, result)
        log(f"wrote {opts.json}" + (" (replacing the file that was there)" if replaced else ""))
    return 0
