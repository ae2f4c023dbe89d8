"""Options every training recipe shares (train-target, distill, and the head recipes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adaspec.errors import AdaspecError
from adaspec.options import MAX_BATCH_TOKENS, check_range, helptext
from adaspec.data.options import DataOptions


@dataclass(kw_only=True)
class TrainOptions(DataOptions):
    """Options every training recipe shares."""

    output: str = field(metadata=helptext("output directory: the final/best model, last/ for resume, logs/"))
    batch_size: int = field(default=16, metadata=helptext("global micro-batch size, split across processes"))
    grad_accum: int = field(default=1, metadata=helptext("micro-batches per optimizer step"))
    epochs: float = field(default=1.0, metadata=helptext("passes over the training data"))
    max_steps: int | None = field(default=None, metadata=helptext("stop after this many optimizer steps"))
    max_minutes: float | None = field(default=None, metadata=helptext(
        "train about this many minutes: after the first steps are timed, the run (and its lr schedule) is "
        "cut to the steps that fit", omit_at_default=True))
    lr: float = field(default=1e-3, metadata=helptext("peak learning rate (AdamW)"))
    schedule: Literal["cosine", "constant"] = field(default="cosine", metadata=helptext(
        "after the warm-up: cosine decay to 0, or constant (the AdaSPEC authors' scripts)"))
    warmup_steps: int = field(default=20, metadata=helptext("linear warm-up steps"))
    weight_decay: float = field(default=0.0, metadata=helptext("AdamW weight decay"))
    grad_clip: float = field(default=1.0, metadata=helptext("clip the gradient norm to this (0: off)"))
    seed: int = field(default=0, metadata=helptext("seed of data order and sampling"))
    precision: Literal["no", "bf16", "fp16"] = field(default="no", metadata=helptext(
        "mixed precision (bf16/fp16 on GPU)"))
    save_every: int = field(default=200, metadata=helptext("write last/ every N steps"))
    val_every: int = field(default=100, metadata=helptext("validate every N steps (0: only at the end)"))
    val_examples: int = field(default=64, metadata=helptext("validation examples"))
    resume: bool = field(default=True, metadata=helptext("continue from <output>/last if present"))
    progress: bool = field(default=True, metadata=helptext("show a progress bar"))
    overwrite: bool = field(default=False, metadata=helptext(
        "delete the run already in --output (its checkpoints, logs and cached continuations; nothing else) "
        "and start over, e.g. when it was made with other settings or inputs"))

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "grad_accum", "save_every", "val_examples"):
            if getattr(self, name) < 1:
                raise AdaspecError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_size * self.max_length > MAX_BATCH_TOKENS:
            raise AdaspecError(f"--batch-size x --max-length is {self.batch_size * self.max_length:,} tokens per "
                               f"micro-batch, above the limit of {MAX_BATCH_TOKENS:,} (its logits alone take tokens x "
                               f"vocabulary x 4 bytes); use --grad-accum for a larger batch")
        check_range(self, "epochs", 0, low_open=True)
        check_range(self, "max_steps", 1)
        check_range(self, "max_minutes", 0, 10_000_000, low_open=True)
        check_range(self, "lr", 0, low_open=True)
        for name in ("val_every", "warmup_steps", "weight_decay", "grad_clip"):
            check_range(self, name, 0)
