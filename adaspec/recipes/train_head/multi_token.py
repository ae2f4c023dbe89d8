"""The `train-head` recipe: MTP modules or Medusa heads on a frozen target, trained with the shared loop.

Per depth k (MTP module k, Medusa head k), position i predicts token i+k+1; its loss is a divergence to
the target's own distribution for that token (self-distillation, the default) or cross-entropy on the data
token (adaspec.drafters.multi_token_loss), on response tokens only. The depths are combined with weights
w_k (default λ / D, DeepSeek-V3's λ on the mean over depths) at the position that scores the predicted
token, so the loop's "response" normalisation gives Σ_k w_k · (sum of depth-k losses) / response tokens.

--method adaspec: a reference head (the same kind, trained with --method kd) gives per depth and token
Δ_k = L_k(head) − L_k(ref); each depth trains on its own top-k fraction by Δ_k (or bottom / random / all,
the ablations), as adaspec.distill.selection does for a draft model. Only the "response" normalisation of
the official AdaSPEC code is offered (a kept count per depth has no single denominator).

The target's final normed states and distributions come from a live forward per batch, or with
--teacher-cache from `adaspec cache --hidden-layers final` (adaspec.training.target_signal).

Validation (keep-best): greedy acceptance teacher-forced on the target's greedy continuations of the
validation prompts (adaspec.evaluation.head_acceptance): mean accepted length of a γ = D step.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from adaspec import data as data_lib
from adaspec.distill import selection
from adaspec.distill.steps import place_by_predicted_token
from adaspec.drafters.family import Family
from adaspec.drafters.multi_token_loss import depth_token_losses, depth_weights
from adaspec.drafters.target_parts import target_parts
from adaspec.drafters.target_record import check_record, write_record
from adaspec.errors import AdaspecError
from adaspec.evaluation.head_acceptance import head_acceptance
from adaspec.models import count_params
from adaspec.models.servable import head_size_problem, warn_unservable
from adaspec.recipes.train_head.options import TrainHeadOptions
from adaspec.training.loop import OnStep
from adaspec.training.setup import RecipeSetup, StepGenerator
from adaspec.training.target_signal import TargetSignal, open_head_cache


def _load_heads(family: Family, path: str, depth: int, target: PreTrainedModel, what: str, strict: bool) -> nn.Module:
    """A saved checkpoint of `family` and `depth` that fits the target (its loader refuses another kind)."""
    check_record(path, target, strict)  # the tokenizer is checked by the vocabulary rule of the command
    heads = family.head.from_pretrained(path)  # type: ignore[union-attr]
    saved = family.max_gamma(heads)  # MTP modules and Medusa heads draft one token per depth
    if saved != depth:
        raise AdaspecError(f"{what} has {saved} depths, --depth is {depth}")
    hidden = int(target.config.hidden_size)
    if heads.cfg.hidden != hidden:
        raise AdaspecError(f"{what} was built for hidden size {heads.cfg.hidden}, the target has {hidden}")
    problem = family.misfit(heads, target)
    if problem:
        raise AdaspecError(f"{what} {problem}")
    return heads


def _build(opts: TrainHeadOptions, family: Family, target: PreTrainedModel) -> nn.Module:
    if opts.draft_init:
        return _load_heads(
            family, opts.draft_init, int(opts.depth), target, f"--draft-init {opts.draft_init}", opts.strict
        )
    if opts.cold_start == "ref":
        return _load_heads(family, str(opts.ref), int(opts.depth), target, f"--ref {opts.ref}", opts.strict)
    with torch.random.fork_rng(devices=[]):  # the same --init-seed gives the same heads
        torch.manual_seed(opts.init_seed)
        return family.new_head(target, opts)  # type: ignore[misc]


def run(opts: TrainHeadOptions, on_step: OnStep | None = None) -> None:
    with RecipeSetup.open(opts) as setup:
        _multi_token_head(opts, setup, on_step)


def _multi_token_head(opts: TrainHeadOptions, setup: RecipeSetup, on_step: OnStep | None) -> None:
    target, tokenizer, items = setup.target, setup.tokenizer, setup.items
    device = setup.accelerator.device
    family = opts.family
    heads = _build(opts, family, target).float().train().to(device)
    ref = None
    if opts.method == "adaspec":
        ref = _load_heads(family, str(opts.ref), int(opts.depth), target, f"--ref {opts.ref}", opts.strict)
        ref = ref.float().to(device).eval()
        ref.requires_grad_(False)
    parts = target_parts(target)
    layers = family.target_layers()  # the final normed state

    cache = None  # opened first: a mismatched cache is refused before any work
    if opts.teacher_cache:
        cache = open_head_cache(
            opts.teacher_cache,
            opts.target,
            target,
            items,
            layers,
            None if opts.divergence == "ce" else opts.temperature,
            parts.vocab,
        )
    val = setup.val_continuations()
    signal = TargetSignal(target, parts.vocab, cache)
    weights = depth_weights(opts.depth, opts.depth_weights, opts.lam)  # type: ignore[arg-type]
    mode = opts.selection if opts.method == "adaspec" else "all"
    generator = StepGenerator(opts.seed)
    kept_at = setup.kept_fraction()

    def token_loss(model: nn.Module, batch: dict, step: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Per-depth losses, each depth's AdaSPEC selection folded in, at the position scoring the token it
        predicts (a training.loop.TokenLoss whose kept is the response mask)."""
        ids, labels = batch["input_ids"], batch["labels"]
        teacher, hidden = signal(batch, layers)
        hidden = hidden[0].float()
        per_depth = depth_token_losses(
            model(parts, hidden, ids), teacher, labels, opts.divergence, opts.temperature, opts.beta
        )
        ref_depth = [None] * len(per_depth)
        if mode != "all":
            with torch.no_grad():
                ref_depth = [
                    r
                    for r, _ in depth_token_losses(
                        ref(parts, hidden, ids), teacher, labels, opts.divergence, opts.temperature, opts.beta
                    )
                ]
        selected, logs = [], {}
        fraction, sel_gen = kept_at(step), generator.at(step)  # the step's draws: a resumed run draws the same
        for k, ((loss, mask), ref_loss) in enumerate(zip(per_depth, ref_depth), start=1):
            kept = selection.delta_selection(loss, ref_loss, mask, fraction, mode, generator=sel_gen)
            selected.append(loss * kept)
            n = max(int(mask.sum()), 1)
            logs[f"loss_depth{k}"] = float((loss.detach() * mask).sum()) / n
            logs[f"kept_depth{k}"] = float(kept.sum()) / n
        # the selection is inside the per-token values; the loop keeps every response token
        response = data_lib.response_mask(labels)
        return place_by_predicted_token(selected, weights, response.shape[1], first=1), response, logs

    def validate(model: nn.Module) -> dict[str, float]:
        return head_acceptance(partial(model, parts), target, val, opts.depth)

    setup.announce(f"{opts.kind} heads: {count_params(heads):,} parameters, {opts.depth} depths", "head", cache=cache)
    if setup.accelerator.is_main_process:
        warn_unservable(
            f"the {opts.kind} heads written to {opts.output}",
            [family.vllm_problem(target.config.to_dict()), head_size_problem(target.config)],
        )

    def save() -> None:
        out = Path(opts.output)
        if opts.shared_head and family.store_target_head:  # vLLM reads the shared head from the draft checkpoint
            family.store_target_head(str(out), target)
        tokenizer.save_pretrained(opts.output)
        write_record(out, target, tokenizer)

    # the loop saves and restores through save_pretrained / from_pretrained, which the heads provide
    setup.train(
        heads,
        token_loss,
        validate,
        "accept_length",  # type: ignore[arg-type]
        {"kind": opts.kind, "params": count_params(heads)},
        save=save,
        on_step=on_step,
    )
