"""`adaspec train-target`'s options (the recipe: adaspec.recipes.train_target), in a module without torch so the
command line's parser and --help load fast."""

from __future__ import annotations

from dataclasses import dataclass, field

from adaspec.errors import AdaspecError
from adaspec.options import helptext
from adaspec.presets import PRESETS, check_preset
from adaspec.training.options import TrainOptions


@dataclass(kw_only=True)
class TrainTargetOptions(TrainOptions):
    """Fine-tune a target model on a task (or build one from a preset and train it from scratch).

    With no --model, a tokenizer is trained on the task's training text (or taken from --tokenizer) and a
    model is built from --preset: the offline path used by tests and the CPU-scale reproduction.
    """

    model: str | None = field(default=None, metadata=helptext("pretrained model directory or hub id to fine-tune"))
    preset: str = field(
        default="neox-target-m",
        metadata=helptext(f"architecture to build when --model is absent ({', '.join(PRESETS)})"),
    )
    tokenizer: str | None = field(
        default=None, metadata=helptext("tokenizer directory (default: the model's, or train one from the task data)")
    )
    vocab_size: int = field(default=4096, metadata=helptext("vocabulary of a tokenizer trained here"))
    init_seed: int = field(default=0, metadata=helptext("seed of a model built from --preset"))
    train_on_prompt: bool = field(
        default=False,
        metadata=helptext("also train on prompt tokens (language modelling from scratch needs the extra text)"),
    )
    trust_remote_code: bool = field(default=False, metadata=helptext("allow a hub model's own code to run"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model is None:
            check_preset(self.preset)
        if self.vocab_size < 300:
            raise AdaspecError(f"--vocab-size must be >= 300 (byte-level BPE needs 256 bytes), got {self.vocab_size}")
