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

from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, ClassVar, Literal

from adaspec.distill import cold_start
from adaspec.errors import AdaspecError
from adaspec.options import MAX_BATCH_TOKENS, helptext, strict_field
from adaspec.training.options import KDOptions, narrowed

if TYPE_CHECKING:
    from adaspec.drafters.family import Family
    from adaspec.training.loop import OnStep


@dataclass(kw_only=True)
class TrainHeadOptions(KDOptions):
    """Train a drafter head on a frozen target: plain KD, or AdaSPEC selection per step against a KD head."""

    # the options it shares with `distill` had their own names here until they were declared once
    RENAMED: ClassVar[dict[str, str]] = {"loss": "divergence", "init": "draft_init"}

    kind: Literal["eagle", "mtp", "medusa", "dflash"] = field(
        default="eagle",
        metadata=helptext(
            "eagle: one layer on fused target features; mtp: sequential modules; medusa: parallel heads; "
            "dflash: a block of mask slots drafted in one forward (adaspec.drafters.dflash)"
        ),
    )
    strict: bool = strict_field()
    selection: Literal["top", "bottom", "random", "all"] = narrowed("selection")
    divergence: Literal["fkl", "rkl", "tvd", "jsd", "ce"] = narrowed("divergence")
    data_source: Literal["dataset", "target"] = narrowed("data_source")
    # greedy, where distill samples at 1.0: train-head's target responses were always the target's greedy
    # continuations (what greedy verification accepts), and a run with default flags must train as before
    gen_temperature: float = narrowed("gen_temperature", default=0.0)
    # --kind eagle
    variant: Literal["eagle3", "eagle1"] = field(
        default="eagle3",
        metadata=helptext("eagle: eagle3 fuses three target layers; eagle1 reads the final normed state only"),
    )
    aux_layers: str | None = field(
        default=None,
        metadata=helptext(
            "eagle3/dflash: target layers, e.g. 1,5,9 (default: the reference's; eagle3: low/middle/high)"
        ),
    )
    draft_vocab: int = field(
        default=0,
        metadata=helptext("eagle: draft vocabulary of the N most frequent response tokens (0: the full vocabulary)"),
    )
    ttt_steps: int = field(default=7, metadata=helptext("eagle: training-time-test unroll steps per position"))
    step_decay: float = field(
        default=0.8,
        metadata=helptext("eagle: weight of unroll step j is decay**j; dflash: of block slot j, decay**(j-1)"),
    )
    feature_weight: float = field(
        default=0.0,
        metadata=helptext(
            "eagle1: feature-regression (smooth-L1) weight; the reference uses 10x the token loss's weight"
        ),
    )
    # --kind dflash
    block_size: int = field(
        default=4,
        metadata=helptext(
            "dflash: block size B = the last token and B-1 mask slots, so at most B-1 proposals per step"
        ),
    )
    draft_layers: int = field(default=1, metadata=helptext("dflash: decoder layers of the head"))
    anchors: int = field(default=16, metadata=helptext("dflash: blocks trained per sequence per micro-batch"))
    mask_token_id: int | None = field(
        default=None,
        metadata=helptext(
            "dflash: the id standing for a masked slot, whose embedding is trained (default: the last id)"
        ),
    )
    # --kind mtp / medusa
    depth: int | None = field(
        default=None,
        metadata=helptext(
            "mtp/medusa: modules or heads = most tokens proposed per step (default: 3 for mtp, 4 for medusa)"
        ),
    )
    medusa_layers: int = field(default=1, metadata=helptext("medusa: residual blocks per head"))
    shared_head: bool = field(
        default=False,
        metadata=helptext("medusa: use the target's frozen output head instead of one trained copy per head"),
    )
    lam: float = field(default=1.0, metadata=helptext("mtp/medusa: every depth weighs λ / D unless --depth-weights"))
    depth_weights: list[float] | None = field(default=None, metadata=helptext("mtp/medusa: one weight per depth"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method == "adaspec" and self.ref is None:
            raise AdaspecError("--method adaspec needs --ref (a head trained with --method kd)")
        family = self.family
        # a head starts untrained unless its family starts from a saved one (--draft-init: mtp/medusa)
        untrained = not family.takes_draft_init or self.draft_init is None
        self.cold_start = cold_start.resolve(
            self.cold_start, self.method == "adaspec" and self.selection != "all" and untrained
        )
        if self.data_source == "target" and not family.takes_target_data:
            raise AdaspecError(
                f"--data-source target is for --kind mtp/medusa; a {self.kind} head trains on the dataset's responses"
            )
        getattr(self, f"_check_{family.recipe}")()  # the options of the family's recipe module

    @property
    def family(self) -> Family:
        from adaspec.drafters import FAMILIES  # the registry loads torch: not when --help builds the parser

        return FAMILIES[self.kind]

    def _check_eagle(self) -> None:
        if self.divergence == "ce":
            raise AdaspecError("--divergence ce is for --kind mtp/medusa; an EAGLE head distils a divergence")
        if not 1 <= self.ttt_steps < self.max_length:
            raise AdaspecError(
                f"--ttt-steps must be in 1..{self.max_length - 1} (below --max-length), got {self.ttt_steps}"
            )
        if not 0 < self.step_decay <= 1:
            raise AdaspecError(f"--step-decay must be in (0, 1], got {self.step_decay}")
        if self.draft_vocab < 0:
            raise AdaspecError(f"--draft-vocab must be >= 0, got {self.draft_vocab}")
        if self.feature_weight < 0 or (self.feature_weight > 0 and self.variant != "eagle1"):
            raise AdaspecError("--feature-weight must be >= 0 and applies to --variant eagle1 only")

    def _check_dflash(self) -> None:
        from adaspec.drafters.dflash.model import MAX_BLOCK_SIZE, MAX_DRAFT_LAYERS

        if self.divergence == "ce" or self.draft_init is not None:
            raise AdaspecError(
                "a DFlash head distils a divergence (not --divergence ce) and starts untrained (no --draft-init)"
            )
        if not 2 <= self.block_size <= min(MAX_BLOCK_SIZE, self.max_length):
            raise AdaspecError(
                f"--block-size must be in 2..{min(MAX_BLOCK_SIZE, self.max_length)} (at most "
                f"--max-length), got {self.block_size}"
            )
        if not 1 <= self.draft_layers <= MAX_DRAFT_LAYERS:
            raise AdaspecError(f"--draft-layers must be in 1..{MAX_DRAFT_LAYERS}, got {self.draft_layers}")
        if not 1 <= self.anchors <= self.max_length:
            raise AdaspecError(f"--anchors must be in 1..{self.max_length} (--max-length), got {self.anchors}")
        rows = self.batch_size * self.anchors * self.block_size  # the block logits' rows of a micro-batch
        if rows > MAX_BATCH_TOKENS:
            raise AdaspecError(
                f"--batch-size x --anchors x --block-size is {rows:,}, above the limit of {MAX_BATCH_TOKENS:,}"
            )
        if not 0 < self.step_decay <= 1:
            raise AdaspecError(f"--step-decay must be in (0, 1], got {self.step_decay}")

    def _check_multi_token(self) -> None:
        from adaspec.drafters.multi_token_loss import depth_weights

        if self.depth is None:
            self.depth = self.family.default_depth
        if self.depth < 1 or self.medusa_layers < 0:
            raise AdaspecError(
                f"--depth must be >= 1 and --medusa-layers >= 0, got {self.depth} and {self.medusa_layers}"
            )
        if self.depth >= self.max_length:  # depth d is trained on tokens d+1 ahead: none beyond the sequence
            raise AdaspecError(
                f"--depth ({self.depth}) must be below --max-length ({self.max_length}): a depth "
                f"beyond the sequence has no token to learn"
            )
        depth_weights(self.depth, self.depth_weights, self.lam)

    def aux_layer_ids(self) -> tuple[int, ...] | None:
        if self.aux_layers is None:
            return None
        try:
            return tuple(int(x) for x in self.aux_layers.split(","))
        except ValueError:
            raise AdaspecError(f"--aux-layers must be comma-separated layer ids, got {self.aux_layers!r}") from None


def run_train_head(opts: TrainHeadOptions, on_step: OnStep | None = None) -> None:
    """The recipe of the head family: its module of adaspec.recipes.train_head, whose entry point is `run`."""
    import_module(f"adaspec.recipes.train_head.{opts.family.recipe}").run(opts, on_step)
