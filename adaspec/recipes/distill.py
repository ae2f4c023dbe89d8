"""The `distill` recipe: knowledge distillation of a draft from the target.

--method kd        every response token (DistillSpec; also how the AdaSPEC reference model is made)
--method adaspec   AdaSPEC (Hu et al., 2025): per token Δ = L(p_target‖q_draft) − L(p_target‖q_ref); train the
                   draft only on the top-k fraction of tokens by Δ, the tokens it can still learn.

Acceptance-aligned variants (docs/variants.md): --divergence lk / lk_kl (LK losses), --delta-divergence tvd (Δ
in 1 − acceptance instead of the loss's divergence), --selection soft (weights from Δ's rank) and
--k-schedule linear (k from 1 down to --k over training).

Teacher signal comes from the target on the fly (the exact path, the default) or from an offline cache
(`adaspec cache`): then neither the target nor the reference runs during training. Training responses
come from the dataset (as in the paper), from the target, from the draft itself (on-policy, DistillSpec),
or a mixture.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec import data as data_lib
from adaspec.distill import cold_start, selection
from adaspec.distill.cache_store import TeacherCache
from adaspec.distill.cold_start import ColdStart
from adaspec.distill.selection import SOFT_TEMPERATURE
from adaspec.distill.teacher import Teacher, shifted_logits
from adaspec.errors import AdaspecError
from adaspec.decoding.acceptance import greedy_agreement
from adaspec.io import atomic_write_json
from adaspec.models import (PRESETS, build_model, check_preset, check_vocab_compatible, count_params, load_model,
                            load_tokenizer, saved_tokenizer, shared_vocab)
from adaspec.options import check_range, helptext
from adaspec.distill.cold_start import cold_start_field
from adaspec.data.options import load_split, train_items
from adaspec.models.servable import head_size_problem, warn_unservable
from adaspec.training.checkpoint import load_checkpoint
from adaspec.training.loop import OnStep, make_accelerator, planned_steps, train_loop
from adaspec.training.options import TrainOptions
from adaspec.training.setup import generate_items, matched_budget, target_response_items, val_continuations
from adaspec.training.run_fingerprint import Run, cache_fingerprint, open_run, path_fingerprint


@dataclass(kw_only=True)
class DistillOptions(TrainOptions):
    """Distil a draft model from a target: plain KD (DistillSpec, reference model) or AdaSPEC."""

    target: str = field(metadata=helptext("target model directory (its tokenizer is used)"))
    method: Literal["kd", "adaspec"] = field(default="kd", metadata=helptext(
        "kd: all response tokens; adaspec: selective KD against --ref"))
    ref: str | None = field(default=None, metadata=helptext("reference model directory (required by adaspec)"))
    draft_init: str | None = field(default=None, metadata=helptext(
        "initial draft checkpoint (default: build --preset with --init-seed)"))
    preset: str = field(default="llama-draft-xs", metadata=helptext(f"draft architecture ({', '.join(PRESETS)})"))
    init_seed: int = field(default=0, metadata=helptext("seed of a draft built from --preset"))
    k: float = field(default=0.4, metadata=helptext("fraction of response tokens AdaSPEC trains on, in (0, 1]"))
    selection: Literal["top", "bottom", "random", "all", "soft"] = field(default="top", metadata=helptext(
        "which tokens by Δ: top (AdaSPEC), bottom, random, all (= plain KD), soft (every token, weighted by "
        "sigmoid((rank quantile of Δ - (1 - k)) / --soft-temperature), weights summing to top-k's count)"))
    soft_temperature: float = field(default=SOFT_TEMPERATURE, metadata=helptext(
        "with --selection soft: width of the weights' step around the top-k cut, in rank quantiles",
        omit_at_default=True))
    k_schedule: Literal["constant", "linear"] = field(default="constant", metadata=helptext(
        "constant: --k throughout; linear: k from 1 at the first optimizer step down to --k at the last",
        omit_at_default=True))
    cold_start: ColdStart = cold_start_field()
    per_sequence: bool = field(default=False, metadata=helptext(
        "select the top-k within each sequence instead of over the micro-batch (paper)"))
    selection_group: int | None = field(default=None, metadata=helptext(
        "select the top-k within each group of N consecutive sequences of a process's micro-batch (default: "
        "the whole micro-batch; the authors' 8 processes x 5 sequences are --selection-group 5 on one)"))
    normalize: Literal["response", "kept"] = field(default="response", metadata=helptext(
        "loss = sum over kept tokens / response tokens (official code) or / kept tokens"))
    divergence: Literal["fkl", "rkl", "tvd", "jsd", "lk", "lk_kl"] = field(default="fkl", metadata=helptext(
        "per-token loss between target and draft: a divergence, or an LK loss (arXiv 2602.23881) of the "
        "acceptance α = Σ min(p, q): lk = -log α, lk_kl = λ·fkl + (1 - λ)·tvd with λ = exp(-3α) held constant"))
    delta_divergence: Literal["fkl", "rkl", "tvd", "jsd", "lk", "lk_kl"] | None = field(default=None, metadata=helptext(
        "with --method adaspec: the divergence Δ is measured in, for draft and reference (default: "
        "--divergence; tvd = 1 - acceptance, what speculative decoding pays for)", omit_at_default=True))
    beta: float = field(default=0.5, metadata=helptext("JSD mixture weight"))
    temperature: float = field(default=1.0, metadata=helptext("distillation temperature"))
    data_source: Literal["dataset", "target", "draft", "mix"] = field(default="dataset", metadata=helptext(
        "responses: dataset (paper), target-generated, draft-generated on-policy, or a mix"))
    mix_ratio: float = field(default=0.5, metadata=helptext("with --data-source mix: share of on-policy batches"))
    gen_max_new_tokens: int = field(default=128, metadata=helptext("length of generated responses"))
    gen_temperature: float = field(default=1.0, metadata=helptext("sampling temperature of generated responses"))
    match_token_budget: bool = field(default=False, metadata=helptext(
        "give this run at --k as many trained tokens as KD on every token at --batch-size and --epochs "
        "(with --method kd: KD shaped like that AdaSPEC run, the equal-steps control); see --budget-by"))
    budget_by: Literal["batch", "epochs"] = field(default="batch", metadata=helptext(
        "how --match-token-budget matches: batch = batch/k and epochs/k at KD's optimizer steps (the authors' "
        "scripts: 16 -> 40 sequences, 3 -> 7.5 epochs); epochs = epochs/k at KD's batch, 1/k the steps "
        "(adaspec's protocol, the committed main table)"))
    teacher_cache: str | None = field(default=None, metadata=helptext(
        "cache from `adaspec cache`: no target/reference forward during training"))
    val_max_new_tokens: int = field(default=96, metadata=helptext("length of the target continuations for α"))
    top_k: int | None = field(default=None, metadata=helptext(
        "with --teacher-cache: refuse a cache holding fewer than this many target probabilities per token"))

    def __post_init__(self) -> None:
        super().__post_init__()
        selection.check_k(self.k)
        if self.selection_group is not None and (self.selection_group < 1 or self.per_sequence):
            raise AdaspecError("--selection-group must be >= 1 and cannot be combined with --per-sequence")
        if self.method == "adaspec" and self.ref is None and self.teacher_cache is None:
            raise AdaspecError("--method adaspec needs --ref (the reference model) or a --teacher-cache with L_ref")
        if self.draft_init is None:
            check_preset(self.preset)
        if self.method != "adaspec" and (self.delta_divergence is not None or self.k_schedule != "constant"):
            raise AdaspecError("--delta-divergence and --k-schedule belong to --method adaspec")
        # a teacher cache's L_ref stands in for the reference model's forwards, not for its weights
        self.cold_start = cold_start.resolve(
            self.cold_start, self.method == "adaspec" and self.selection != "all" and self.draft_init is None,
            has_ref=self.ref is not None, ramped=self.k_schedule != "constant")
        check_range(self, "soft_temperature", 0, low_open=True)
        check_range(self, "temperature", 0, low_open=True)
        check_range(self, "gen_temperature", 0)
        check_range(self, "beta", 0, 1)
        check_range(self, "mix_ratio", 0, 1)
        for name in ("gen_max_new_tokens", "val_max_new_tokens", "top_k"):
            check_range(self, name, 1)
        if self.top_k is not None and self.teacher_cache is None:
            raise AdaspecError("--top-k is the least K a --teacher-cache must hold; give --teacher-cache too")
        if self.teacher_cache and self.data_source in ("draft", "mix"):
            raise AdaspecError("on-policy responses (--data-source draft/mix) are generated during training "
                               "and cannot come from a --teacher-cache")


def _frozen(model: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    model.to(device).eval()
    model.requires_grad_(False)
    return model


def _load(path: str) -> PreTrainedModel:
    # models.load_model looked up here at call time (tests wrap it to count forwards)
    return load_checkpoint(path, load=load_model)


# options naming an input: their fingerprint (not their path) defines the run
RUN_INPUTS = {"target": path_fingerprint, "ref": path_fingerprint, "draft_init": path_fingerprint,
              "teacher_cache": cache_fingerprint}


def run_distill(opts: DistillOptions, on_step: OnStep | None = None) -> None:
    accelerator = make_accelerator(opts)
    roles = {"target": opts.target, "reference": opts.ref, "draft initialisation": opts.draft_init,
             "teacher cache": opts.teacher_cache, "--data": opts.data, "--data-dir": opts.data_dir}
    with open_run(opts, RUN_INPUTS, roles, accelerator.is_main_process, accelerator.wait_for_everyone) as run:
        _distill(opts, accelerator, run, on_step)


def _distill(opts: DistillOptions, accelerator: Accelerator, run: Run, on_step: OnStep | None) -> None:
    device = accelerator.device
    torch.manual_seed(opts.seed)
    # the model first: a missing directory is then reported as such, not as a bad hub id for a tokenizer
    target = _frozen(_load(opts.target), device)
    tokenizer: PreTrainedTokenizerBase = load_tokenizer(opts.target, chat_template=opts.chat_template)
    start = opts.draft_init or (opts.ref if opts.cold_start == "ref" else None)
    if start:
        draft = _load(start)
        check_vocab_compatible(target, draft, tokenizer, saved_tokenizer(start), names=("target", f"draft {start}"))
    else:
        draft = build_model(opts.preset, len(tokenizer), seed=opts.init_seed,
                            bos_token_id=tokenizer.bos_token_id or 0, eos_token_id=tokenizer.eos_token_id or 0)
        check_vocab_compatible(target, draft, tokenizer, tokenizer)
    draft.to(device)
    ref = None
    if opts.method == "adaspec" and opts.ref and not opts.teacher_cache:
        ref = _frozen(_load(opts.ref), device)
        check_vocab_compatible(target, ref, tokenizer, saved_tokenizer(opts.ref), names=("target", "reference"))
    vocab = shared_vocab(target, draft)
    eos = tokenizer.eos_token_id
    out = Path(opts.output)

    items, report = train_items(opts, tokenizer, accelerator.print)
    if opts.data_source == "target":
        items = target_response_items(target, items, opts, run, accelerator, eos)
    val_examples = load_split(opts, "validation", opts.val_examples)
    val_prompts = [it["input_ids"][: it["prompt_length"]]
                   for it in data_lib.encode(val_examples, tokenizer, opts.max_length)]
    val = val_continuations(target, val_prompts, opts.val_max_new_tokens, eos, run, accelerator)

    delta_kind = opts.delta_divergence or opts.divergence
    cache = None
    if opts.teacher_cache:
        cache = TeacherCache.open(opts.teacher_cache, target_path=opts.target, ref_path=opts.ref, items=items,
                                  divergence=delta_kind if opts.method == "adaspec" else None,
                                  temperature=opts.temperature, beta=opts.beta, vocab=vocab)
        if opts.method == "adaspec" and not cache.has_ref:
            raise AdaspecError(f"{opts.teacher_cache} holds no reference divergence; rebuild it with --ref")
        if opts.top_k is not None and cache.top_k < opts.top_k:
            raise AdaspecError(f"{opts.teacher_cache} holds the target's top-{cache.top_k} per token, fewer "
                               f"than --top-k {opts.top_k}; rebuild it with adaspec cache --top-k {opts.top_k}")
        accelerator.print(f"teacher cache {opts.teacher_cache}: the target's top-{cache.top_k} per token"
                          + (" and L_ref" if cache.has_ref else ""))
        target = None
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    teacher = Teacher(opts.divergence, opts.temperature, opts.beta, vocab, target=target, ref=ref, cache=cache,
                      delta_divergence=delta_kind)

    mode = opts.selection if opts.method == "adaspec" else "all"
    selective = mode != "all"
    sel_gen = torch.Generator()
    sel_step = [-1]

    def token_loss(model: torch.nn.Module, batch: dict, step: int):
        if step != sel_step[0]:
            # random selection seeded per step, so a resumed run draws what the uninterrupted one drew
            sel_step[0] = step
            sel_gen.manual_seed((opts.seed + 1) * 1_000_003 + step)
        mask = data_lib.response_mask(batch["labels"])
        q_logits = shifted_logits(model, batch, vocab)
        div, draft_delta, ref_div = teacher.divergences(q_logits, batch, with_ref=selective)
        k = selection.scheduled_k(opts.k, k_schedule, step, total_steps)
        kept = selection.delta_selection(div if draft_delta is None else draft_delta, ref_div, mask, k, mode,
                                         opts.per_sequence, sel_gen, opts.selection_group, opts.soft_temperature)
        n_resp = int(mask.sum())
        logs = {"kept_fraction": float(kept.sum()) / max(n_resp, 1),
                "divergence": float((div.detach() * mask).sum()) / max(n_resp, 1)}
        return div, kept, logs

    on_policy = opts.data_source in ("draft", "mix")

    def prepare_items(chosen: list[dict], micro: int, model: PreTrainedModel) -> list[dict]:
        if not on_policy or (opts.data_source == "mix" and random.Random(opts.seed * 7919 + micro).random()
                             >= opts.mix_ratio):
            return chosen
        return generate_items(model, chosen, opts.gen_max_new_tokens, opts.max_length, opts.gen_temperature,
                              eos, opts.seed * 100003 + micro)

    def validate(model: PreTrainedModel) -> dict[str, float]:
        return {"greedy_agreement": greedy_agreement(model, val)}

    epochs = opts.epochs
    if opts.match_token_budget:
        batch_size, epochs, steps = matched_budget(len(items), opts.batch_size, opts.grad_accum, opts.epochs,
                                                   opts.k, opts.budget_by)
        opts = replace(opts, batch_size=batch_size, epochs=epochs, max_steps=opts.max_steps or steps)
    # the loop's step count, which the k schedule runs over
    total_steps = opts.max_steps or planned_steps(len(items), opts.batch_size, opts.grad_accum, epochs)
    k_schedule = cold_start.k_schedule(opts.cold_start, opts.k_schedule)
    accelerator.print(f"draft: {count_params(draft):,} parameters; {opts.method}"
                      + (f" k={opts.k} {opts.selection}" if selective else "")
                      + (f" ({k_schedule} k from 1)" if selective and k_schedule != "constant" else "")
                      + (f", Δ in {delta_kind}" if selective and delta_kind != opts.divergence else "")
                      + f"; {len(items)} examples, {epochs:g} epochs, global batch {opts.batch_size}")
    if line := cold_start.announcement(opts.cold_start, "draft", opts.k):
        accelerator.print(line)
    if accelerator.is_main_process:
        warn_unservable(f"the draft written to {opts.output}", [head_size_problem(draft.config)])
    result = train_loop(opts, accelerator, draft, tokenizer, items, token_loss, validate,
                        best_key="greedy_agreement", higher_is_better=True, epochs=epochs,
                        normalize=opts.normalize, prepare_items=prepare_items if on_policy else None,
                        on_step=on_step)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(opts.output)
        summary = {"params": count_params(draft), "steps": result.steps, "best_greedy_agreement": result.best_metric,
                   "epochs": epochs, "batch_size": opts.batch_size, "cold_start": opts.cold_start,
                   "history": result.history, **report.summary()}
        atomic_write_json(out / "train_summary.json", summary)

