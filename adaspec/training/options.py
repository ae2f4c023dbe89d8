"""Options every training recipe shares (train-target, distill, and the head recipes), and those of the two
that distil from a frozen target (distill, train-head), each declared once. Nothing here imports torch: the
command line's parser is built from these dataclasses, --help included."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from adaspec.data.options import DataOptions
from adaspec.distill import cold_start
from adaspec.distill.cold_start import ColdStart
from adaspec.distill.settings import WARMUP_FRACTION
from adaspec.errors import AdaspecError
from adaspec.options import MAX_BATCH_TOKENS, check_range, helptext


@dataclass(kw_only=True)
class TrainOptions(DataOptions):
    """Options every training recipe shares."""

    output: str = field(metadata=helptext("output directory: the final/best model, last/ for resume, logs/"))
    batch_size: int = field(default=16, metadata=helptext("global micro-batch size, split across processes"))
    grad_accum: int = field(default=1, metadata=helptext("micro-batches per optimizer step"))
    epochs: float = field(default=1.0, metadata=helptext("passes over the training data"))
    max_steps: int | None = field(default=None, metadata=helptext("stop after this many optimizer steps"))
    max_minutes: float | None = field(
        default=None,
        metadata=helptext(
            "train about this many minutes: after the first steps are timed, the run (and its lr schedule) is "
            "cut to the steps that fit",
            omit_at_default=True,
        ),
    )
    lr: float = field(default=1e-3, metadata=helptext("peak learning rate (AdamW)"))
    schedule: Literal["cosine", "constant"] = field(
        default="cosine",
        metadata=helptext("after the warm-up: cosine decay to 0, or constant (the AdaSPEC authors' scripts)"),
    )
    warmup_steps: int = field(default=20, metadata=helptext("linear warm-up steps"))
    weight_decay: float = field(default=0.0, metadata=helptext("AdamW weight decay"))
    grad_clip: float = field(default=1.0, metadata=helptext("clip the gradient norm to this (0: off)"))
    seed: int = field(default=0, metadata=helptext("seed of data order and sampling"))
    precision: Literal["no", "bf16", "fp16"] = field(
        default="no", metadata=helptext("mixed precision (bf16/fp16 on GPU)")
    )
    save_every: int = field(default=200, metadata=helptext("write last/ every N steps"))
    val_every: int = field(default=100, metadata=helptext("validate every N steps (0: only at the end)"))
    val_examples: int = field(default=64, metadata=helptext("validation examples"))
    resume: bool = field(default=True, metadata=helptext("continue from <output>/last if present"))
    progress: bool = field(default=True, metadata=helptext("show a progress bar"))
    overwrite: bool = field(
        default=False,
        metadata=helptext(
            "delete the run already in --output (its checkpoints, logs and cached continuations; nothing else) "
            "and start over, e.g. when it was made with other settings or inputs"
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "grad_accum", "save_every", "val_examples"):
            if getattr(self, name) < 1:
                raise AdaspecError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_size * self.max_length > MAX_BATCH_TOKENS:
            raise AdaspecError(
                f"--batch-size x --max-length is {self.batch_size * self.max_length:,} tokens per "
                f"micro-batch, above the limit of {MAX_BATCH_TOKENS:,} (its logits alone take tokens x "
                f"vocabulary x 4 bytes); use --grad-accum for a larger batch"
            )
        check_range(self, "epochs", 0, low_open=True)
        check_range(self, "max_steps", 1)
        check_range(self, "max_minutes", 0, 10_000_000, low_open=True)
        check_range(self, "lr", 0, low_open=True)
        for name in ("val_every", "warmup_steps", "weight_decay", "grad_clip"):
            check_range(self, name, 0)


@dataclass(kw_only=True)
class KDOptions(TrainOptions):
    """Options of the recipes that distil from a frozen target, `distill` (a draft model) and `train-head` (a
    drafter head), declared once: one name, one default and one check for both commands. A command that takes
    fewer of an option's values re-annotates it with its narrower type through `narrowed`."""

    target: str = field(metadata=helptext("target model directory (its tokenizer is used); stays frozen"))
    method: Literal["kd", "adaspec"] = field(
        default="kd",
        metadata=helptext("kd: every response token (a head: at every step); adaspec: selective KD against --ref"),
    )
    ref: str | None = field(
        default=None,
        metadata=helptext(
            "reference directory, required by adaspec: the draft (distill) or head (train-head) trained with "
            "--method kd"
        ),
    )
    draft_init: str | None = field(
        default=None,
        metadata=helptext(
            "initial weights: a draft checkpoint (distill; default: build --preset with --init-seed) or mtp/medusa "
            "heads (train-head; default: new heads from --init-seed)"
        ),
    )
    init_seed: int = field(
        default=0, metadata=helptext("seed of the initial weights of a draft built from --preset or of a new head")
    )
    k: float = field(
        default=0.4, metadata=helptext("fraction of response tokens AdaSPEC trains on (a head: per step), in (0, 1]")
    )
    selection: Literal["top", "bottom", "random", "all", "soft"] = field(
        default="top",
        metadata=helptext(
            "which tokens by Δ: top (AdaSPEC), bottom, random, all (= plain KD), soft (distill: every token, "
            "weighted by sigmoid((rank quantile of Δ - (1 - k)) / --soft-temperature), weights summing to top-k's "
            "count)"
        ),
    )
    # Runs recorded before --cold-start existed trained as "off": at "off" it stays out of the run fingerprint,
    # so they still resume. The help's "%%" is argparse's escape for a percent sign
    cold_start: ColdStart = field(
        default=cold_start.DEFAULT,
        metadata=helptext(
            "what --method adaspec does when the draft or head starts untrained (no --draft-init; an eagle or dflash "
            "head always does): ref = start from the --ref model's weights; warmup = every response token for the "
            f"first {WARMUP_FRACTION:.0%}% of the steps, then the top --k; linear = the kept fraction from "
            "1 down to --k over the steps; off = the top --k from the first step, which an untrained model may never "
            "recover from. The default is the remedy measured best (docs/cold_start.md); the run records the one "
            "it used (off where none applies)",
            omit_at="off",
        ),
    )
    divergence: Literal["fkl", "rkl", "tvd", "jsd", "lk", "lk_kl", "ce"] = field(
        default="fkl",
        metadata=helptext(
            "per-token loss between target and draft: a divergence to the target's distribution; distill also an "
            "LK loss (arXiv 2602.23881) of the acceptance α = Σ min(p, q): lk = -log α, lk_kl = λ·fkl + (1 - λ)·tvd "
            "with λ = exp(-3α) held constant; mtp/medusa heads also ce, cross-entropy on the data token"
        ),
    )
    beta: float = field(default=0.5, metadata=helptext("JSD mixture weight"))
    temperature: float = field(default=1.0, metadata=helptext("distillation temperature"))
    data_source: Literal["dataset", "target", "draft", "mix"] = field(
        default="dataset",
        metadata=helptext(
            "training responses: the dataset's (paper) or the target's own continuations; distill also "
            "draft-generated on-policy ones, or a mix"
        ),
    )
    gen_max_new_tokens: int = field(default=128, metadata=helptext("length of generated responses"))
    gen_temperature: float = field(
        default=1.0, metadata=helptext("sampling temperature of generated responses (0: greedy)")
    )
    match_token_budget: bool = field(
        default=False,
        metadata=helptext(
            "give this run at --k as many trained tokens (a head: per step) as KD on every token at --batch-size "
            "and --epochs (with --method kd: KD shaped like that AdaSPEC run, the equal-steps control); see "
            "--budget-by"
        ),
    )
    budget_by: Literal["batch", "epochs"] = field(
        default="batch",
        metadata=helptext(
            "how --match-token-budget matches: batch = batch/k and epochs/k at KD's optimizer steps (the authors' "
            "scripts: 16 -> 40 sequences, 3 -> 7.5 epochs); epochs = epochs/k at KD's batch, 1/k the steps "
            "(adaspec's protocol, the committed main table)"
        ),
    )
    teacher_cache: str | None = field(
        default=None,
        metadata=helptext(
            "cache from `adaspec cache` (train-head: with --hidden-layers holding the head's layers): the target's "
            "distributions (and hidden states, the reference's divergence) are read from it, no target forward "
            "during training"
        ),
    )
    val_max_new_tokens: int = field(
        default=96, metadata=helptext("length of the target's greedy continuations that validation scores")
    )

    def __post_init__(self) -> None:
        from adaspec.distill.selection import check_k  # torch: loaded only once options are made, not for --help

        super().__post_init__()
        check_k(self.k)
        check_range(self, "temperature", 0, low_open=True)
        check_range(self, "gen_temperature", 0)
        check_range(self, "beta", 0, 1)
        for name in ("gen_max_new_tokens", "val_max_new_tokens"):
            check_range(self, name, 1)
        if self.teacher_cache and self.data_source != "dataset":
            raise AdaspecError(
                f"--data-source {self.data_source} generates responses during training (on-policy "
                "or the target's); a --teacher-cache covers the dataset's (use --data-source dataset)"
            )


def narrowed(name: str, default: Any = dataclasses.MISSING) -> Any:
    """KDOptions' field `name`, its help and default, for a command that re-annotates it with fewer values, or
    that gives it a `default` of its own (its comment says why)."""
    declared = next(f for f in dataclasses.fields(KDOptions) if f.name == name)
    return field(default=declared.default if default is dataclasses.MISSING else default, metadata=declared.metadata)
