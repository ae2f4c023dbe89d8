"""`adaspec generate`: speculative decoding of one prompt (chains, or token trees with --tree), streaming the
text, then the acceptance stats."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from adaspec.data import check_text
from adaspec.decoding.generate import speculative_generate
from adaspec.models.lean import LEAN
from adaspec.decoding.tree_generate import tree_speculative_generate
from adaspec.core.tree_shape import MAX_TREE_DEPTH, parse_tree_spec
from adaspec.decoding.lm import DRAFT_CONFIDENCE
from adaspec.drafters import FAMILIES, HEADS
from adaspec.drafters.loading import load_drafter
from adaspec.core.sampling import check_sampling
from adaspec.errors import AdaspecError
from adaspec.models import check_vocab_compatible, load_model, load_tokenizer, saved_tokenizer
from adaspec.options import check_finite, strict_field

DRAFTER_NAMES = tuple(FAMILIES)  # --drafter's choices: every registered family


@dataclass
class GenerateOptions:
    """Speculative decoding of one prompt: streams the text, then prints acceptance and speed statistics."""

    target: str = field(metadata={"help": "target model directory or hub id (its tokenizer is used)"})
    prompt: str = field(metadata={"help": "prompt text"})
    draft: str | None = field(default=None, metadata={
        "help": "draft model directory or hub id (same vocabulary as the target), with --drafter lm"})
    drafter: Literal[DRAFTER_NAMES] = field(default="lm", metadata={
        "help": "what proposes the tokens: a draft model (lm) or a head trained by train-head"})
    head: str | None = field(default=None, metadata={
        "help": f"head directory, with --drafter {'|'.join(HEADS)}"})
    strict: bool = strict_field()
    decode_path: Literal["auto", "lean", "hf"] = field(default="auto", metadata={
        "help": "lean: adaspec's minimal forward (Llama, GPT-NeoX, GPT-2); hf: transformers'; auto: lean when "
                "the family supports it"})
    gamma: int = field(default=5, metadata={"help": "draft tokens per step (the first step's when adaptive)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature; 0 = greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass in (0, 1]"})
    max_new_tokens: int = field(default=128, metadata={"help": "maximum number of generated tokens"})
    adaptive_gamma: bool = field(default=False, metadata={
        "help": "choose gamma per step from the running acceptance rate and measured draft/target cost"})
    gamma_max: int = field(default=8, metadata={"help": "largest gamma the adaptive choice may use"})
    tree: str | None = field(default=None, metadata={
        "help": "draft token trees instead of chains (any drafter): TOP_K,DEPTH,TOTAL = EAGLE-2 dynamic tree, e.g. "
                "3,4,12; a JSON list of rank paths = static tree (Medusa's medusa_choices), e.g. [[0],[1],[0,0]]; "
                "cartesian:W1,W2 = every path with rank < W1 at depth 1, < W2 at depth 2; adaptive[:NODES,DEPTH,"
                "WIDTH] = a static tree chosen per step from measured costs and running acceptance"})
    draft_confidence: float = field(default=DRAFT_CONFIDENCE, metadata={
        "help": "with --drafter lm, a step stops drafting after a proposal the draft gives a probability below "
                "this (lossless; 0 = always gamma)"})
    seed: int | None = field(default=None, metadata={"help": "random seed for sampling"})
    device: str | None = field(default=None, metadata={"help": "torch device, e.g. cpu or cuda; unset: cuda "
                                                                "when available, else cpu"})
    stop_at_eos: bool = field(default=True, metadata={"help": "stop at the tokenizer's end-of-sequence token"})
    json: bool = field(default=False, metadata={"help": "print one JSON object (text and stats) instead of "
                                                        "streaming"})

    def __post_init__(self) -> None:
        for name in ("gamma", "gamma_max"):
            if not 1 <= getattr(self, name) <= MAX_TREE_DEPTH:  # a chain is a tree of depth γ
                raise AdaspecError(f"--{name.replace('_', '-')} must be in 1..{MAX_TREE_DEPTH}, got "
                                   f"{getattr(self, name)}")
        if self.adaptive_gamma and self.gamma_max < self.gamma:
            raise AdaspecError(f"--gamma-max ({self.gamma_max}) must be >= --gamma ({self.gamma})")
        if self.tree is not None:
            parse_tree_spec(self.tree)
            if self.adaptive_gamma:
                raise AdaspecError("--adaptive-gamma is for chains; with --tree use --tree adaptive")
        if self.max_new_tokens < 1:
            raise AdaspecError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 <= self.draft_confidence <= 1.0:
            raise AdaspecError(f"--draft-confidence must be in [0, 1], got {self.draft_confidence}")
        check_finite(self)
        check_sampling(self.temperature, self.top_p)
        if not self.prompt:
            raise AdaspecError("--prompt is empty")
        check_text(self.prompt, "--prompt")
        if self.drafter not in FAMILIES:
            raise AdaspecError(f"unknown drafter {self.drafter!r}; choose one of {', '.join(FAMILIES)}")
        model = FAMILIES[self.drafter].is_draft_model
        if model and (self.draft is None or self.head is not None):
            raise AdaspecError("--drafter lm needs --draft DIR (and no --head)")
        if not model and (self.head is None or self.draft is not None):
            raise AdaspecError(f"--drafter {self.drafter} needs --head DIR (and no --draft)")


class _TextStream:
    """Prints decoded text as tokens arrive. The prompt is decoded with the new tokens so word boundaries
    come out right; text ending in an incomplete UTF-8 sequence is held back until it completes. The prompt
    is printed with the first new tokens, so an error raised before decoding starts is printed alone."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int]):
        self.tokenizer, self.ids = tokenizer, list(prompt_ids)
        self.printed = ""

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    @staticmethod
    def _write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def __call__(self, tokens: list[int]) -> None:
        self.ids.extend(tokens)
        text = self._decode()
        if not text.endswith("\ufffd") and text.startswith(self.printed):
            self._write(text[len(self.printed):])
            self.printed = text

    def close(self) -> None:
        """Print what is still held back (a prompt with no new tokens, a final incomplete character)."""
        text = self._decode()
        self._write(text[len(self.printed):] if text.startswith(self.printed) else "")
        self.printed = text


def run_generate(opts: GenerateOptions) -> int:
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    target = load_model(opts.target, device=device)
    tokenizer = load_tokenizer(opts.target)
    if FAMILIES[opts.drafter].is_draft_model:
        draft = load_model(opts.draft, device=device)
        check_vocab_compatible(target, draft, tokenizer, saved_tokenizer(opts.draft))
    else:
        draft = load_drafter(opts.drafter, opts.head, target, strict=opts.strict, tokenizer=tokenizer)
    input_ids = tokenizer(opts.prompt, return_tensors="pt").input_ids
    if input_ids.numel() == 0 and tokenizer.bos_token_id is not None:
        input_ids = torch.tensor([[tokenizer.bos_token_id]])
    stream = None if opts.json else _TextStream(tokenizer, input_ids[0].tolist())
    common = dict(max_new_tokens=opts.max_new_tokens, temperature=opts.temperature, top_p=opts.top_p,
                  eos_token_id=tokenizer.eos_token_id if opts.stop_at_eos else None, seed=opts.seed,
                  tokenizer=tokenizer, on_tokens=stream, lean=LEAN[opts.decode_path])
    if opts.tree is not None:
        seq, stats = tree_speculative_generate(target, draft, input_ids, tree=parse_tree_spec(opts.tree), **common)
    else:
        seq, stats = speculative_generate(target, draft, input_ids, gamma=opts.gamma,
                                          adaptive_gamma=opts.adaptive_gamma, gamma_max=opts.gamma_max,
                                          draft_confidence=opts.draft_confidence, **common)
    generated = seq[0, input_ids.shape[1]:].tolist()
    if opts.json:
        print(json.dumps({"prompt": opts.prompt, "text": tokenizer.decode(generated, skip_special_tokens=True),
                          "tokens": generated, "stats": stats.to_dict()}))
    else:
        stream.close()
        print("\n")
        print(stats.format())
    return 0
