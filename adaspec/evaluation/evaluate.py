"""`evaluate`: how well drafts serve a target, measured three ways, side by side.

1. Empirical: real speculative decoding of the split's prompts (greedy by default, or sampling at
   temperature/top-p), counters merged over prompts. Two acceptance rates are reported because they
   answer different questions:
   - alpha = accepted / (accepted + rejected): the acceptance probability of the tokens the target
     actually judged, the per-token α of Leviathan et al. that the analytic α below estimates. The
     theoretical speed-up S uses this one.
   - alpha_drafted = accepted / drafted (vLLM's). Draft tokens after the first rejection of a step are
     counted as rejected although the target never judged them, so it falls as γ grows.
   The target alone decodes the same prompts, interleaved with the speculative runs, for the measured
   speed-up (median over prompts of the per-prompt ratio of wall time per token, prefill included).
2. Analytic: on the target's own greedy continuations, one parallel forward per model gives the greedy α
   (top-1 agreement) and the sampling α (mean Σ min(p, q) = 1 − TVD, at the temperature or 1 when greedy;
   top-p is ignored), see adaspec.decoding.acceptance. The continuations are cached on disk
   (adaspec.evaluation.continuations), so comparing many drafts generates them once.
   Greedy alpha and the analytic greedy α score the same positions with the same contexts, except that
   greedy SD never tests the bonus token that follows γ accepted proposals: replaying SD's schedule on the
   per-position agreements reproduces its counters exactly (tests/evaluation/test_evaluate.py), so their
   difference is the agreement at bonus positions, not noise or a bug.
   A head (EAGLE, MTP, Medusa) is scored by its first proposal, teacher-forced on the target's features
   (adaspec.evaluation.head_acceptance): the same identity holds at γ = 1; at larger γ its later proposals
   come from deeper steps or heads, whose acceptance the per-position acceptance shows.
3. Meaning: the task quality of the target's outputs (SD is lossless, so this is the quality of every
   speculative run too) and the mean cross-entropy per response token of the target and of each draft on
   the split's reference responses (the target must be the better model).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec import data as data_lib
from adaspec.core.metrics import SpecStats, theoretical_speedup
from adaspec.core.sampling import check_sampling
from adaspec.decoding import acceptance
from adaspec.decoding.drafter import Drafter
from adaspec.decoding.generate import speculative_generate, target_only_generate
from adaspec.errors import AdaspecError
from adaspec.evaluation import head_acceptance, quality, sandbox
from adaspec.evaluation.continuations import cached_continuations, weights_fingerprint
from adaspec.models import check_vocab_compatible, count_params
from adaspec.models.target import context_length
from adaspec.training.setup import validation_loss

# context assumed for models whose config names none (the response-loss encoding needs a length)
FALLBACK_CONTEXT = 2048
Log = Callable[[str], None]


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation measures: the first `n_prompts` prompts of a task split, decoded with these settings.

    `context` caps the positions a prompt and its continuation may use (None: the smallest model context;
    pass the training length so no draft is measured at positions it never trained on); prompts longer
    than that context minus `max_new_tokens` are cut from the left, and the reference responses for the
    loss are encoded to it. Prompt i samples with seed `seed + i`. `data` (a JSONL file, a folder of
    `<split>.jsonl` or hub:<name>, read with `prompt_field` / `response_field`) replaces `task`; such data
    has no task score (quality metric "none").
    """

    task: str | None
    split: str = "test"
    n_prompts: int = 32
    gamma: int = 5
    temperature: float = 0.0
    max_new_tokens: int = 128
    seed: int = 0
    top_p: float = 1.0
    adaptive_gamma: bool = False
    context: int | None = None
    loss_examples: int = 64
    data_dir: str | os.PathLike | None = None
    warmup: bool = True
    lean: bool | None = None  # decode path of the target alone and every draft (adaspec.models.lean)
    data: str | None = None
    prompt_field: str = "prompt"
    response_field: str = "response"

    def __post_init__(self) -> None:
        if self.data is None and self.task not in data_lib.TASKS:
            raise AdaspecError(f"unknown task {self.task!r}; choose one of: {', '.join(data_lib.TASKS)}")
        for name in ("n_prompts", "gamma", "max_new_tokens", "loss_examples", "context"):
            value = getattr(self, name)
            if name == "context" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AdaspecError(f"{name} must be an integer >= 1, got {value!r}")
        check_sampling(self.temperature, self.top_p)

    @property
    def quality_metric(self) -> str:
        return "none" if self.data is not None else quality.QUALITY_METRIC[self.task]

    def examples(self, limit: int) -> list[data_lib.Example]:
        """The first `limit` examples of the split of the task or of the user's data."""
        return data_lib.load_examples(
            task=None if self.data else self.task,
            data_path=self.data,
            split=self.split,
            prompt_field=self.prompt_field,
            response_field=self.response_field,
            limit=limit,
            data_dir=self.data_dir,
        )

    def score(self, text: str, example: data_lib.Example) -> float:
        return math.nan if self.data is not None else quality.score(self.task, text, example)


@dataclass
class DraftResult:
    """One draft's measurements; rates come from `stats` (metrics.SpecStats), never computed here."""

    params: int
    response_loss: float
    stats: SpecStats
    measured_speedup: float  # median over prompts of target-alone time per token / speculative time per token
    measured_speedup_pooled: float  # the same over all tokens
    theoretical_speedup: float  # S at alpha, the configured γ (mean γ when adaptive) and the measured c
    tokens_per_s: float
    same_as_target: int  # prompts whose speculative output equals the target's alone (all when greedy)
    analytic: dict[str, float]  # alpha_greedy, alpha_sampling, n_tokens, sampling_temperature
    per_prompt: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "params": self.params,
            "response_loss": self.response_loss,
            "alpha": s.alpha,
            "alpha_drafted": s.alpha_drafted,
            "tau": s.tau,
            "mean_gamma": s.mean_gamma,
            "position_acceptance": s.position_acceptance,
            "c": s.c,
            "measured_speedup": self.measured_speedup,
            "measured_speedup_pooled": self.measured_speedup_pooled,
            "theoretical_speedup": self.theoretical_speedup,
            "tokens_per_s": self.tokens_per_s,
            "same_as_target": self.same_as_target,
            "analytic": self.analytic,
            "stats": s.to_dict(),
            "per_prompt": self.per_prompt,
        }


@dataclass
class TargetResult:
    fingerprint: str | None
    params: int
    response_loss: float  # mean CE per reference response token
    quality_metric: str
    quality: float  # mean over prompts of its outputs' task score
    tokens_per_s: float  # decoding alone
    median_s_per_token: float
    continuations: dict[str, Any]  # cache_file, from_cache, n_tokens
    stats: SpecStats
    per_prompt: list[dict[str, Any]]  # text, quality, time_s, ...

    def to_json(self) -> dict[str, Any]:
        return {**{k: v for k, v in self.__dict__.items() if k != "stats"}, "stats": self.stats.to_dict()}


@dataclass
class EvalResult:
    settings: EvalSettings
    target: TargetResult
    drafts: dict[str, DraftResult]
    facts: dict[str, Any] = field(default_factory=dict)  # context, max prompt length, prompts cut, versions

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (undefined values become None): config, target, drafts."""
        s = self.settings
        config = {
            "task": s.task,
            "data": s.data,
            "split": s.split,
            "n_prompts_requested": s.n_prompts,
            "gamma": s.gamma,
            "adaptive_gamma": s.adaptive_gamma,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_new_tokens": s.max_new_tokens,
            "seed": s.seed,
            **self.facts,
        }
        return _clean(
            {
                "config": config,
                "target": self.target.to_json(),
                "drafts": {n: d.to_json() for n, d in self.drafts.items()},
            }
        )


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


def _context(settings: EvalSettings, models: list[PreTrainedModel]) -> int | None:
    contexts = [c for c in (context_length(m) for m in models) if c is not None]
    contexts += [settings.context] if settings.context is not None else []
    context = min(contexts) if contexts else None
    if context is not None and context <= settings.max_new_tokens:
        raise AdaspecError(
            f"max_new_tokens ({settings.max_new_tokens}) leaves no room for a prompt in the {context}-position context"
        )
    return context


class _Decoder:
    """Timed decoding of one prompt, by the target alone or with a draft, with the evaluation's settings."""

    def __init__(self, target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, s: EvalSettings):
        self.target, self.tokenizer, self.s = target, tokenizer, s

    def spec(
        self, draft: PreTrainedModel | Drafter, ids: list[int], i: int, n_new: int
    ) -> tuple[list[int], SpecStats, float]:
        s, t0 = self.s, time.perf_counter()
        seq, stats = speculative_generate(
            self.target,
            draft,
            torch.tensor([ids]),
            max_new_tokens=n_new,
            gamma=s.gamma,
            temperature=s.temperature,
            top_p=s.top_p,
            eos_token_id=self.tokenizer.eos_token_id,
            seed=s.seed + i,
            adaptive_gamma=s.adaptive_gamma,
            gamma_max=s.gamma,
            tokenizer=self.tokenizer,
            lean=s.lean,
        )
        return seq[0, len(ids) :].tolist(), stats, time.perf_counter() - t0

    def alone(self, ids: list[int], i: int, n_new: int) -> tuple[list[int], SpecStats, float]:
        s, t0 = self.s, time.perf_counter()
        seq, stats = target_only_generate(
            self.target,
            torch.tensor([ids]),
            max_new_tokens=n_new,
            eos_token_id=self.tokenizer.eos_token_id,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed + i,
            lean=s.lean,
        )
        return seq[0, len(ids) :].tolist(), stats, time.perf_counter() - t0


def _draft_result(
    draft: PreTrainedModel | Drafter,
    stats: SpecStats,
    rows: list[dict],
    base_rows: list[dict],
    loss: float,
    analytic: dict,
    s: EvalSettings,
) -> DraftResult:
    base_time = sum(r["time_s"] for r in base_rows)
    base_tokens = sum(r["generated_tokens"] for r in base_rows)
    sd_time = sum(r["time_s"] for r in rows)
    sd_tokens = sum(r["generated_tokens"] for r in rows)
    # adaptive runs vary γ per step: their S is only indicative, at the mean draft length
    s_gamma = stats.mean_gamma if s.adaptive_gamma else s.gamma
    s_theory = math.nan
    if not any(math.isnan(x) for x in (stats.alpha, stats.c, s_gamma)):
        s_theory = theoretical_speedup(stats.alpha, s_gamma, stats.c)
    return DraftResult(
        params=drafter_params(draft),
        response_loss=loss,
        stats=stats,
        measured_speedup=_median([r["speedup"] for r in rows]),
        measured_speedup_pooled=(
            (base_time / max(base_tokens, 1)) / (sd_time / max(sd_tokens, 1)) if sd_time > 0 else math.nan
        ),
        theoretical_speedup=s_theory,
        tokens_per_s=sd_tokens / sd_time if sd_time > 0 else math.nan,
        same_as_target=sum(r["same_as_target"] for r in rows),
        analytic=analytic,
        per_prompt=rows,
    )


def _models(drafts: dict[str, PreTrainedModel | Drafter]) -> dict[str, PreTrainedModel]:
    """The drafts that are separate causal LMs (the ones with a response loss and an analytic α)."""
    return {n: d for n, d in drafts.items() if isinstance(d, PreTrainedModel)}


def drafter_params(draft: PreTrainedModel | Drafter) -> int:
    """Parameters of a draft model, or of the modules a head drafter holds (the frozen target's excluded)."""
    if isinstance(draft, torch.nn.Module):
        return count_params(draft)
    modules = [m for m in vars(draft).values() if isinstance(m, torch.nn.Module)]
    return sum(count_params(m) for m in modules)


def _prompts(
    s: EvalSettings, tokenizer: PreTrainedTokenizerBase, models: list[PreTrainedModel]
) -> tuple[int | None, int | None, list[data_lib.Example], list[list[int]], list[list[int]]]:
    """(context, longest prompt, examples, their full prompt ids, the ids cut to the longest prompt)."""
    context = _context(s, models)
    max_prompt = context - s.max_new_tokens if context is not None else None
    examples = s.examples(s.n_prompts)
    full = [data_lib.encode_prompt(ex, tokenizer) for ex in examples]
    return context, max_prompt, examples, full, [data_lib.encode_prompt(ex, tokenizer, max_prompt) for ex in examples]


def prompt_ids(
    settings: EvalSettings, tokenizer: PreTrainedTokenizerBase, models: list[PreTrainedModel]
) -> tuple[list[list[int]], int]:
    """The prompts `evaluate` decodes (same examples, same cut) and the context they were cut to, so another
    engine measures exactly the same work."""
    context, _, _, _, prompts = _prompts(settings, tokenizer, models)
    return prompts, context or FALLBACK_CONTEXT


# One pass over the prompts per model on purpose: the target-alone runs, every drafter's decode and the
# quality scores share one loop so each draft is measured on the same prompts, seeds and context.
def evaluate(
    target: PreTrainedModel,
    drafts: dict[str, PreTrainedModel | Drafter],
    tokenizer: PreTrainedTokenizerBase,
    settings: EvalSettings,
    *,
    cache_dir: str | os.PathLike | None = None,
    target_fingerprint: str | None = None,
    log: Log | None = None,
) -> EvalResult:
    """Evaluate each draft against `target` (see the module docstring); models already on one device,
    sharing `tokenizer`'s ids. A draft is a causal LM or any Drafter: a head (EAGLE, MTP, Medusa) gets its
    analytic α from its first proposal (adaspec.evaluation.head_acceptance) and no response loss (it is no
    language model of its own); any other Drafter the empirical measurements only. `cache_dir` (None: no
    cache) holds the target's greedy continuations; `target_fingerprint` names the target there (default: a
    hash of its weights)."""
    if not drafts:
        raise AdaspecError("no draft to evaluate")
    s = settings
    lms = _models(drafts)
    for name, draft in lms.items():
        check_vocab_compatible(target, draft, tokenizer, tokenizer, names=("target", f"draft {name!r}"))
    context, max_prompt, examples, full, prompts = _prompts(s, tokenizer, [target, *lms.values()])
    decoder = _Decoder(target, tokenizer, s)
    if s.warmup:  # first calls pay one-off costs (allocator, kernel selection) that are not decoding speed
        n_warm = min(8, s.max_new_tokens)
        decoder.alone(prompts[0], 0, n_warm)
        for draft in drafts.values():
            decoder.spec(draft, prompts[0], 0, n_warm)

    # ---- empirical: target-only and speculative runs, interleaved per prompt so drift hits both alike
    if log:
        log(
            f"decoding {len(prompts)} prompts: target alone and with {len(drafts)} draft(s), gamma={s.gamma}, "
            f"temperature={s.temperature}"
        )
    base_stats, base_rows = SpecStats(), []
    draft_stats = {n: SpecStats() for n in drafts}
    draft_rows: dict[str, list[dict[str, Any]]] = {n: [] for n in drafts}
    for i, (ex, ids) in enumerate(zip(examples, prompts)):
        out, stats, seconds = decoder.alone(ids, i, s.max_new_tokens)
        base_stats += stats
        text = tokenizer.decode(out, skip_special_tokens=True)
        base_rows.append(
            {
                "index": i,
                "prompt_tokens": len(ids),
                "prompt_truncated": len(full[i]) > len(ids),
                "generated_tokens": len(out),
                "time_s": seconds,
                "quality": s.score(text, ex),
                "text": text,
            }
        )
        for name, draft in drafts.items():
            d_out, d_stats, d_seconds = decoder.spec(draft, ids, i, s.max_new_tokens)
            draft_stats[name] += d_stats
            per_token = d_seconds / max(len(d_out), 1)
            draft_rows[name].append(
                {
                    "index": i,
                    "generated_tokens": len(d_out),
                    "time_s": d_seconds,
                    "drafted": d_stats.drafted,
                    "accepted": d_stats.accepted,
                    "speedup": (seconds / max(len(out), 1)) / per_token if per_token > 0 else math.nan,
                    "same_as_target": d_out == out,
                }
            )

    # ---- analytic α on the target's cached greedy continuations
    eos, pad = tokenizer.eos_token_id, data_lib.pad_id(tokenizer)
    fingerprint = target_fingerprint or (weights_fingerprint(target) if cache_dir is not None else None)
    conts, cache_info = cached_continuations(
        target,
        prompts,
        s.max_new_tokens,
        eos,
        pad,
        cache_dir,
        {
            "target": fingerprint,
            "task": s.task,
            "data": s.data,
            "split": s.split,
            "n_prompts": len(prompts),
            "max_prompt_length": max_prompt,
        },
        log,
    )
    analytic_temperature = s.temperature if s.temperature > 0 else 1.0
    undefined = {"alpha_greedy": math.nan, "alpha_sampling": math.nan, "n_tokens": 0}
    analytic = {}
    for name, draft in drafts.items():
        if name in lms:
            found = acceptance.analytic_alpha(target, draft, conts, temperature=analytic_temperature)
        else:
            found = head_acceptance.analytic_alpha(draft, target, conts, temperature=analytic_temperature)
        analytic[name] = {**(found or undefined), "sampling_temperature": analytic_temperature}

    # ---- response cross-entropy on the split's reference responses
    loss_items = data_lib.encode(s.examples(s.loss_examples), tokenizer, context or FALLBACK_CONTEXT)
    loss_tokens = sum(sum(lab != data_lib.IGNORE_INDEX for lab in it["labels"][1:]) for it in loss_items)
    base_time = sum(r["time_s"] for r in base_rows)
    base_tokens = sum(r["generated_tokens"] for r in base_rows)
    target_result = TargetResult(
        fingerprint=fingerprint,
        params=count_params(target),
        response_loss=validation_loss(target, loss_items, pad),
        quality_metric=s.quality_metric,
        quality=statistics.fmean(r["quality"] for r in base_rows),
        tokens_per_s=base_tokens / base_time if base_time > 0 else math.nan,
        median_s_per_token=_median([r["time_s"] / max(r["generated_tokens"], 1) for r in base_rows]),
        continuations={**cache_info, "n_tokens": sum(len(q) for q in conts.sequences) - sum(conts.prompt_lengths)},
        stats=base_stats,
        per_prompt=base_rows,
    )
    results = {
        name: _draft_result(
            draft,
            draft_stats[name],
            draft_rows[name],
            base_rows,
            validation_loss(draft, loss_items, pad) if name in lms else math.nan,
            analytic[name],
            s,
        )
        for name, draft in drafts.items()
    }
    facts = {
        "n_prompts": len(prompts),
        "context": context,
        "max_prompt_length": max_prompt,
        "prompts_truncated": sum(r["prompt_truncated"] for r in base_rows),
        "loss_examples": len(loss_items),
        "loss_tokens": loss_tokens,
        "device": str(next(target.parameters()).device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if s.data is None and s.task == "mbpp":  # which protections the generated code ran under
        facts["sandbox"] = sandbox.isolation().as_dict()
    return EvalResult(s, target_result, results, facts)
