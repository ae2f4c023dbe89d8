"""`adaspec generate`'s options (the command: adaspec.recipes.generate), in a module without torch so the command
line's parser and --help load fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adaspec.data import check_text
from adaspec.errors import AdaspecError
from adaspec.options import check_finite, strict_field


@dataclass
class GenerateOptions:
    """Speculative decoding of one prompt: streams the text, then prints acceptance and speed statistics."""

    target: str = field(metadata={"help": "target model directory or hub id (its tokenizer is used)"})
    prompt: str = field(metadata={"help": "prompt text"})
    draft: str | None = field(
        default=None,
        metadata={"help": "draft model directory or hub id (same vocabulary as the target), with --drafter lm"},
    )
    drafter: str = field(
        default="lm", metadata={"help": "what proposes the tokens: a draft model (lm) or a head trained by train-head"}
    )
    head: str | None = field(default=None, metadata={"help": "head directory, with --drafter <a head family>"})
    strict: bool = strict_field()
    decode_path: Literal["auto", "lean", "hf"] = field(
        default="auto",
        metadata={
            "help": "lean: adaspec's minimal forward (Llama, GPT-NeoX, GPT-2); hf: transformers'; auto: lean when "
            "the family supports it"
        },
    )
    gamma: int = field(default=5, metadata={"help": "draft tokens per step (the first step's when adaptive)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature; 0 = greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass in (0, 1]"})
    max_new_tokens: int = field(default=128, metadata={"help": "maximum number of generated tokens"})
    adaptive_gamma: bool = field(
        default=False,
        metadata={"help": "choose gamma per step from the running acceptance rate and measured draft/target cost"},
    )
    gamma_max: int = field(default=8, metadata={"help": "largest gamma the adaptive choice may use"})
    tree: str | None = field(
        default=None,
        metadata={
            "help": "draft token trees instead of chains (any drafter): TOP_K,DEPTH,TOTAL = EAGLE-2 dynamic tree, e.g. "
            "3,4,12; a JSON list of rank paths = static tree (Medusa's medusa_choices), e.g. [[0],[1],[0,0]]; "
            "cartesian:W1,W2 = every path with rank < W1 at depth 1, < W2 at depth 2; adaptive[:NODES,DEPTH,"
            "WIDTH] = a static tree chosen per step from measured costs and running acceptance"
        },
    )
    draft_confidence: float | None = field(
        default=None,
        metadata={
            "help": "with --drafter lm, a step stops drafting after a proposal the draft gives a probability below "
            "this (lossless; 0 = always gamma; unset: the engine's default, adaspec.decoding.lm.DRAFT_CONFIDENCE)"
        },
    )
    seed: int | None = field(default=None, metadata={"help": "random seed for sampling"})
    device: str | None = field(
        default=None, metadata={"help": "torch device, e.g. cpu or cuda; unset: cuda when available, else cpu"}
    )
    stop_at_eos: bool = field(default=True, metadata={"help": "stop at the tokenizer's end-of-sequence token"})
    json: bool = field(default=False, metadata={"help": "print one JSON object (text and stats) instead of streaming"})

    def __post_init__(self) -> None:
        # torch: loaded once options are made, not for --help
        from adaspec.core.sampling import check_sampling
        from adaspec.core.tree_shape import MAX_TREE_DEPTH, parse_tree_spec

        for name in ("gamma", "gamma_max"):
            if not 1 <= getattr(self, name) <= MAX_TREE_DEPTH:  # a chain is a tree of depth γ
                raise AdaspecError(
                    f"--{name.replace('_', '-')} must be in 1..{MAX_TREE_DEPTH}, got {getattr(self, name)}"
                )
        if self.adaptive_gamma and self.gamma_max < self.gamma:
            raise AdaspecError(f"--gamma-max ({self.gamma_max}) must be >= --gamma ({self.gamma})")
        if self.tree is not None:
            parse_tree_spec(self.tree)
            if self.adaptive_gamma:
                raise AdaspecError("--adaptive-gamma is for chains; with --tree use --tree adaptive")
        if self.max_new_tokens < 1:
            raise AdaspecError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.draft_confidence is not None and not 0.0 <= self.draft_confidence <= 1.0:
            raise AdaspecError(f"--draft-confidence must be in [0, 1], got {self.draft_confidence}")
        check_finite(self)
        check_sampling(self.temperature, self.top_p)
        if not self.prompt:
            raise AdaspecError("--prompt is empty")
        check_text(self.prompt, "--prompt")
        from adaspec.drafters import FAMILIES  # the registry loads torch: here, not at import (--help)

        if self.drafter not in FAMILIES:
            raise AdaspecError(f"unknown drafter {self.drafter!r}; choose one of {', '.join(FAMILIES)}")
        model = FAMILIES[self.drafter].is_draft_model
        if model and (self.draft is None or self.head is not None):
            raise AdaspecError("--drafter lm needs --draft DIR (and no --head)")
        if not model and (self.head is None or self.draft is not None):
            raise AdaspecError(f"--drafter {self.drafter} needs --head DIR (and no --draft)")
