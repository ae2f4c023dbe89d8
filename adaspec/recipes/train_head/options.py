"""`adaspec train-head`: one command, one options dataclass, for every head family on a frozen target.

--kind eagle         an EAGLE-3 / EAGLE-1 feature head, training-time-test unroll (adaspec.recipes.train_head.eagle)
--kind mtp|medusa    DeepSeek-style MTP modules or Medusa heads, one loss per depth
                     (adaspec.recipes.train_head.multi_token)
--kind dflash        a DFlash block drafter, one loss per block slot (adaspec.recipes.train_head.dflash)
Both run on the shared training loop with the divergences of adaspec.distill.losses and AdaSPEC's per-step
(per-depth) selection against a reference head trained with --method kd. The target's signal comes from a
live forward per batch or, with --teacher-cache, from `adaspec cache --hidden-layers`
(adaspec.training.target_signal).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from adaspec.distill import cold_start, selection
from adaspec.distill.cold_start import ColdStart
from adaspec.errors import AdaspecError
from adaspec.options import MAX_BATCH_TOKENS, helptext, strict_field
from adaspec.distill.cold_start import cold_start_field
from adaspec.training.loop import OnStep, planned_steps
from adaspec.training.options import TrainOptions
from adaspec.training.run_fingerprint import Run, cache_fingerprint, open_run, path_fingerprint

DEFAULT_DEPTH = {"mtp": 3, "medusa": 4}


@dataclass(kw_only=True)
class TrainHeadOptions(TrainOptions):
    """Train a drafter head on a frozen target: plain KD, or AdaSPEC selection per step against a KD head."""

    target: str = field(metadata=helptext("target model directory (its tokenizer is used); stays frozen"))
    kind: Literal["eagle", "mtp", "medusa", "dflash"] = field(default="eagle", metadata=helptext(
        "eagle: one layer on fused target features; mtp: sequential modules; medusa: parallel heads; "
        "dflash: a block of mask slots drafted in one forward (adaspec.drafters.dflash)"))
    method: Literal["kd", "adaspec"] = field(default="kd", metadata=helptext(
        "kd: every response token at every step; adaspec: per-step selective KD against --ref"))
    ref: str | None = field(default=None, metadata=helptext("reference head directory (required by adaspec)"))
    strict: bool = strict_field()
    k: float = field(default=0.4, metadata=helptext("fraction of response tokens kept per step"))
    selection: Literal["top", "bottom", "random", "all"] = field(default="top", metadata=helptext(
        "which tokens by Δ: top (AdaSPEC), bottom, random, all (= plain KD)"))
    cold_start: ColdStart = cold_start_field()
    loss: Literal["fkl", "rkl", "tvd", "jsd", "ce"] = field(default="fkl", metadata=helptext(
        "per-token loss: a divergence to the target's own distribution, or ce on the data token (mtp/medusa)"))
    beta: float = field(default=0.5, metadata=helptext("JSD mixture weight"))
    temperature: float = field(default=1.0, metadata=helptext("distillation temperature"))
    init_seed: int = field(default=0, metadata=helptext("seed of the head's initial weights"))
    match_token_budget: bool = field(default=False, metadata=helptext(
        "give this run at --k as many trained tokens per step (depth) as KD on every token at --batch-size "
        "and --epochs, as distill's --match-token-budget does; see --budget-by"))
    budget_by: Literal["batch", "epochs"] = field(default="batch", metadata=helptext(
        "how --match-token-budget matches: batch = batch/k and epochs/k at KD's optimizer steps (the AdaSPEC "
        "authors' scripts); epochs = epochs/k at KD's batch, 1/k the steps (adaspec reproduce's protocol)"))
    val_max_new_tokens: int = field(default=96, metadata=helptext("length of the target continuations scored"))
    teacher_cache: str | None = field(default=None, metadata=helptext(
        "cache from `adaspec cache --hidden-layers` (with the head's layers): the target's hidden states and "
        "top-K distributions are read from it, no target forward during training"))
    # --kind eagle
    variant: Literal["eagle3", "eagle1"] = field(default="eagle3", metadata=helptext(
        "eagle: eagle3 fuses three target layers; eagle1 reads the final normed state only"))
    aux_layers: str | None = field(default=None, metadata=helptext(
        "eagle3/dflash: target layers, e.g. 1,5,9 (default: the reference's; eagle3: low/middle/high)"))
    draft_vocab: int = field(default=0, metadata=helptext(
        "eagle: draft vocabulary of the N most frequent response tokens (0: the full vocabulary)"))
    ttt_steps: int = field(default=7, metadata=helptext("eagle: training-time-test unroll steps per position"))
    step_decay: float = field(default=0.8, metadata=helptext(
        "eagle: weight of unroll step j is decay**j; dflash: of block slot j, decay**(j-1)"))
    feature_weight: float = field(default=0.0, metadata=helptext(
        "eagle1: feature-regression (smooth-L1) weight; the reference uses 10x the token loss's weight"))
    # --kind dflash
    block_size: int = field(default=4, metadata=helptext(
        "dflash: block size B = the last token and B-1 mask slots, so at most B-1 proposals per step"))
    draft_layers: int = field(default=1, metadata=helptext("dflash: decoder layers of the head"))
    anchors: int = field(default=16, metadata=helptext("dflash: blocks trained per sequence per micro-batch"))
    mask_token_id: int | None = field(default=None, metadata=helptext(
        "dflash: the id standing for a masked slot, whose embedding is trained (default: the last id)"))
    # --kind mtp / medusa
    depth: int | None = field(default=None, metadata=helptext(
        "mtp/medusa: modules or heads = most tokens proposed per step (default: 3 for mtp, 4 for medusa)"))
    medusa_layers: int = field(default=1, metadata=helptext("medusa: residual blocks per head"))
    shared_head: bool = field(default=False, metadata=helptext(
        "medusa: use the target's frozen output head instead of one trained copy per head"))
    init: str | None = field(default=None, metadata=helptext("mtp/medusa: initial heads checkpoint"))
    lam: float = field(default=1.0, metadata=helptext("mtp/medusa: every depth weighs λ / D unless --depth-weights"))
    depth_weights: list[float] | None = field(default=None, metadata=helptext("mtp/medusa: one weight per depth"))
    data_source: Literal["dataset", "target"] = field(default="dataset", metadata=helptext(
        "mtp/medusa responses: the dataset's or the target's own continuations"))
    gen_max_new_tokens: int = field(default=128, metadata=helptext("length of target-generated responses"))
    gen_temperature: float = field(default=0.0, metadata=helptext("temperature of generated responses"))

    def __post_init__(self) -> None:
        super().__post_init__()
        selection.check_k(self.k)
        if self.method == "adaspec" and self.ref is None:
            raise AdaspecError("--method adaspec needs --ref (a head trained with --method kd)")
        # EAGLE and DFlash heads always start untrained (--init is for mtp/medusa)
        untrained = self.kind not in ("mtp", "medusa") or self.init is None
        self.cold_start = cold_start.resolve(self.cold_start,
                                             self.method == "adaspec" and self.selection != "all" and untrained)
        if self.temperature <= 0 or self.gen_temperature < 0:
            raise AdaspecError("--temperature must be > 0 and --gen-temperature >= 0")
        if not 0 <= self.beta <= 1:
            raise AdaspecError("--beta must be in [0, 1]")
        if self.teacher_cache and self.data_source == "target":
            raise AdaspecError("--data-source target generates the responses during training; a --teacher-cache "
                               "covers the dataset's responses (use --data-source dataset)")
        if self.kind == "eagle":
            self._check_eagle()
        elif self.kind == "dflash":
            self._check_dflash()
        else:
            self._check_multi_token()

    def _check_eagle(self) -> None:
        if self.loss == "ce":
            raise AdaspecError("--loss ce is for --kind mtp/medusa; an EAGLE head distils a divergence")
        if not 1 <= self.ttt_steps < self.max_length:
            raise AdaspecError(f"--ttt-steps must be in 1..{self.max_length - 1} (below --max-length), got "
                               f"{self.ttt_steps}")
        if not 0 < self.step_decay <= 1:
            raise AdaspecError(f"--step-decay must be in (0, 1], got {self.step_decay}")
        if self.draft_vocab < 0:
            raise AdaspecError(f"--draft-vocab must be >= 0, got {self.draft_vocab}")
        if self.feature_weight < 0 or (self.feature_weight > 0 and self.variant != "eagle1"):
            raise AdaspecError("--feature-weight must be >= 0 and applies to --variant eagle1 only")

    def _check_dflash(self) -> None:
        from adaspec.drafters.dflash.model import MAX_BLOCK_SIZE, MAX_DRAFT_LAYERS

        if self.loss == "ce" or self.init is not None:
            raise AdaspecError("a DFlash head distils a divergence (not --loss ce) and starts untrained (no --init)")
        if not 2 <= self.block_size <= min(MAX_BLOCK_SIZE, self.max_length):
            raise AdaspecError(f"--block-size must be in 2..{min(MAX_BLOCK_SIZE, self.max_length)} (at most "
                               f"--max-length), got {self.block_size}")
        if not 1 <= self.draft_layers <= MAX_DRAFT_LAYERS:
            raise AdaspecError(f"--draft-layers must be in 1..{MAX_DRAFT_LAYERS}, got {self.draft_layers}")
        if not 1 <= self.anchors <= self.max_length:
            raise AdaspecError(f"--anchors must be in 1..{self.max_length} (--max-length), got {self.anchors}")
        rows = self.batch_size * self.anchors * self.block_size  # the block logits' rows of a micro-batch
        if rows > MAX_BATCH_TOKENS:
            raise AdaspecError(f"--batch-size x --anchors x --block-size is {rows:,}, above the limit of "
                               f"{MAX_BATCH_TOKENS:,}")
        if not 0 < self.step_decay <= 1:
            raise AdaspecError(f"--step-decay must be in (0, 1], got {self.step_decay}")

    def _check_multi_token(self) -> None:
        from adaspec.drafters.multi_token_loss import depth_weights

        if self.depth is None:
            self.depth = DEFAULT_DEPTH[self.kind]
        if self.depth < 1 or self.medusa_layers < 0:
            raise AdaspecError(f"--depth must be >= 1 and --medusa-layers >= 0, got {self.depth} and "
                               f"{self.medusa_layers}")
        if self.depth >= self.max_length:  # depth d is trained on tokens d+1 ahead: none beyond the sequence
            raise AdaspecError(f"--depth ({self.depth}) must be below --max-length ({self.max_length}): a depth "
                               f"beyond the sequence has no token to learn")
        depth_weights(self.depth, self.depth_weights, self.lam)

    def aux_layer_ids(self) -> tuple[int, ...] | None:
        if self.aux_layers is None:
            return None
        try:
            return tuple(int(x) for x in self.aux_layers.split(","))
        except ValueError:
            raise AdaspecError(f"--aux-layers must be comma-separated layer ids, got {self.aux_layers!r}") from None


def budgeted(opts: TrainHeadOptions, n_items: int) -> TrainHeadOptions:
    """`opts` with the matched token budget applied to its batch, epochs and steps, as distill applies it
    (adaspec.training.setup.matched_budget); `opts` itself without --match-token-budget."""
    if not opts.match_token_budget:
        return opts
    from adaspec.training.setup import matched_budget

    batch_size, epochs, steps = matched_budget(n_items, opts.batch_size, opts.grad_accum, opts.epochs, opts.k,
                                               opts.budget_by)
    return replace(opts, batch_size=batch_size, epochs=epochs, max_steps=opts.max_steps or steps)


def kept_fraction(opts: TrainHeadOptions, n_items: int) -> Callable[[int], float]:
    """The fraction of response tokens AdaSPEC keeps at each optimizer step: --k, or the cold start's ramp to
    it over the run's steps (`opts` as `budgeted` returns them)."""
    total = opts.max_steps or planned_steps(n_items, opts.batch_size, opts.grad_accum, opts.epochs)
    schedule = cold_start.k_schedule(opts.cold_start, "constant")
    return lambda step: selection.scheduled_k(opts.k, schedule, step, total)


# options naming an input: their fingerprint (not their path) defines the run
HEAD_INPUTS = {"target": path_fingerprint, "ref": path_fingerprint, "init": path_fingerprint,
               "teacher_cache": cache_fingerprint}


@contextlib.contextmanager
def head_run(opts: TrainHeadOptions, accelerator: Any) -> Iterator[Run]:
    """`run_fingerprint.open_run` for a head: output checks against its inputs, lock, fingerprint."""
    roles = {"target": opts.target, "reference": opts.ref, "--init": opts.init, "teacher cache": opts.teacher_cache,
             "--data": opts.data, "--data-dir": opts.data_dir}
    with open_run(opts, HEAD_INPUTS, roles, accelerator.is_main_process, accelerator.wait_for_everyone) as run:
        yield run


def run_train_head(opts: TrainHeadOptions, on_step: OnStep | None = None) -> None:
    """The recipe of the head family."""
    if opts.kind == "dflash":
        from adaspec.recipes.train_head.dflash import run_dflash_head
        return run_dflash_head(opts, on_step)
    if opts.kind == "eagle":
        from adaspec.recipes.train_head.eagle import run_eagle_head
        return run_eagle_head(opts, on_step)
    from adaspec.recipes.train_head.multi_token import run_multi_token_head
    return run_multi_token_head(opts, on_step)
