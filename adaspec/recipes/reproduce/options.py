"""`adaspec reproduce`'s options (torch-free, so `--help` answers at once) and the command line that reruns them."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Literal

from adaspec import data as data_lib
from adaspec.errors import AdaspecError
from adaspec.options import helptext
from adaspec.recipes.reproduce.protocols import HEAD_KINDS, PRESETS


@dataclass(kw_only=True)
class ReproduceOptions:
    """Run the whole paper pipeline on one task and write results/<task>/."""

    task: str = field(default="gsm8k", metadata=helptext(f"task ({', '.join(data_lib.TASKS)})"))
    preset: str = field(default="demo", metadata=helptext(f"scale ({', '.join(PRESETS)})"))
    seeds: list[int] | None = field(default=None, metadata=helptext("distillation seeds (default: the preset's)"))
    ablations: bool = field(
        default=False, metadata=helptext("also train the selection (bottom/random) and k ablations on the first seed")
    )
    long_ablations: bool = field(
        default=False,
        metadata=helptext(
            "also train DistillSpec and AdaSPEC at 4x AdaSPEC's steps on the first seed (equal steps, near convergence)"
        ),
    )
    protocol: Literal["adaspec", "official"] = field(
        default="adaspec",
        metadata=helptext(
            "adaspec: cosine lr, AdaSPEC for epochs/k at DistillSpec's batch (2.5x its steps; the committed main "
            "table); official: the authors' scripts, AdaSPEC at batch/k and epochs/k (equal steps), constant lr "
            "3e-4, weight decay 0.1, with the equal-steps controls (--ablations adds bottom and k)"
        ),
    )
    variants: bool = field(
        default=False,
        metadata=helptext(
            "with --protocol official: also train the acceptance-aligned variants (LK losses, Δ in TVD, soft "
            "selection, k schedule) on every seed"
        ),
    )
    heads: list[str] | None = field(
        default=None,
        metadata=helptext(
            "also train drafter heads per seed on the frozen target and evaluate them beside the drafts: eagle "
            "(EAGLE-3 with KD and with AdaSPEC against it; EAGLE-1 with KD on the first seed), mtp (KD, AdaSPEC), "
            "medusa (KD)"
        ),
    )
    runs_dir: str = field(default="runs", metadata=helptext("where models and caches go (resumable)"))
    results_dir: str = field(default="results", metadata=helptext("where report.md/results.json/plots go"))
    use_cache: bool = field(
        default=True,
        metadata=helptext("distil from offline target/reference caches (no target forward during draft training)"),
    )
    speed_benchmark: bool = field(default=True, metadata=helptext("time target-only vs speculative decoding"))
    progress: bool = field(default=True, metadata=helptext("show progress bars"))

    def __post_init__(self) -> None:
        if self.task not in data_lib.TASKS:
            raise AdaspecError(f"unknown task {self.task!r}; choose one of {', '.join(data_lib.TASKS)}")
        if self.preset not in PRESETS:
            raise AdaspecError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.variants and self.protocol != "official":
            raise AdaspecError("--variants belongs to --protocol official (they are compared at equal steps)")
        if self.protocol == "official" and self.long_ablations:
            raise AdaspecError(
                "--long-ablations belongs to --protocol adaspec (the official runs are all at equal steps already)"
            )
        if self.heads is not None:
            unknown = [h for h in self.heads if h not in HEAD_KINDS]
            if unknown or not self.heads:
                raise AdaspecError(f"--heads takes {', '.join(HEAD_KINDS)}; got {' '.join(self.heads) or 'nothing'}")
            self.heads = [h for h in HEAD_KINDS if h in self.heads]  # one order, whatever order was given


def command_line(opts: ReproduceOptions) -> str:
    parts = ["adaspec", "reproduce", "--task", opts.task, "--preset", opts.preset]
    if opts.results_dir != "results":  # where the results were written is part of how to get them again
        parts += ["--results-dir", opts.results_dir]
    if opts.seeds:
        parts += ["--seeds", *map(str, opts.seeds)]
    if opts.ablations:
        parts.append("--ablations")
    if opts.long_ablations:
        parts.append("--long-ablations")
    if opts.protocol != "adaspec":
        parts += ["--protocol", opts.protocol]
    if opts.variants:
        parts.append("--variants")
    if opts.heads:
        parts += ["--heads", *opts.heads]
    if not opts.use_cache:
        parts.append("--no-use-cache")
    return shlex.join(parts)
