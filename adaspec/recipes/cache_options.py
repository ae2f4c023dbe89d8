"""`adaspec cache`'s options (the command: adaspec.recipes.cache), in a module without torch so the command line's
parser and --help load fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adaspec.data.options import DataOptions
from adaspec.errors import AdaspecError
from adaspec.options import helptext


@dataclass(kw_only=True)
class CacheOptions(DataOptions):
    """Store the target's top-K next-token distribution (and the reference's divergence) per response token.

    The data flags are those of `adaspec distill`: give the same ones, so the cache covers exactly the
    examples distillation trains on (the cache checks this by a fingerprint of the encoded examples).
    """

    target: str = field(metadata=helptext("target model directory (its tokenizer encodes the data)"))
    ref: str | None = field(
        default=None,
        metadata=helptext(
            "reference model directory: also store its per-token divergence L_ref (needed by --method adaspec)"
        ),
    )
    output: str = field(metadata=helptext("cache directory (an interrupted build there is resumed)"))
    batch_size: int = field(default=16, metadata=helptext("examples per target/reference forward"))
    top_k: int = field(default=64, metadata=helptext("target token ids and log-probabilities kept per token"))
    divergence: Literal["fkl", "rkl", "tvd", "jsd", "lk", "lk_kl"] = field(
        default="fkl",
        metadata=helptext(
            "divergence L_ref is measured in; must match distill's Δ divergence (--delta-divergence, default its "
            "--divergence)"
        ),
    )
    temperature: float = field(
        default=1.0,
        metadata=helptext(
            "distillation temperature of the stored log-probabilities; must match distill's --temperature"
        ),
    )
    beta: float = field(default=0.5, metadata=helptext("JSD mixture weight of L_ref (with --divergence jsd)"))
    shard_size: int = field(default=512, metadata=helptext("examples per shard file (the unit of resume)"))
    hidden_layers: str | None = field(
        default=None,
        metadata=helptext(
            "also store the target's hidden states of these layers at every token, for train-head --teacher-cache: "
            "eagle3 (the EAGLE-3 default layers), final (final normed state: eagle1, mtp, medusa) or layer ids, "
            "comma-separated (e.g. eagle3,final or 1,2,-1)"
        ),
    )
    max_hidden_gb: float = field(
        default=8.0,
        metadata=helptext(
            "refuse --hidden-layers when the hidden states would exceed this many GB (estimated first: token "
            "positions x layers x hidden size x 2 bytes)"
        ),
    )
    progress: bool = field(default=True, metadata=helptext("show a progress bar"))

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "top_k", "shard_size"):
            if getattr(self, name) < 1:
                raise AdaspecError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise AdaspecError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 <= self.beta <= 1:
            raise AdaspecError(f"--beta must be in [0, 1], got {self.beta}")
        if not self.max_hidden_gb > 0:
            raise AdaspecError(f"--max-hidden-gb must be > 0, got {self.max_hidden_gb}")
