"""The `train-head --kind dflash` recipe: a DFlash head on a frozen target, through the shared training loop.

Per micro-batch the target's distributions and the head's layers come from a live forward or from
`adaspec cache --hidden-layers` (adaspec.training.target_signal). Each sequence gets `--anchors` block
starts a, drawn uniformly (without replacement) among the positions whose next token is a response token;
block a is [x_a, MASK, ...] at positions a..a+B-1 and sees the context of positions < a, as at decoding
(the recipe of DFlash's authors, vLLM speculators and SpecForge: random anchors, one block forward each).
Slot j of block a predicts token a+j; its loss is the per-token divergence (`--divergence`, adaspec.distill
.losses) from the target's distribution at position a+j-1, weighted `--step-decay`**(j-1) along the block.

`--method adaspec --ref KD_HEAD` keeps, per slot j, the top-k fraction of the micro-batch's scored tokens by
Δ = L(head) − L(reference head) (adaspec.distill.selection, as the EAGLE recipe does per unroll step);
bottom / random / all are the ablations. Every kept term is added at the position scoring its token, so
the loop's response normalisation gives Σ_j w_j · (kept slot-j losses) / response tokens.

Validation (keep-best): greedy accepted length of a block of B-1 proposals started at every position of the
target's greedy continuations of the validation prompts (teacher-forced: the block at a accepts the leading
slots whose argmax is the continuation's token), and each slot's agreement.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec import data as data_lib
from adaspec.decoding.acceptance import Continuations
from adaspec.distill import selection
from adaspec.distill.cache_store import TeacherCache
from adaspec.distill.teacher import divergence
from adaspec.drafters.dflash.export import serving_problems
from adaspec.drafters.dflash.model import DFlashConfig, DFlashHead
from adaspec.drafters.eagle.training import step_weights
from adaspec.drafters.head_checkpoint import load_strict
from adaspec.drafters.target_parts import TargetParts, target_parts
from adaspec.drafters.target_record import check_record, write_record
from adaspec.errors import AdaspecError
from adaspec.models import count_params
from adaspec.models.servable import warn_unservable
from adaspec.models.target import features
from adaspec.recipes.train_head.options import TrainHeadOptions
from adaspec.training.loop import OnStep
from adaspec.training.setup import RecipeSetup, StepGenerator
from adaspec.training.target_signal import TargetSignal, open_head_cache


def sample_anchors(
    response: Tensor, attention_mask: Tensor, count: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """(anchors [B, K], which are real [B, K]): up to `count` distinct block starts a >= 1 per sequence whose
    next token is a real response token (response [B, T-1]: position t scores token t+1)."""
    b, t = attention_mask.shape
    ok = torch.zeros(b, t, dtype=torch.bool, device=response.device)
    ok[:, 1 : t - 1] = response[:, 1:].bool() & attention_mask[:, 2:].bool()
    k = min(count, t)
    scores = torch.rand(b, t, generator=generator).to(response.device).masked_fill(~ok, -1.0)
    top, anchors = scores.topk(k, dim=1)
    real = top >= 0
    return torch.where(real, anchors, torch.ones_like(anchors)), real


class BlockLoss:
    """The recipe's per-token loss (module docstring): block divergences, AdaSPEC selection per slot, folded
    into the per-token values (a training.loop.TokenLoss whose kept is the response mask)."""

    def __init__(
        self,
        opts: TrainHeadOptions,
        parts: TargetParts,
        target: PreTrainedModel,
        ref: DFlashHead | None,
        cache: TeacherCache | None = None,
        kept_at: Callable[[int], float] | None = None,
    ):
        self.opts, self.parts, self.ref = opts, parts, ref
        self.kept_at = kept_at or (lambda step: opts.k)
        self.signal = TargetSignal(target, parts.vocab, cache)
        self.mode = opts.selection if opts.method == "adaspec" else "all"
        self.generator = StepGenerator(opts.seed)

    def divergences(self, head: torch.nn.Module, teacher, feats: Tensor, batch: dict, anchors: Tensor) -> Tensor:
        """Slot divergences [B, K, B-1] of `head` (possibly DDP-wrapped) at `anchors`."""
        o = self.opts
        logits = head(self.parts, feats, batch["input_ids"], anchors, batch["attention_mask"])
        rows = (anchors[:, :, None] + torch.arange(logits.shape[2], device=anchors.device)).clamp(
            max=batch["input_ids"].shape[1] - 1
        )  # slot j + 1 predicts token a + j + 1: the target's row a + j
        p = teacher[torch.arange(rows.shape[0], device=rows.device)[:, None, None], rows]
        return divergence(o.divergence, p, logits, temperature=o.temperature, beta=o.beta)

    def __call__(self, head: torch.nn.Module, batch: dict, step: int) -> tuple[Tensor, Tensor, dict[str, float]]:
        o = self.opts
        # a resumed run draws the same anchors and tokens; micro-batches of a step differ by their first item
        generator = self.generator.restart(step * 7_919 + int(batch["index"][0]))
        core: DFlashHead = getattr(head, "module", head)
        ids, am = batch["input_ids"], batch["attention_mask"]
        response = data_lib.response_mask(batch["labels"])
        teacher, states = self.signal(batch, core.config.hidden_layers)
        feats = torch.cat(list(states), dim=-1)
        anchors, real = sample_anchors(response, am, o.anchors, generator)
        div = self.divergences(head, teacher, feats, batch, anchors)
        slots = div.shape[-1]
        scored_at = anchors[:, :, None] + torch.arange(slots, device=ids.device)  # the loop's position of each
        in_range = scored_at < response.shape[1]
        scored_at = scored_at.clamp(max=response.shape[1] - 1)
        valid = real[:, :, None] & in_range & response.gather(1, scored_at.flatten(1)).view_as(scored_at).bool()
        ref_div = None
        if self.mode != "all":
            with torch.no_grad():
                ref_div = self.divergences(self.ref, teacher, feats, batch, anchors)
        k = self.kept_at(step)
        kept = torch.stack(
            [
                selection.delta_selection(
                    div[..., j],
                    None if ref_div is None else ref_div[..., j],
                    valid[..., j],
                    k,
                    self.mode,
                    generator=generator,
                )
                for j in range(slots)
            ],
            dim=-1,
        )
        weights = step_weights(slots, o.step_decay, div.device)
        terms = torch.where(kept & valid, div * weights, torch.zeros((), device=div.device))
        per_token = torch.zeros(response.shape, dtype=terms.dtype, device=terms.device)
        per_token = per_token.scatter_add(1, scored_at.flatten(1), terms.flatten(1))
        logs = {
            f"div_slot{j + 1}": float((div[..., j].detach() * valid[..., j]).sum()) / max(int(valid[..., j].sum()), 1)
            for j in range(min(slots, 3))
        }
        logs["kept_fraction"] = float((kept & valid).sum()) / max(int(valid.sum()), 1)
        logs["anchors"] = float(real.sum()) / real.shape[0]
        return per_token, response, logs


@torch.no_grad()
def block_acceptance(
    head: DFlashHead, parts: TargetParts, target: PreTrainedModel, data: Continuations, batch_size: int = 8
) -> dict[str, float]:
    """Teacher-forced greedy acceptance of blocks started at every continuation position (module docstring):
    `accept_length` (mean accepted proposals per block) and `agreement_slot{j}` (slot j's argmax equals the
    continuation's token)."""
    slots = head.config.max_gamma
    device = head.fc.weight.device
    accepted, agree, blocks = 0.0, torch.zeros(slots), 0
    for start in range(0, len(data.sequences), batch_size):
        seqs = data.sequences[start : start + batch_size]
        plens = data.prompt_lengths[start : start + batch_size]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        ids, mask = ids.to(device), mask.to(device)
        _, hidden = features(target, {"input_ids": ids, "attention_mask": mask}, head.config.hidden_layers)
        feats = torch.cat(list(hidden), dim=-1)
        # blocks at a = p-1 .. len-1-slots: every slot's token is a continuation token of the sequence
        starts = [list(range(max(p - 1, 1), len(s) - slots)) for s, p in zip(seqs, plens)]
        k = max((len(a) for a in starts), default=0)
        if k == 0:
            continue
        anchors = torch.tensor([a + [1] * (k - len(a)) for a in starts], device=device)
        real = torch.tensor([[True] * len(a) + [False] * (k - len(a)) for a in starts], device=device)
        pred = head(parts, feats, ids, anchors, mask).argmax(-1)
        truth = ids.gather(1, (anchors[:, :, None] + torch.arange(1, slots + 1, device=device)).flatten(1))
        hit = (pred == truth.view_as(pred)) & real[:, :, None]
        accepted += float(hit.long().cumprod(-1).sum())
        agree += hit.sum((0, 1)).float().cpu()
        blocks += int(real.sum())
    out = {"accept_length": accepted / max(blocks, 1)}
    out.update({f"agreement_slot{j + 1}": float(a) / max(blocks, 1) for j, a in enumerate(agree)})
    return out


def _reference(
    opts: TrainHeadOptions, target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: DFlashConfig
) -> DFlashHead:
    check_record(str(opts.ref), target, opts.strict, tokenizer)
    ref = DFlashHead.from_pretrained(str(opts.ref))
    theirs, ours = ref.config, cfg
    for name in ("block_size", "target_layers", "mask_token_id", "vocab_size"):
        if getattr(theirs, name) != getattr(ours, name):
            raise AdaspecError(
                f"the reference head {opts.ref} has {name} {getattr(theirs, name)}, this head "
                f"{getattr(ours, name)}: train both with the same DFlash options"
            )
    return ref


def run(opts: TrainHeadOptions, on_step: OnStep | None = None) -> None:
    with RecipeSetup.open(opts) as setup:
        _dflash_head(opts, setup, on_step)


def _dflash_head(opts: TrainHeadOptions, setup: RecipeSetup, on_step: OnStep | None) -> None:
    target, tokenizer, items = setup.target, setup.tokenizer, setup.items
    parts = target_parts(target)
    cfg = DFlashConfig.for_target(
        target,
        block_size=opts.block_size,
        num_layers=opts.draft_layers,
        target_layers=opts.aux_layer_ids(),
        mask_token_id=opts.mask_token_id,
    )
    cache = None  # opened first: a mismatched cache is refused before any work
    if opts.teacher_cache:
        layers = opts.family.target_layers(cfg.hidden_layers)  # those the head's config names
        cache = open_head_cache(opts.teacher_cache, opts.target, target, items, layers, opts.temperature, parts.vocab)
    head = DFlashHead.from_target(target, cfg, seed=opts.init_seed).float()
    ref = None
    if opts.method == "adaspec":
        ref = _reference(opts, target, tokenizer, cfg).to(setup.accelerator.device)
        ref.requires_grad_(False)
        if opts.cold_start == "ref":
            load_strict(head, ref.state_dict(), str(opts.ref))
    val = setup.val_continuations()

    def validate(model: DFlashHead) -> dict[str, float]:
        return block_acceptance(model, parts, target, val)

    setup.announce(
        f"dflash head: {count_params(head):,} parameters, {cfg.num_layers} layers, block "
        f"{cfg.block_size}, target layers {list(cfg.hidden_layers)}, mask id {cfg.mask_token_id}",
        "head",
        f"; {opts.anchors} anchors per sequence",
        cache=cache,
    )
    if setup.accelerator.is_main_process:
        warn_unservable(f"the dflash head written to {opts.output}", serving_problems(cfg, target.config))
    loss = BlockLoss(opts, parts, target, ref, cache, setup.kept_fraction())
    summary = {"kind": "dflash", "params": count_params(head)}
    setup.train(
        head,
        loss,
        validate,
        "accept_length",
        summary,  # type: ignore[arg-type]
        save=lambda: write_record(Path(opts.output), target, tokenizer),
        on_step=on_step,
    )
