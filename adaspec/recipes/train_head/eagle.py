"""The `train-head --kind eagle` recipe: an EAGLE feature head on a frozen target, through the shared training loop.

Per batch the frozen target runs once (logits + the head's hidden layers, hooked), or with --teacher-cache
its hidden states and top-K distributions are read from `adaspec cache` (adaspec.training.target_signal);
the head is unrolled `--ttt-steps` times (adaspec.drafters.eagle.training, SpecForge's training-time test) and
step j's per-token divergence against the target's distribution renormalised over the draft vocabulary is weighted
`--step-decay`**j. `--method adaspec --ref REF_HEAD` keeps, per unroll step, the top-k fraction of
response tokens by Δ = L(head) − L(reference head) (the reference being a head trained with plain KD);
`--selection bottom/random/all` are the ablations.

Step j's loss at head index t is the target's prediction at position t + j, so it is added to the loop's
per-token loss at that position: the loop's response-token normalisation then gives
Σ_j decay**j · (step-j loss summed over its kept tokens) / (response tokens), the AdaSPEC normalisation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel

from adaspec import data as data_lib
from adaspec.decoding.acceptance import Continuations
from adaspec.distill import selection
from adaspec.distill.cache_store import TeacherCache
from adaspec.distill.steps import place_by_predicted_token
from adaspec.distill.teacher import TopK, divergence
from adaspec.drafters.eagle.draft_vocab import frequent_tokens
from adaspec.drafters.eagle.model import EagleConfig, EagleHead, aux_layers_problem
from adaspec.drafters.eagle.training import (
    feature_regression_loss,
    shift_steps,
    step_weights,
    unroll,
    unrolled_mask,
    unrolled_targets,
)
from adaspec.drafters.head_checkpoint import load_strict
from adaspec.drafters.target_record import check_record, write_record
from adaspec.errors import AdaspecError
from adaspec.models import count_params
from adaspec.models.servable import eagle3_target_problem, head_size_problem, warn_unservable
from adaspec.models.target import features
from adaspec.recipes.train_head.options import TrainHeadOptions
from adaspec.training.loop import OnStep
from adaspec.training.setup import RecipeSetup, StepGenerator
from adaspec.training.target_signal import TargetSignal, open_head_cache


@torch.no_grad()
def target_signal(
    target: PreTrainedModel, input_ids: Tensor, attention_mask: Tensor, layers: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    """The frozen target's logits [B, T, V] and the head's layers concatenated [B, T, layers * H], from one
    forward (adaspec.models.target.features: hooks on those modules only)."""
    logits, hidden = features(target, {"input_ids": input_ids, "attention_mask": attention_mask}, layers)
    return logits, torch.cat(list(hidden), dim=-1)


class HeadLoss:
    """The recipe's per-token loss: unrolled divergences, AdaSPEC selection per step, folded per position (a
    training.loop.TokenLoss whose kept is the response mask).

    The alignment is adaspec.distill.steps' (step j at t predicts token t+1+j, scored where
    response[:, t+j]). The fold is done here rather than by `steps.multi_step_loss` because (1) the unroll
    has no prediction at index 0 (no feature before token 0), which needs a per-step validity mask, and (2)
    step j's term is placed at the target position t+j, where the loop's response mask keeps it (placed at
    the predicting position t, a prompt position for the first response tokens, `reduce_loss` drops it).
    tests/training/test_head.py checks the two hold the same weighted terms.
    """

    def __init__(
        self,
        opts: TrainHeadOptions,
        target: PreTrainedModel,
        ref: EagleHead | None,
        vocab: int,
        cache: TeacherCache | None = None,
        kept_at: Callable[[int], float] | None = None,
    ):
        self.opts, self.ref = opts, ref
        # the fraction kept at an optimizer step (head_options.kept_fraction): --k unless a cold start ramps it
        self.kept_at = kept_at or (lambda step: opts.k)
        self.signal = TargetSignal(target, vocab, cache)
        self.mode = opts.selection if opts.method == "adaspec" else "all"
        self.generator = StepGenerator(opts.seed)

    def step_divergences(
        self, head: torch.nn.Module, d2t_head: EagleHead, teacher: Tensor | TopK, feats: Tensor, batch: dict
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(divergence [S, B, T], valid response positions [S, B, T], unrolled hidden [S, B, T, H]);
        `head` may be wrapped (DDP), `d2t_head` is the module itself."""
        o, s = self.opts, self.opts.ttt_steps
        ids, am = batch["input_ids"], batch["attention_mask"]
        un = head(feats, ids, s, am)
        p = unrolled_targets(d2t_head, teacher, s)
        div = divergence(o.divergence, p, un.logits, temperature=o.temperature, beta=o.beta)
        resp = torch.nn.functional.pad(data_lib.response_mask(batch["labels"]), (0, 1), value=False)
        valid = unrolled_mask(am, s) & shift_steps(resp, s, False)
        return div, valid, un.hidden

    def __call__(self, head: torch.nn.Module, batch: dict, step: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        o = self.opts
        generator = self.generator.restart(step)  # a resumed run draws the same tokens (each micro-batch afresh)
        core: EagleHead = getattr(head, "module", head)  # DDP wraps the head under accelerate
        layers = core.config.hidden_layers
        if self.ref is not None and self.ref.config.hidden_layers != layers:
            raise AdaspecError(
                f"the reference head reads layers {list(self.ref.config.hidden_layers)}, this head {list(layers)}"
            )
        teacher, states = self.signal(batch, layers)
        feats = torch.cat(list(states), dim=-1)
        div, valid, hidden = self.step_divergences(head, core, teacher, feats, batch)
        ref_div = None
        if self.mode != "all":
            with torch.no_grad():
                ref_div = self.step_divergences(self.ref, self.ref, teacher, feats, batch)[0]
        k = self.kept_at(step)
        kept = torch.stack(
            [
                selection.delta_selection(
                    div[j], None if ref_div is None else ref_div[j], valid[j], k, self.mode, generator=generator
                )
                for j in range(o.ttt_steps)
            ]
        )
        weights = step_weights(o.ttt_steps, o.step_decay, div.device)[:, None, None]
        per_step = torch.where(kept, div, torch.zeros((), device=div.device)) * weights
        logs = {
            f"div_step{j}": float((div[j].detach() * valid[j]).sum() / valid[j].sum().clamp(min=1))
            for j in range(min(o.ttt_steps, 3))
        }
        if o.feature_weight > 0:
            goal = shift_steps(feats.to(hidden.dtype), o.ttt_steps)
            reg = torch.nn.functional.smooth_l1_loss(hidden, goal, reduction="none").mean(-1)
            per_step = per_step + o.feature_weight * torch.where(valid, reg, torch.zeros((), device=reg.device))
            logs["feature_loss"] = float(feature_regression_loss(hidden.detach(), feats, valid))
        logs["kept_fraction"] = float(kept.sum()) / max(int(valid.sum()), 1)
        # unroll index t of step j predicts token t + 1 + j; the loop's position t + j scores it
        per_token = place_by_predicted_token(list(per_step), [1.0] * o.ttt_steps, per_step.shape[-1])[:, :-1]
        return per_token, data_lib.response_mask(batch["labels"]), logs


def _right_pad(seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def head_agreement(
    head: EagleHead, target: PreTrainedModel, data: Continuations, steps: int, batch_size: int = 16
) -> dict[str, float]:
    """Greedy agreement of unroll step j with the target's greedy continuation tokens (step 0: the head's
    first proposal; later steps: chained proposals with teacher-forced tokens), over continuation tokens."""
    device = head.fc.weight.device
    agree, counts = torch.zeros(steps), torch.zeros(steps)
    for start in range(0, len(data.sequences), batch_size):
        seqs = data.sequences[start : start + batch_size]
        ids, mask = (x.to(device) for x in _right_pad(seqs))
        score = torch.zeros_like(mask, dtype=torch.bool)
        for i, (s, p) in enumerate(zip(seqs, data.prompt_lengths[start : start + batch_size])):
            score[i, p - 1 : len(s) - 1] = True  # target position t scores token t + 1
        _, feats = target_signal(target, ids, mask, head.config.hidden_layers)
        pred = head.draft_to_target(unroll(head, feats, ids, steps, mask).logits.argmax(-1))
        truth = shift_steps(torch.nn.functional.pad(ids[:, 1:], (0, 1)), steps)
        scored = unrolled_mask(mask, steps) & shift_steps(score, steps, False)
        agree += ((pred == truth) & scored).sum((1, 2)).float().cpu()
        counts += scored.sum((1, 2)).float().cpu()
    rates = (agree / counts.clamp(min=1)).tolist()
    return {"agreement": rates[0], **{f"agreement_step{j}": r for j, r in enumerate(rates) if j}}


def run(opts: TrainHeadOptions, on_step: OnStep | None = None) -> None:
    with RecipeSetup.open(opts) as setup:
        _eagle_head(opts, setup, on_step)


def _eagle_head(opts: TrainHeadOptions, setup: RecipeSetup, on_step: OnStep | None) -> None:
    target, tokenizer, items = setup.target, setup.tokenizer, setup.items
    vocab = int(target.get_output_embeddings().weight.shape[0])
    overrides = {"draft_vocab_size": opts.draft_vocab} if opts.draft_vocab else {}
    cfg = EagleConfig.for_target(target, opts.variant, aux_layers=opts.aux_layer_ids(), **overrides)
    cache = None  # opened first: a mismatched cache is refused before any work
    if opts.teacher_cache:
        layers = opts.family.target_layers(cfg.hidden_layers)  # those the head's config names
        cache = open_head_cache(opts.teacher_cache, opts.target, target, items, layers, opts.temperature, vocab)
    tokens = None
    if opts.draft_vocab:
        tokens = frequent_tokens((it["input_ids"][it["prompt_length"] :] for it in items), opts.draft_vocab, vocab)
    head = EagleHead.from_target(target, cfg, seed=opts.init_seed, draft_tokens=tokens)
    ref = None
    if opts.method == "adaspec":
        check_record(opts.ref, target, opts.strict, tokenizer)
        ref = EagleHead.from_pretrained(opts.ref).to(setup.accelerator.device)
        ref.requires_grad_(False)
        if ref.config.vocab_size != vocab or not torch.equal(ref.d2t.cpu(), head.d2t.cpu()):
            raise AdaspecError(
                f"the reference head {opts.ref} has another (draft) vocabulary than this head: "
                "train both with the same --draft-vocab on the same data"
            )
        if opts.cold_start == "ref":
            load_strict(head, ref.state_dict(), opts.ref)
    val = setup.val_continuations()

    def validate(model: EagleHead) -> dict[str, float]:
        return head_agreement(model, target, val, opts.ttt_steps)

    trained = sum(p.numel() for p in head.parameters() if p.requires_grad)
    setup.announce(
        f"{cfg.variant} head: {trained:,} trained parameters (of {count_params(head):,}); layers "
        f"{list(cfg.hidden_layers)}, draft vocabulary {cfg.draft_vocab_size}",
        "head",
        cache=cache,
    )
    if setup.accelerator.is_main_process:
        warn_unservable(
            f"the {cfg.variant} head written to {opts.output}",
            [
                head_size_problem({"head_dim": cfg.head_dim}),
                head_size_problem(target.config),
                eagle3_target_problem(target.config) if cfg.variant == "eagle3" else None,
                aux_layers_problem(cfg) if cfg.variant == "eagle3" else None,
            ],
        )
    loss = HeadLoss(opts, target, ref, vocab, cache, setup.kept_fraction())
    setup.train(
        head,
        loss,
        validate,
        "agreement",
        {"trained_params": trained},
        save=lambda: write_record(Path(opts.output), target, tokenizer),
        on_step=on_step,
    )
