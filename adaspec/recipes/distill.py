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

Options: adaspec.recipes.distill_options. What the recipe sets up as train-head's recipes do (the frozen target,
the data, the validation continuations, the budget, the loop, the summary): adaspec.training.setup.RecipeSetup.
"""

from __future__ import annotations

import random

import torch
from transformers import PreTrainedModel

from adaspec import data as data_lib
from adaspec.decoding.acceptance import greedy_agreement
from adaspec.distill import cold_start, selection
from adaspec.distill.cache_store import TeacherCache
from adaspec.distill.teacher import Teacher, shifted_logits
from adaspec.errors import AdaspecError
from adaspec.models import build_model, check_vocab_compatible, count_params, saved_tokenizer, shared_vocab
from adaspec.models.servable import head_size_problem, warn_unservable
from adaspec.recipes.distill_options import DistillOptions
from adaspec.training.loop import OnStep
from adaspec.training.setup import RecipeSetup, StepGenerator, generate_items


def run_distill(opts: DistillOptions, on_step: OnStep | None = None) -> None:
    with RecipeSetup.open(opts) as setup:
        _distill(opts, setup, on_step)


def _draft(opts: DistillOptions, setup: RecipeSetup) -> PreTrainedModel:
    """The draft to train: --draft-init, the reference with --cold-start ref, else one built from --preset."""
    target, tokenizer = setup.target, setup.tokenizer
    start = opts.draft_init or (opts.ref if opts.cold_start == "ref" else None)
    if start:
        draft = setup.load(start)
        check_vocab_compatible(target, draft, tokenizer, saved_tokenizer(start), names=("target", f"draft {start}"))
    else:
        draft = build_model(
            opts.preset,
            len(tokenizer),
            seed=opts.init_seed,
            bos_token_id=tokenizer.bos_token_id or 0,
            eos_token_id=tokenizer.eos_token_id or 0,
        )
        check_vocab_compatible(target, draft, tokenizer, tokenizer)
    return draft.to(setup.accelerator.device)


# The distill recipe's own part, after RecipeSetup: the reference and teacher, the token loss (a closure
# over both, as train_loop calls it) and what is saved; split further it would pass a dozen locals around.
def _distill(opts: DistillOptions, setup: RecipeSetup, on_step: OnStep | None) -> None:
    target, tokenizer, items = setup.target, setup.tokenizer, setup.items
    draft = _draft(opts, setup)
    ref = None
    if opts.method == "adaspec" and opts.ref and not opts.teacher_cache:
        ref = setup.frozen(opts.ref)
        check_vocab_compatible(target, ref, tokenizer, saved_tokenizer(opts.ref), names=("target", "reference"))
    vocab = shared_vocab(target, draft)
    val = setup.val_continuations()

    delta_kind = opts.delta_divergence or opts.divergence
    cache = None
    if opts.teacher_cache:
        cache = TeacherCache.open(
            opts.teacher_cache,
            target_path=opts.target,
            ref_path=opts.ref,
            items=items,
            divergence=delta_kind if opts.method == "adaspec" else None,
            temperature=opts.temperature,
            beta=opts.beta,
            vocab=vocab,
        )
        if opts.method == "adaspec" and not cache.has_ref:
            raise AdaspecError(f"{opts.teacher_cache} holds no reference divergence; rebuild it with --ref")
        if opts.top_k is not None and cache.top_k < opts.top_k:
            raise AdaspecError(
                f"{opts.teacher_cache} holds the target's top-{cache.top_k} per token, fewer "
                f"than --top-k {opts.top_k}; rebuild it with adaspec cache --top-k {opts.top_k}"
            )
        setup.accelerator.print(
            f"teacher cache {opts.teacher_cache}: the target's top-{cache.top_k} per token"
            + (" and L_ref" if cache.has_ref else "")
        )
        target = None
        setup.release_target()  # the validation continuations are made: the cache stands in for the target
    teacher = Teacher(
        opts.divergence,
        opts.temperature,
        opts.beta,
        vocab,
        target=target,
        ref=ref,
        cache=cache,
        delta_divergence=delta_kind,
    )

    mode = opts.selection if opts.method == "adaspec" else "all"
    selective = mode != "all"
    generator = StepGenerator(opts.seed)
    kept_at = setup.kept_fraction(opts.k_schedule)

    def token_loss(
        model: torch.nn.Module, batch: dict, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        mask = data_lib.response_mask(batch["labels"])
        q_logits = shifted_logits(model, batch, vocab)
        div, draft_delta, ref_div = teacher.divergences(q_logits, batch, with_ref=selective)
        kept = selection.delta_selection(
            div if draft_delta is None else draft_delta,
            ref_div,
            mask,
            kept_at(step),
            mode,
            opts.per_sequence,
            generator.at(step),
            opts.selection_group,
            opts.soft_temperature,
        )
        n_resp = int(mask.sum())
        logs = {
            "kept_fraction": float(kept.sum()) / max(n_resp, 1),
            "divergence": float((div.detach() * mask).sum()) / max(n_resp, 1),
        }
        return div, kept, logs

    on_policy = opts.data_source in ("draft", "mix")

    def prepare_items(chosen: list[dict], micro: int, model: PreTrainedModel) -> list[dict]:
        if opts.data_source == "mix" and random.Random(opts.seed * 7919 + micro).random() >= opts.mix_ratio:
            return chosen
        return generate_items(
            model,
            chosen,
            opts.gen_max_new_tokens,
            opts.max_length,
            opts.gen_temperature,
            setup.eos,
            opts.seed * 100003 + micro,
        )

    def validate(model: PreTrainedModel) -> dict[str, float]:
        return {"greedy_agreement": greedy_agreement(model, val)}

    k_schedule = cold_start.k_schedule(opts.cold_start, opts.k_schedule)
    setup.announce(
        f"draft: {count_params(draft):,} parameters",
        "draft",
        (f" ({k_schedule} k from 1)" if selective and k_schedule != "constant" else "")
        + (f", Δ in {delta_kind}" if selective and delta_kind != opts.divergence else ""),
    )
    if setup.accelerator.is_main_process:
        warn_unservable(f"the draft written to {opts.output}", [head_size_problem(draft.config)])
    setup.train(
        draft,
        token_loss,
        validate,
        "greedy_agreement",
        {"params": count_params(draft)},
        save=lambda: tokenizer.save_pretrained(opts.output),
        normalize=opts.normalize,
        prepare_items=prepare_items if on_policy else None,
        on_step=on_step,
    )
