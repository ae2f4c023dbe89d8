"""`adaspec eval`: drafts measured against a target, side by side (adaspec.evaluation.evaluate)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedModel

from adaspec.data import chat
from adaspec import data as data_lib
from adaspec.models.lean import LEAN
from adaspec.core.sampling import check_sampling
from adaspec.core.tree_shape import MAX_TREE_DEPTH
from adaspec.decoding.drafter import Drafter
from adaspec.drafters import HEADS
from adaspec.drafters.loading import load_drafter
from adaspec.errors import AdaspecError
from adaspec.evaluation.evaluate import EvalSettings, evaluate, prompt_ids
from adaspec.evaluation.table import format_table, format_vllm_table
from adaspec.io import atomic_write_json, user_cache_dir
from adaspec.models import (check_vocab_compatible, load_model, load_tokenizer, model_fingerprint,
                            saved_tokenizer)
from adaspec.options import check_finite, command_line, helptext, strict_field
from adaspec.safety import check_output
from adaspec.serving.vllm_engine import VllmRun, find_vllm_python, measure


MAX_BATCH = 256  # requests vLLM holds at once: its max_num_seqs default


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


@dataclass(kw_only=True)
class EvalOptions:
    """Measure drafts against a target: empirical α (accepted/drafted and over judged tokens), τ, c and
    speed-up from real speculative decoding; analytic α from parallel forwards on the target's cached
    greedy continuations; the target's task quality and every model's response cross-entropy.
    Several --draft directories are compared side by side."""

    target: str = field(metadata=helptext("target model directory or hub id (its tokenizer is used)"))
    draft: list[str] | None = field(default=None, metadata=helptext(
        "draft model directories; several are compared side by side"))
    head: list[str] | None = field(default=None, metadata=helptext(
        f"heads trained by train-head, as KIND=DIR (KIND: {', '.join(HEADS)}), measured beside the drafts"))
    decode_path: Literal["auto", "lean", "hf"] = field(default="auto", metadata=helptext(
        "lean: adaspec's minimal forward (Llama, GPT-NeoX, GPT-2); hf: transformers'; auto: lean where the "
        "family supports it. The target alone and every draft use the same path"))
    compare: list[str] | None = field(default=None, metadata=helptext(
        "more drafts to compare side by side (appended to --draft)"))
    task: str = field(default="gsm8k", metadata=helptext(f"task ({', '.join(data_lib.TASKS)})"))
    data: str | None = field(default=None, metadata=helptext(
        "a JSONL file of your own (or a folder of <split>.jsonl, or hub:<dataset>) instead of --task; "
        "it has no task score (quality metric none)"))
    prompt_field: str = field(default="prompt", metadata=helptext("prompt field of --data records"))
    response_field: str = field(default="response", metadata=helptext("response field of --data records"))
    chat_template: str | None = field(default=None, metadata=helptext(
        f"chat template for chat records: a Jinja file or a built-in name ({', '.join(chat.BUILTIN_TEMPLATES)}); "
        "replaces the target tokenizer's own"))
    split: Literal["train", "validation", "test"] = field(default="test", metadata=helptext("task split"))
    n_prompts: int = field(default=32, metadata=helptext("evaluate the first N prompts of the split"))
    gamma: int = field(default=5, metadata=helptext("draft tokens per speculative step (the max when adaptive)"))
    temperature: float = field(default=0.0, metadata=helptext("sampling temperature; 0 = greedy"))
    top_p: float = field(default=1.0, metadata=helptext("nucleus sampling mass in (0, 1] (the analytic α ignores it)"))
    max_new_tokens: int = field(default=128, metadata=helptext("tokens generated per prompt"))
    context: int | None = field(default=None, metadata=helptext(
        "positions a prompt plus its continuation may use (unset: the smallest model context); set it to the "
        "training --max-length so drafts are not measured at positions they never trained on"))
    adaptive_gamma: bool = field(default=False, metadata=helptext(
        "choose gamma per step in [1, --gamma] from the running acceptance rate and measured cost"))
    seed: int = field(default=0, metadata=helptext("sampling seed (prompt i uses seed + i)"))
    loss_examples: int = field(default=64, metadata=helptext(
        "examples of the split whose reference responses score each model's cross-entropy"))
    json: str | None = field(default=None, metadata=helptext(
        "write every counter and derived value, per draft, and the command line to this JSON file"))
    cache_dir: str | None = field(default=None, metadata=helptext(
        "folder for the target's greedy continuations (named by the target's fingerprint); unset: "
        "$XDG_CACHE_HOME/adaspec/eval, else ~/.cache/adaspec/eval"))
    cache: bool = field(default=True, metadata=helptext("reuse/store the target's continuations on disk"))
    data_dir: str | None = field(default=None, metadata=helptext("folder of the built-in task data"))
    device: str | None = field(default=None, metadata=helptext("torch device; unset: cuda when available"))
    trust_remote_code: bool = field(default=False, metadata=helptext("allow a hub model's own code to run"))
    strict: bool = strict_field()
    engine: Literal["adaspec", "vllm"] = field(default="adaspec", metadata=helptext(
        "vllm: also decode the same prompts in vLLM (its target alone and with each drafter, exported to the "
        "layout it loads) and report its own counters and tokens/s beside adaspec's; needs `make vllm`"))
    vllm_python: str | None = field(default=None, metadata=helptext(
        "python of vLLM's environment (unset: $ADASPEC_VLLM_PYTHON, else .venv-vllm)"))
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8], metadata=helptext(
        "with --engine vllm: requests vLLM decodes together (1: one prompt at a time)"))
    vllm_eager: bool = field(default=False, metadata=helptext(
        "with --engine vllm: skip vLLM's model compilation (starts ~45 s sooner per model, decodes slower than "
        "a server does)"))

    def __post_init__(self) -> None:
        if not self.draft and not self.head:
            raise AdaspecError("give at least one --draft or --head")
        for spec in self.head or []:
            kind, sep, path = spec.partition("=")
            if not sep or kind not in HEADS or not path:
                raise AdaspecError(f"--head must be KIND=DIR with KIND {', '.join(HEADS[:-1])} or {HEADS[-1]}, got "
                                   f"{spec!r}")
        if self.data is None and self.task not in data_lib.TASKS:
            raise AdaspecError(f"unknown task {self.task!r}; choose one of {', '.join(data_lib.TASKS)}")
        if self.split not in data_lib.SPLITS:
            raise AdaspecError(f"unknown split {self.split!r}; choose one of {', '.join(data_lib.SPLITS)}")
        if self.context is not None and self.context <= self.max_new_tokens:
            raise AdaspecError(f"--context ({self.context}) must exceed --max-new-tokens ({self.max_new_tokens})")
        for name in ("n_prompts", "gamma", "max_new_tokens", "loss_examples"):
            if getattr(self, name) < 1:
                raise AdaspecError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.gamma > MAX_TREE_DEPTH:  # a chain is a tree of depth γ
            raise AdaspecError(f"--gamma must be in 1..{MAX_TREE_DEPTH}, got {self.gamma}")
        if not self.batch_sizes or any(not 1 <= b <= MAX_BATCH for b in self.batch_sizes):
            raise AdaspecError(f"--batch-sizes must be in 1..{MAX_BATCH}, got {self.batch_sizes}")
        check_finite(self)
        check_sampling(self.temperature, self.top_p)
        if self.chat_template is not None:
            chat.resolve_template(self.chat_template)

    @property
    def draft_paths(self) -> list[str]:
        return list(self.draft or []) + list(self.compare or [])


def _is_local(path: str) -> bool:
    return Path(path).exists() or path.startswith((".", "/", "~"))


def run_eval(opts: EvalOptions) -> int:
    paths = opts.draft_paths
    for path in [opts.target, *paths]:  # fail before loading anything large
        if _is_local(path) and not Path(path).is_dir():
            role = "target" if path == opts.target else "draft"
            raise AdaspecError(f"{role} model directory not found: {path}")
    if opts.json:
        check_output(opts.json, {"target": opts.target, "--data": opts.data, **{f"draft {p}": p for p in paths},
                                 **{f"head {h}": h.partition("=")[2] for h in opts.head or []}},
                     flag="--json", kind="file")
    vllm_python = find_vllm_python(opts.vllm_python) if opts.engine == "vllm" else None  # before any work
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    log = lambda msg: print(f"[eval] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    target = load_model(opts.target, trust_remote_code=opts.trust_remote_code, device=device)
    tokenizer = load_tokenizer(opts.target, trust_remote_code=opts.trust_remote_code,
                               chat_template=opts.chat_template)
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
    settings = EvalSettings(None if opts.data else opts.task, opts.split, opts.n_prompts, opts.gamma, opts.temperature,
                            opts.max_new_tokens, opts.seed, top_p=opts.top_p, adaptive_gamma=opts.adaptive_gamma,
                            context=opts.context, loss_examples=opts.loss_examples, data_dir=opts.data_dir,
                            data=opts.data, prompt_field=opts.prompt_field, response_field=opts.response_field,
                            lean=LEAN[opts.decode_path])
    result = evaluate(target, drafts, tokenizer, settings, cache_dir=cache_dir, target_fingerprint=fingerprint,
                      log=log).to_json()
    result = {"command": command_line("eval", opts), "argv": sys.argv, **result}
    result["target"]["path"] = opts.target
    for name, (_, path) in sources.items():
        result["drafts"][name]["path"] = path
    print(format_table(result))
    if vllm_python is not None:
        prompts, context = prompt_ids(settings, tokenizer, [target, *(d for d in drafts.values()
                                                                    if isinstance(d, PreTrainedModel))])
        run = VllmRun(target=opts.target, prompts=prompts, max_tokens=opts.max_new_tokens,
                      temperatures=(opts.temperature,), gamma=opts.gamma, max_model_len=context,
                      batch_sizes=tuple(opts.batch_sizes), eos_token_id=tokenizer.eos_token_id, seed=opts.seed,
                      eager=opts.vllm_eager)
        served = {name: (kind, path, drafts[name]) for name, (kind, path) in sources.items()}
        result["vllm"] = measure(vllm_python, run, served, target)
        print(format_vllm_table(result["vllm"]))
    if opts.json:
        replaced = Path(opts.json).exists()
        atomic_write_json(opts.json, result)
        log(f"wrote {opts.json}" + (" (replacing the file that was there)" if replaced else ""))
    return 0
