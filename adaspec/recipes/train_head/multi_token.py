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
from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec import data as data_lib
from adaspec.models.target import FINAL
from adaspec.distill import cold_start, selection
from adaspec.training.setup import target_response_items, val_continuations
from adaspec.distill.steps import place_by_predicted_token
from adaspec.drafters.target_parts import target_parts
from adaspec.drafters.medusa.model import MedusaHeads, build_medusa
from adaspec.drafters.mtp.model import MTPHeads, build_mtp
from adaspec.drafters.multi_token_loss import depth_token_losses, depth_weights
from adaspec.drafters.target_record import check_record, write_record
from adaspec.errors import AdaspecError
from adaspec.evaluation.head_acceptance import head_acceptance
from adaspec.drafters.medusa.export import load_medusa, save_medusa
from adaspec.drafters.mtp.export import load_mtp
from adaspec.io import atomic_write_json
from adaspec.models import count_params, load_model, load_tokenizer, output_vocab_size
from adaspec.data.options import load_split, train_items
from adaspec.models.servable import MTP_REASON, head_size_problem, warn_unservable
from adaspec.training.checkpoint import load_checkpoint
from adaspec.training.loop import OnStep, make_accelerator, train_loop
from adaspec.recipes.train_head.options import TrainHeadOptions, budgeted, head_run, kept_fraction
from adaspec.training.run_fingerprint import Run
from adaspec.training.target_signal import TargetSignal, open_head_cache

def _load_heads(kind: str, path: str, depth: int, target: PreTrainedModel, what: str, strict: bool
                ) -> MTPHeads | MedusaHeads:
    """A saved checkpoint of `kind` and `depth` that fits the target (its loader refuses another kind)."""
    check_record(path, target, strict)  # the tokenizer is checked by the vocabulary rule of the command
    heads = load_mtp(path) if kind == "mtp" else load_medusa(path)
    saved = heads.cfg.depth if isinstance(heads, MTPHeads) else heads.cfg.heads
    if saved != depth:
        raise AdaspecError(f"{what} has {saved} depths, --depth is {depth}")
    hidden = int(target.config.hidden_size)
    if heads.cfg.hidden != hidden:
        raise AdaspecError(f"{what} was built for hidden size {heads.cfg.hidden}, the target has {hidden}")
    if isinstance(heads, MedusaHeads) and heads.cfg.vocab != output_vocab_size(target):
        rows = output_vocab_size(target)
        raise AdaspecError(f"{what} has {heads.cfg.vocab} output rows, the target has {rows}")
    return heads


def _build(opts: TrainHeadOptions, target: PreTrainedModel) -> nn.Module:
    if opts.init:
        return _load_heads(opts.kind, opts.init, int(opts.depth), target, f"--init {opts.init}", opts.strict)
    if opts.cold_start == "ref":
        return _load_heads(opts.kind, str(opts.ref), int(opts.depth), target, f"--ref {opts.ref}", opts.strict)
    if opts.kind == "mtp":
        return build_mtp(target, opts.depth, seed=opts.init_seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.init_seed)
        return build_medusa(target, opts.depth, opts.medusa_layers, shared_head=opts.shared_head)


def run_multi_token_head(opts: TrainHeadOptions, on_step: OnStep | None = None) -> None:
    accelerator = make_accelerator(opts)
    with head_run(opts, accelerator) as run:
        _multi_token_head(opts, accelerator, run, on_step)


def _multi_token_head(opts: TrainHeadOptions, accelerator: Accelerator, run: Run, on_step: OnStep | None) -> None:
    device = accelerator.device
    torch.manual_seed(opts.seed)
    target = load_checkpoint(opts.target, load=load_model).to(device).eval()
    target.requires_grad_(False)
    tokenizer: PreTrainedTokenizerBase = load_tokenizer(opts.target, chat_template=opts.chat_template)
    heads = _build(opts, target).float().train().to(device)
    ref = None
    if opts.method == "adaspec":
        ref = _load_heads(opts.kind, str(opts.ref), int(opts.depth), target, f"--ref {opts.ref}", opts.strict)
        ref = ref.float().to(device).eval()
        ref.requires_grad_(False)
    parts = target_parts(target)
    mtp = opts.kind == "mtp"

    out = Path(opts.output)
    eos = tokenizer.eos_token_id
    items, report = train_items(opts, tokenizer, accelerator.print)
    cache = None  # opened first: a mismatched cache is refused before any work
    if opts.teacher_cache:
        cache = open_head_cache(opts.teacher_cache, opts.target, target, items, (FINAL,),
                                None if opts.loss == "ce" else opts.temperature, parts.vocab)
    if opts.data_source == "target":
        items = target_response_items(target, items, opts, run, accelerator, eos)
    val_prompts = [it["input_ids"][: it["prompt_length"]] for it in data_lib.encode(
        load_split(opts, "validation", opts.val_examples), tokenizer, opts.max_length)]
    val = val_continuations(target, val_prompts, opts.val_max_new_tokens, eos, run, accelerator)
    signal = TargetSignal(target, parts.vocab, cache)
    weights = depth_weights(opts.depth, opts.depth_weights, opts.lam)  # type: ignore[arg-type]
    mode = opts.selection if opts.method == "adaspec" else "all"
    sel_gen = torch.Generator()
    sel_step = [-1]

    def token_loss(model: nn.Module, batch: dict, step: int):
        if step != sel_step[0]:  # random selection seeded per step, so a resumed run draws the same
            sel_step[0] = step
            sel_gen.manual_seed((opts.seed + 1) * 1_000_003 + step)
        ids, labels = batch["input_ids"], batch["labels"]
        teacher, hidden = signal(batch, (FINAL,))
        hidden = hidden[0].float()
        per_depth = depth_token_losses(model(parts, hidden, ids), teacher, labels, opts.loss,
                                       opts.temperature, opts.beta)
        ref_depth = [None] * len(per_depth)
        if mode != "all":
            with torch.no_grad():
                ref_depth = [r for r, _ in depth_token_losses(ref(parts, hidden, ids), teacher, labels,
                                                              opts.loss, opts.temperature, opts.beta)]
        selected, logs = [], {}
        fraction = kept_at(step)
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

    opts = budgeted(opts, len(items))
    kept_at = kept_fraction(opts, len(items))
    accelerator.print(f"{opts.kind} heads: {count_params(heads):,} parameters, {opts.depth} depths; "
                      f"{opts.method}" + (f" k={opts.k} {opts.selection}" if mode != "all" else "")
                      + f"; {len(items)} examples, {opts.epochs:g} epochs, global batch {opts.batch_size}"
                      + (f"; target signal from {opts.teacher_cache} (top-{cache.top_k})" if cache else ""))
    if line := cold_start.announcement(opts.cold_start, "head", opts.k):
        accelerator.print(line)
    if accelerator.is_main_process:
        warn_unservable(f"the {opts.kind} heads written to {opts.output}",
                        [MTP_REASON if opts.kind == "mtp" else None, head_size_problem(target.config)])
    # the loop saves and restores through save_pretrained / from_pretrained, which the heads provide
    result = train_loop(opts, accelerator, heads, tokenizer, items, token_loss, validate,  # type: ignore
                        best_key="accept_length", higher_is_better=True, epochs=opts.epochs,
                        on_step=on_step)
    if accelerator.is_main_process:
        if not mtp and opts.shared_head:  # vLLM reads the shared head from the draft checkpoint
            save_medusa(load_medusa(out), out, target)
        tokenizer.save_pretrained(opts.output)
        write_record(out, target, tokenizer)
        summary = {"kind": opts.kind, "params": count_params(heads), "steps": result.steps,
                   "best_accept_length": result.best_metric, "epochs": opts.epochs, "batch_size": opts.batch_size,
                   "cold_start": opts.cold_start, "history": result.history, **report.summary()}
        atomic_write_json(out / "train_summary.json", summary)

