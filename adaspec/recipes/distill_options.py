"""`adaspec distill`'s options (the recipe: adaspec.recipes.distill), in a module without torch so the command
line's parser and --help load fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adaspec.distill import cold_start
from adaspec.distill.settings import SOFT_TEMPERATURE
from adaspec.errors import AdaspecError
from adaspec.options import check_range, helptext
from adaspec.presets import PRESETS, check_preset
from adaspec.training.options import KDOptions, narrowed


@dataclass(kw_only=True)
class DistillOptions(KDOptions):
    """Distil a draft model from a target: plain KD (DistillSpec, reference model) or AdaSPEC."""

    divergence: Literal["fkl", "rkl", "tvd", "jsd", "lk", "lk_kl"] = narrowed("divergence")
    preset: str = field(default="llama-draft-xs", metadata=helptext(f"draft architecture ({', '.join(PRESETS)})"))
    soft_temperature: float = field(
        default=SOFT_TEMPERATURE,
        metadata=helptext(
            "with --selection soft: width of the weights' step around the top-k cut, in rank quantiles",
            omit_at_default=True,
        ),
    )
    k_schedule: Literal["constant", "linear"] = field(
        default="constant",
        metadata=helptext(
            "constant: --k throughout; linear: k from 1 at the first optimizer step down to --k at the last",
            omit_at_default=True,
        ),
    )
    per_sequence: bool = field(
        default=False,
        metadata=helptext("select the top-k within each sequence instead of over the micro-batch (paper)"),
    )
    selection_group: int | None = field(
        default=None,
        metadata=helptext(
            "select the top-k within each group of N consecutive sequences of a process's micro-batch (default: "
            "the whole micro-batch; the authors' 8 processes x 5 sequences are --selection-group 5 on one)"
        ),
    )
    normalize: Literal["response", "kept"] = field(
        default="response",
        metadata=helptext("loss = sum over kept tokens / response tokens (official code) or / kept tokens"),
    )
    delta_divergence: Literal["fkl", "rkl", "tvd", "jsd", "lk", "lk_kl"] | None = field(
        default=None,
        metadata=helptext(
            "with --method adaspec: the divergence Δ is measured in, for draft and reference (default: "
            "--divergence; tvd = 1 - acceptance, what speculative decoding pays for)",
            omit_at_default=True,
        ),
    )
    mix_ratio: float = field(default=0.5, metadata=helptext("with --data-source mix: share of on-policy batches"))
    top_k: int | None = field(
        default=None,
        metadata=helptext(
            "with --teacher-cache: refuse a cache holding fewer than this many target probabilities per token"
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
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
            self.cold_start,
            self.method == "adaspec" and self.selection != "all" and self.draft_init is None,
            has_ref=self.ref is not None,
            ramped=self.k_schedule != "constant",
        )
        check_range(self, "soft_temperature", 0, low_open=True)
        check_range(self, "mix_ratio", 0, 1)
        check_range(self, "top_k", 1)
        if self.top_k is not None and self.teacher_cache is None:
            raise AdaspecError("--top-k is the least K a --teacher-cache must hold; give --teacher-cache too")
