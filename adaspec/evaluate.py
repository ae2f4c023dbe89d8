"""`adaspec eval`: how well drafts serve a target, measured three ways, side by side.

1. Empirical: real speculative decoding of the split's prompts (greedy by default, or sampling at
   --temperature/--top-p), counters merged over prompts. Two acceptance rates are reported because they
   answer different questions:
   - alpha = accepted / drafted (the headline convention, vLLM's). Draft tokens after the first rejection
     of a step are counted as rejected although the target never judged them, so it falls as γ grows.
   - alpha_tested = accepted / (accepted + rejected steps): the acceptance probability of the tokens the
     target actually judged, the per-token α of Leviathan et al. that the analytic α below estimates
     (SpecStats.alpha_geometric). The theoretical speed-up S uses this one.
   The target alone decodes the same prompts, interleaved with the speculative runs, for the measured
   speed-up (median over prompts of the per-prompt ratio of wall time per token, prefill included).
2. Analytic: on the target's own greedy continuations, one parallel forward per model gives the greedy α
   (top-1 agreement) and the sampling α (mean Σ min(p, q) = 1 − TVD, at --temperature or 1 when greedy;
   top-p is ignored), see adaspec.acceptance. The continuations are cached on disk, keyed by the target's
   fingerprint and everything that shapes them, so comparing many drafts generates them once.
   Greedy alpha_tested and the analytic greedy α score the same positions with the same contexts, except
   that greedy SD never tests the bonus token that follows γ accepted proposals: replaying SD's schedule
   on the per-position agreements reproduces its counters exactly (tests/test_evaluate.py), so their
   difference is the agreement at bonus positions, not noise or a bug.
3. Meaning: the task quality of the target's outputs (SD is lossless, so this is the quality of every
   speculative run too) and the mean cross-entropy per response token of the target and of each draft on
   the split's reference responses (the target must be the better model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec import acceptance, quality
from adaspec import data as data_lib
from adaspec.errors import AdaspecError
from adaspec.metrics import SpecStats, theoretical_speedup
from adaspec.models import (
    check_vocab_compatible,
    count_params,
    load_model,
    load_tokenizer,
    model_fingerprint,
)
from adaspec.speculative import speculative_generate, target_only_generate
from adaspec.train import encode, validation_loss

CACHE_FORMAT = 1
# context assumed for models whose config names none (the response-loss encoding needs a length)
FALLBACK_CONTEXT = 2048
Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- helpers

def context_length(model: PreTrainedModel) -> int | None:
    """Positions the model can attend to (None when its config does not say)."""
    n = getattr(model.config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def weights_fingerprint(model: PreTrainedModel) -> str:
    """Hash of a loaded model's config and parameters, for callers that have no checkpoint path."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


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


def _median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def _clean(x: Any) -> Any:
    """NaN becomes None, recursively, so the JSON is standard."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _sampling_checks(temperature: float, top_p: float) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise AdaspecError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise AdaspecError(f"top_p must be in (0, 1], got {top_p}")


# -------------------------------------------------------------------------------------- continuations

def cached_continuations(target: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int,
                         eos_token_id: int | None, pad_token_id: int, cache_dir: str | os.PathLike | None,
                         key_fields: dict[str, Any], log: Log | None = None
                         ) -> tuple[acceptance.Continuations, dict[str, Any]]:
    """The target's greedy continuations of `prompts`, read from `cache_dir` when an entry matches.

    The key hashes `key_fields` (target fingerprint, task, split, n_prompts, max_new_tokens, max prompt
    length) and the prompt ids themselves, so a changed tokenizer or data file never reuses stale text.
    """
    fields = dict(key_fields, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id, format=CACHE_FORMAT,
                  prompts_sha=hashlib.sha256(json.dumps(prompts).encode()).hexdigest()[:16])
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"continuations-{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == fields:
                conts = acceptance.Continuations.from_json(stored["continuations"])
                return conts, {"cache_file": str(path), "from_cache": True}
        except (OSError, ValueError, KeyError):
            pass  # unreadable entry: regenerate and overwrite it
    if log:
        log(f"generating the target's greedy continuations of {len(prompts)} prompts")
    conts = acceptance.greedy_continuations(target, prompts, max_new_tokens, eos_token_id, pad_token_id)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"key": fields, "continuations": conts.to_json()}))
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old entry or the whole new one
    return conts, {"cache_file": str(path) if path else None, "from_cache": False}


# ------------------------------------------------------------------------------------------ the API

def evaluate(target: PreTrainedModel, drafts: dict[str, PreTrainedModel], tokenizer: PreTrainedTokenizerBase,
             task: str, split: str = "test", n_prompts: int = 32, gamma: int = 5, temperature: float = 0.0,
             max_new_tokens: int = 128, seed: int = 0, *, top_p: float = 1.0, adaptive_gamma: bool = False,
             context: int | None = None, cache_dir: str | os.PathLike | None = None,
             target_fingerprint: str | None = None, loss_examples: int = 64, data_dir: str | os.PathLike | None = None, warmup: bool = True,
             log: Log | None = None) -> dict[str, Any]:
    """Evaluate each draft against `target` on the first `n_prompts` prompts of a task split.

    Models must already sit on one device and share `tokenizer`'s ids. `context` caps the positions a
    prompt and its continuation may use (None: the smallest model context; pass the training length so
    no draft is measured at positions it never trained on); prompts longer than that context minus
    `max_new_tokens` are cut from the left, and the reference responses for the loss are encoded to it. `cache_dir` (None: no cache) holds the target's
    greedy continuations; `target_fingerprint` names the target there (default: a hash of its weights).
    Returns a JSON-ready dict (undefined values are None):
    - "config": the settings, the context, the max prompt length and how many prompts were cut, versions.
    - "target": fingerprint, params, response_loss (mean CE per reference response token), quality_metric
      and quality (mean over prompts of its outputs), tokens_per_s alone, continuations (cache file,
      from_cache, n_tokens), stats (SpecStats.to_dict of the target-only runs), per_prompt (text, quality,
      time_s, ...).
    - "drafts": name -> params, response_loss, alpha (accepted/drafted), alpha_tested (accepted /
      (accepted + rejections)), tau, mean_gamma, position_acceptance, c, measured_speedup (median over
      prompts of target-alone time per token / speculative time per token, prefill included),
      measured_speedup_pooled (the same over all tokens), theoretical_speedup (S at alpha_tested, gamma and
      the measured c), tokens_per_s, same_as_target (prompts whose speculative output equals the target's
      alone: all of them when greedy), analytic (alpha_greedy, alpha_sampling, n_tokens,
      sampling_temperature), stats (every raw counter), per_prompt.
    """
    if not drafts:
        raise AdaspecError("no draft to evaluate")
    if task not in data_lib.TASKS:
        raise AdaspecError(f"unknown task {task!r}; choose one of: {', '.join(data_lib.TASKS)}")
    for name, value in (("n_prompts", n_prompts), ("gamma", gamma), ("max_new_tokens", max_new_tokens),
                        ("loss_examples", loss_examples), ("context", 1 if context is None else context)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise AdaspecError(f"{name} must be an integer >= 1, got {value!r}")
    _sampling_checks(temperature, top_p)
    for name, draft in drafts.items():
        check_vocab_compatible(target, draft, tokenizer, tokenizer, names=("target", f"draft {name!r}"))
    contexts = [c for c in (context_length(m) for m in [target, *drafts.values()]) if c is not None]
    contexts += [context] if context is not None else []
    context = min(contexts) if contexts else None
    if context is not None and context <= max_new_tokens:
        raise AdaspecError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the "
                           f"{context}-position context")
    max_prompt = context - max_new_tokens if context is not None else None
    eos = tokenizer.eos_token_id
    pad = data_lib.pad_id(tokenizer)

    examples = data_lib.load_task(task, split, data_dir, limit=n_prompts)
    full = [data_lib.encode_prompt(ex, tokenizer) for ex in examples]
    prompts = [data_lib.encode_prompt(ex, tokenizer, max_prompt) for ex in examples]
    names = list(drafts)

    # ---- empirical: target-only and speculative runs, interleaved per prompt so drift hits both alike
    def spec(draft: PreTrainedModel, ids: list[int], i: int, n_new: int) -> tuple[list[int], SpecStats, float]:
        t0 = time.perf_counter()
        seq, stats = speculative_generate(target, draft, torch.tensor([ids]), max_new_tokens=n_new, gamma=gamma,
                                          temperature=temperature, top_p=top_p, eos_token_id=eos,
                                          seed=seed + i, adaptive_gamma=adaptive_gamma, gamma_max=gamma,
                                          tokenizer=tokenizer)
        return seq[0, len(ids):].tolist(), stats, time.perf_counter() - t0

    def alone(ids: list[int], i: int, n_new: int) -> tuple[list[int], SpecStats, float]:
        t0 = time.perf_counter()
        seq, stats = target_only_generate(target, torch.tensor([ids]), max_new_tokens=n_new, eos_token_id=eos,
                                          temperature=temperature, top_p=top_p, seed=seed + i)
        return seq[0, len(ids):].tolist(), stats, time.perf_counter() - t0

    if warmup:  # first calls pay one-off costs (allocator, kernel selection) that are not decoding speed
        n_warm = min(8, max_new_tokens)
        alone(prompts[0], 0, n_warm)
        for draft in drafts.values():
            spec(draft, prompts[0], 0, n_warm)

    if log:
        log(f"decoding {len(prompts)} prompts: target alone and with {len(drafts)} draft(s), gamma={gamma}, "
            f"temperature={temperature}")
    base_stats = SpecStats()
    base_rows: list[dict[str, Any]] = []
    draft_stats = {n: SpecStats() for n in names}
    draft_rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for i, (ex, ids) in enumerate(zip(examples, prompts)):
        out, stats, seconds = alone(ids, i, max_new_tokens)
        base_stats += stats
        text = tokenizer.decode(out, skip_special_tokens=True)
        base_rows.append({"index": i, "prompt_tokens": len(ids), "prompt_truncated": len(full[i]) > len(ids),
                          "generated_tokens": len(out), "time_s": seconds,
                          "quality": quality.score(task, text, ex), "text": text})
        for name, draft in drafts.items():
            d_out, d_stats, d_seconds = spec(draft, ids, i, max_new_tokens)
            draft_stats[name] += d_stats
            per_token = d_seconds / max(len(d_out), 1)
            draft_rows[name].append({
                "index": i, "generated_tokens": len(d_out), "time_s": d_seconds,
                "drafted": d_stats.drafted, "accepted": d_stats.accepted,
                "speedup": (seconds / max(len(out), 1)) / per_token if per_token > 0 else math.nan,
                "same_as_target": d_out == out})

    # ---- analytic α on the target's cached greedy continuations
    fingerprint = target_fingerprint or (weights_fingerprint(target) if cache_dir is not None else None)
    conts, cache_info = cached_continuations(
        target, prompts, max_new_tokens, eos, pad, cache_dir,
        {"target": fingerprint, "task": task, "split": split, "n_prompts": len(prompts),
         "max_prompt_length": max_prompt}, log)
    analytic_temperature = temperature if temperature > 0 else 1.0
    analytic = {name: acceptance.analytic_alpha(target, draft, conts, temperature=analytic_temperature)
                for name, draft in drafts.items()}

    # ---- response cross-entropy on the split's reference responses
    loss_items = encode(data_lib.load_task(task, split, data_dir, limit=loss_examples), tokenizer,
                        context or FALLBACK_CONTEXT)
    loss_tokens = sum(sum(lab != data_lib.IGNORE_INDEX for lab in it["labels"][1:]) for it in loss_items)
    target_loss = validation_loss(target, loss_items, pad)
    draft_loss = {name: validation_loss(draft, loss_items, pad) for name, draft in drafts.items()}

    # ---- assemble
    base_per_token = [r["time_s"] / max(r["generated_tokens"], 1) for r in base_rows]
    base_time = sum(r["time_s"] for r in base_rows)
    base_tokens = sum(r["generated_tokens"] for r in base_rows)
    result_drafts: dict[str, Any] = {}
    for name, draft in drafts.items():
        stats, rows = draft_stats[name], draft_rows[name]
        alpha_tested = stats.alpha_geometric
        sd_time = sum(r["time_s"] for r in rows)
        sd_tokens = sum(r["generated_tokens"] for r in rows)
        # adaptive runs vary γ per step: their S is only indicative, at the mean draft length
        s_gamma = stats.mean_gamma if adaptive_gamma else gamma
        s_theory = math.nan
        if not any(math.isnan(x) for x in (alpha_tested, stats.c, s_gamma)):
            s_theory = theoretical_speedup(alpha_tested, s_gamma, stats.c)
        result_drafts[name] = {
            "params": count_params(draft),
            "response_loss": draft_loss[name],
            "alpha": stats.alpha,
            "alpha_tested": alpha_tested,
            "tau": stats.tau,
            "mean_gamma": stats.mean_gamma,
            "position_acceptance": stats.position_acceptance,
            "c": stats.c,
            "measured_speedup": _median([r["speedup"] for r in rows]),
            "measured_speedup_pooled": ((base_time / max(base_tokens, 1)) / (sd_time / max(sd_tokens, 1))
                                        if sd_time > 0 else math.nan),
            "theoretical_speedup": s_theory,
            "tokens_per_s": sd_tokens / sd_time if sd_time > 0 else math.nan,
            "same_as_target": sum(r["same_as_target"] for r in rows),
            "analytic": {**analytic[name], "sampling_temperature": analytic_temperature},
            "stats": stats.to_dict(),
            "per_prompt": rows,
        }
    scores = [r["quality"] for r in base_rows]
    result = {
        "config": {
            "task": task, "split": split, "n_prompts": len(prompts), "n_prompts_requested": n_prompts,
            "gamma": gamma, "adaptive_gamma": adaptive_gamma, "temperature": temperature, "top_p": top_p,
            "max_new_tokens": max_new_tokens, "seed": seed, "context": context, "max_prompt_length": max_prompt,
            "prompts_truncated": sum(r["prompt_truncated"] for r in base_rows),
            "loss_examples": len(loss_items), "loss_tokens": loss_tokens,
            "device": str(next(target.parameters()).device), "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "target": {
            "fingerprint": fingerprint,
            "params": count_params(target),
            "response_loss": target_loss,
            "quality_metric": quality.QUALITY_METRIC[task],
            "quality": statistics.fmean(scores),
            "tokens_per_s": base_tokens / base_time if base_time > 0 else math.nan,
            "median_s_per_token": _median(base_per_token),
            "continuations": {**cache_info, "n_tokens": sum(len(s) for s in conts.sequences)
                              - sum(conts.prompt_lengths)},
            "stats": base_stats.to_dict(),
            "per_prompt": base_rows,
        },
        "drafts": result_drafts,
    }
    return _clean(result)


# ------------------------------------------------------------------------------------------ output

def _fmt(x: Any, spec: str = ".3f", unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, spec) + unit


def format_table(result: dict[str, Any]) -> str:
    """The terminal report: target summary lines, then one column per draft."""
    cfg, tgt, drafts = result["config"], result["target"], result["drafts"]
    names = list(drafts)
    gamma = cfg["gamma"]
    lines = [
        f"task {cfg['task']} ({cfg['split']}), {cfg['n_prompts']} prompts, max {cfg['max_new_tokens']} new tokens, "
        f"gamma {gamma}{' (adaptive max)' if cfg['adaptive_gamma'] else ''}, "
        f"temperature {cfg['temperature']}" + (f", top-p {cfg['top_p']}" if cfg["top_p"] < 1 else ""),
        f"target: {tgt['params']:,} params; {tgt['quality_metric']} {_fmt(tgt['quality'])}; "
        f"response CE/token {_fmt(tgt['response_loss'])}; alone {_fmt(tgt['tokens_per_s'], '.1f')} tokens/s",
    ]
    if cfg["prompts_truncated"]:
        lines.append(f"({cfg['prompts_truncated']} prompts cut from the left to {cfg['max_prompt_length']} tokens)")
    rows: list[tuple[str, list[str]]] = [
        ("params", [f"{d['params']:,}" for d in drafts.values()]),
        ("response CE/token (target " + _fmt(tgt["response_loss"]) + ")",
         [_fmt(d["response_loss"]) for d in drafts.values()]),
        ("alpha = accepted/drafted", [_fmt(d["alpha"]) for d in drafts.values()]),
        ("alpha_tested = acc/(acc+rejected)", [_fmt(d["alpha_tested"]) for d in drafts.values()]),
        ("tau (tokens/target forward)", [_fmt(d["tau"]) for d in drafts.values()]),
    ]
    for i in range(max((len(d["position_acceptance"]) for d in drafts.values()), default=0)):
        rows.append((f"  acceptance at draft position {i + 1}",
                     [_fmt(d["position_acceptance"][i]) if i < len(d["position_acceptance"]) else "" for d in
                      drafts.values()]))
    rows += [
        ("c (draft/target forward time)", [_fmt(d["c"]) for d in drafts.values()]),
        ("speed-up measured (median)", [_fmt(d["measured_speedup"], ".2f", "x") for d in drafts.values()]),
        ("speed-up measured (pooled)", [_fmt(d["measured_speedup_pooled"], ".2f", "x") for d in drafts.values()]),
        (f"speed-up theory S(alpha_tested, {gamma}, c)",
         [_fmt(d["theoretical_speedup"], ".2f", "x") for d in drafts.values()]),
        ("analytic alpha, greedy (top-1)", [_fmt(d["analytic"]["alpha_greedy"]) for d in drafts.values()]),
        (f"analytic alpha, sampling T={next(iter(drafts.values()))['analytic']['sampling_temperature']:g}",
         [_fmt(d["analytic"]["alpha_sampling"]) for d in drafts.values()]),
    ]
    if cfg["temperature"] == 0:
        rows.append(("outputs identical to target alone",
                     [f"{d['same_as_target']}/{cfg['n_prompts']}" for d in drafts.values()]))
    label_w = max(len(r[0]) for r in rows)
    col_w = [max(len(n), *(len(r[1][j]) for r in rows)) for j, n in enumerate(names)]
    lines.append(" " * label_w + "  " + "  ".join(n.rjust(w) for n, w in zip(names, col_w)))
    for label, cells in rows:
        lines.append(label.ljust(label_w) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, col_w)))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the CLI

def _help(text: str) -> dict:
    return {"help": text}


@dataclass(kw_only=True)
class EvalOptions:
    """Measure drafts against a target: empirical α (accepted/drafted and over judged tokens), τ, c and
    speed-up from real speculative decoding; analytic α from parallel forwards on the target's cached
    greedy continuations; the target's task quality and every model's response cross-entropy.
    Several --draft directories are compared side by side."""

    target: str = field(metadata=_help("target model directory or hub id (its tokenizer is used)"))
    draft: list[str] = field(metadata=_help("draft model directories; several are compared side by side"))
    compare: list[str] | None = field(default=None, metadata=_help(
        "more drafts to compare side by side (appended to --draft)"))
    task: str = field(default="gsm8k", metadata=_help(f"task ({', '.join(data_lib.TASKS)})"))
    split: Literal["train", "validation", "test"] = field(default="test", metadata=_help("task split"))
    n_prompts: int = field(default=32, metadata=_help("evaluate the first N prompts of the split"))
    gamma: int = field(default=5, metadata=_help("draft tokens per speculative step (the max when adaptive)"))
    temperature: float = field(default=0.0, metadata=_help("sampling temperature; 0 = greedy"))
    top_p: float = field(default=1.0, metadata=_help("nucleus sampling mass in (0, 1] (the analytic α ignores it)"))
    max_new_tokens: int = field(default=128, metadata=_help("tokens generated per prompt"))
    context: int | None = field(default=None, metadata=_help(
        "positions a prompt plus its continuation may use (unset: the smallest model context); set it to the "
        "training --max-length so drafts are not measured at positions they never trained on"))
    adaptive_gamma: bool = field(default=False, metadata=_help(
        "choose gamma per step in [1, --gamma] from the running acceptance rate and measured cost"))
    seed: int = field(default=0, metadata=_help("sampling seed (prompt i uses seed + i)"))
    loss_examples: int = field(default=64, metadata=_help(
        "examples of the split whose reference responses score each model's cross-entropy"))
    json: str | None = field(default=None, metadata=_help(
        "write every counter and derived value, per draft, and the command line to this JSON file"))
    cache_dir: str | None = field(default=None, metadata=_help(
        "folder for the target's greedy continuations; unset: <target>/eval_cache"))
    cache: bool = field(default=True, metadata=_help("reuse/store the target's continuations on disk"))
    data_dir: str | None = field(default=None, metadata=_help("folder of the built-in task data"))
    device: str | None = field(default=None, metadata=_help("torch device; unset: cuda when available"))
    trust_remote_code: bool = field(default=False, metadata=_help("allow a hub model's own code to run"))

    def __post_init__(self) -> None:
        if not self.draft:
            raise AdaspecError("give at least one --draft")
        if self.task not in data_lib.TASKS:
            raise AdaspecError(f"unknown task {self.task!r}; choose one of {', '.join(data_lib.TASKS)}")
        if self.split not in data_lib.SPLITS:
            raise AdaspecError(f"unknown split {self.split!r}; choose one of {', '.join(data_lib.SPLITS)}")
        if self.context is not None and self.context <= self.max_new_tokens:
            raise AdaspecError(f"--context ({self.context}) must exceed --max-new-tokens ({self.max_new_tokens})")
        for name in ("n_prompts", "gamma", "max_new_tokens", "loss_examples"):
            if getattr(self, name) < 1:
                raise AdaspecError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        _sampling_checks(self.temperature, self.top_p)

    @property
    def draft_paths(self) -> list[str]:
        return list(self.draft) + list(self.compare or [])


def command_line(opts: EvalOptions) -> str:
    """The `adaspec eval` command that reproduces `opts` (options left at their defaults are omitted)."""
    words = ["adaspec", "eval"]
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        if value == default or value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _is_local(path: str) -> bool:
    return Path(path).exists() or path.startswith((".", "/", "~"))


def run_eval(opts: EvalOptions) -> int:
    paths = opts.draft_paths
    for path in [opts.target, *paths]:  # fail before loading anything large
        if _is_local(path) and not Path(path).is_dir():
            role = "target" if path == opts.target else "draft"
            raise AdaspecError(f"{role} model directory not found: {path}")
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    log = lambda msg: print(f"[eval] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    target = load_model(opts.target, trust_remote_code=opts.trust_remote_code, device=device)
    tokenizer = load_tokenizer(opts.target, trust_remote_code=opts.trust_remote_code)
    drafts: dict[str, PreTrainedModel] = {}
    for name, path in zip(unique_names(paths), paths):
        draft = load_model(path, trust_remote_code=opts.trust_remote_code, device=device)
        has_tokenizer = _is_local(path) and any((Path(path) / f).exists() for f in (
            "tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model"))
        draft_tokenizer = load_tokenizer(path, opts.trust_remote_code) if has_tokenizer else None
        check_vocab_compatible(target, draft, tokenizer, draft_tokenizer, names=("target", f"draft {path}"))
        drafts[name] = draft
    local = _is_local(opts.target)
    fingerprint = model_fingerprint(opts.target) if local else None
    cache_dir = None
    if opts.cache:
        cache_dir = opts.cache_dir or (str(Path(opts.target) / "eval_cache") if local else
                                       str(Path.home() / ".cache" / "adaspec" / "eval"))
    result = evaluate(target, drafts, tokenizer, opts.task, opts.split, opts.n_prompts, opts.gamma,
                      opts.temperature, opts.max_new_tokens, opts.seed, top_p=opts.top_p,
                      adaptive_gamma=opts.adaptive_gamma, context=opts.context, cache_dir=cache_dir,
                      target_fingerprint=fingerprint, loss_examples=opts.loss_examples, data_dir=opts.data_dir,
                      log=log)
    result = {"command": command_line(opts), "argv": sys.argv, **result}
    result["target"]["path"] = opts.target
    for name, path in zip(drafts, paths):
        result["drafts"][name]["path"] = path
    print(format_table(result))
    if opts.json:
        Path(opts.json).parent.mkdir(parents=True, exist_ok=True)
        Path(opts.json).write_text(json.dumps(result, indent=1))
        log(f"wrote {opts.json}")
    return 0
