"""The decode engine: what chain and tree speculative decoding, and the target-only baseline, share.

`Engine` sets one generate call up: the prompt checked against every model's context, the target on its
decode path (`cached_lm`, with the hidden layers the drafter reads), the run's `Sampling`, EOS ids, clock,
stats, and the sequence buffer `seq` (prompt, then room for max_new_tokens). `Engine.speculate` is the one
speculative loop. A step kind (`Steps`: chains in adaspec.decoding.generate, trees in
adaspec.decoding.tree_generate) drafts and verifies one step; the loop keeps the tokens still wanted, up to
and including the first EOS, counts them, streams them to `on_tokens` and stops at EOS or max_new_tokens;
otherwise the step kind rolls the target and the drafter back to what was kept and the next step starts.

Invariant between steps, with seq[:n] the accepted tokens: the target's cache holds seq[:n-1] (the last
token is fed with the next proposals, so verification needs no extra forward); each drafter keeps its own
state over a prefix of seq[:n] (adaspec.drafters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec.core.metrics import SpecStats
from adaspec.core.sampling import Sampling, make_generator
from adaspec.decoding.drafter import Drafter
from adaspec.decoding.lm import DRAFT_CONFIDENCE, LMDrafter
from adaspec.errors import AdaspecError
from adaspec.models import check_vocab_compatible, output_vocab_size
from adaspec.models.lean import cached_lm
from adaspec.models.target import Clock, context_length

OnTokens = Callable[[list[int]], None]


def check_prompt(
    input_ids: torch.Tensor | Iterable[int], max_new_tokens: int, models: dict[str, PreTrainedModel]
) -> torch.Tensor:
    """The prompt as a 1-D long tensor, after checking batch size, emptiness and context length."""
    ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.tensor(list(input_ids))
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise AdaspecError(f"batch size {ids.shape[0]} is not supported: pass one prompt of shape [1, n]")
        ids = ids[0]
    if ids.dim() != 1:
        raise AdaspecError(f"input_ids must have shape [1, n], got {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise AdaspecError("empty prompt: input_ids needs at least one token (e.g. BOS)")
    if ids.dtype not in (torch.long, torch.int, torch.int32, torch.int64):
        raise AdaspecError(f"input_ids must be integer token ids, got {ids.dtype}")
    if max_new_tokens < 0:
        raise AdaspecError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    for name, model in models.items():
        ctx = context_length(model)
        if ctx is not None and ids.numel() + max_new_tokens > ctx:
            raise AdaspecError(
                f"prompt ({ids.numel()} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                f"{name} model's context of {ctx} positions"
            )
    return ids.long()


def eos_set(eos_token_id: int | Iterable[int] | None) -> frozenset[int]:
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, int):
        return frozenset([eos_token_id])
    return frozenset(int(t) for t in eos_token_id)


def truncate(values: list[int], eos: frozenset[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first EOS, and whether one was found."""
    for i, tok in enumerate(values):
        if tok in eos:
            return values[: i + 1], True
    return values, False


def as_drafter(
    draft: PreTrainedModel | Drafter,
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase | None,
    lean: bool | None,
    confidence: float | None,
) -> tuple[Drafter, dict[str, PreTrainedModel]]:
    """A drafter for `draft` and the models whose context bounds the prompt."""
    if isinstance(draft, PreTrainedModel):
        check_vocab_compatible(target, draft, tokenizer, tokenizer, quiet=tokenizer is None)
        drafter = LMDrafter(
            draft, output_vocab_size(target), lean, confidence=DRAFT_CONFIDENCE if confidence is None else confidence
        )
        return drafter, {"target": target, "draft": draft}
    if not isinstance(draft, Drafter):
        raise AdaspecError(f"draft must be a causal LM or a Drafter, got {type(draft).__name__}")
    return draft, {"target": target}


def sampling_for(
    target: PreTrainedModel, temperature: float, top_p: float, generator: torch.Generator | None, seed: int | None
) -> Sampling:
    """The generate functions' sampling arguments as the call's one Sampling (checked); a `seed` gets a fresh
    generator on the target's device."""
    return Sampling(temperature, top_p, make_generator(generator, seed, next(target.parameters()).device))


def kept_features(hidden: torch.Tensor | None, m: int) -> torch.Tensor | None:
    """The first m positions of the target's features of a step (what the drafter's `accept` gets)."""
    return None if hidden is None else hidden[:, :m]


@dataclass
class Step:
    """One verified step, as the loop reads it (each step kind adds what its own bookkeeping needs)."""

    tokens: torch.Tensor  # [accepted + 1] on the device: the accepted proposals, then the correction/bonus token
    values: list[int]  # the same on the host
    hidden: torch.Tensor | None  # the target's features of the fed positions (None without layers)
    draft_s: float
    target_s: float

    @property
    def accepted(self) -> int:
        return len(self.values) - 1


S = TypeVar("S", bound=Step)


class Steps(Protocol[S]):
    """One kind of speculative step: how it starts the drafter, drafts and verifies, counts, and rolls back."""

    gamma: int  # the configured draft depth, for the stats (SpecStats.gamma)

    def prefill(self, engine: Engine, hidden: torch.Tensor | None) -> None:
        """Start the drafter on the prompt; `hidden`: the target's features of seq[:n-1] (Drafter.prefill)."""

    def step(self, engine: Engine, n: int) -> S:
        """Draft after seq[:n] and verify in one target forward; proposals never run past engine.total."""

    def record(self, step: S, emitted: int, stats: SpecStats) -> None:
        """Count the step (its draft and target seconds are counted already); `emitted` tokens were kept."""

    def accept(self, engine: Engine, step: S, n: int, emitted: int) -> None:
        """Roll the target back to seq[:n-1] and the drafter to a prefix of seq[:n], n the new length."""


class Engine:
    """One generate call, set up (module docstring); `speculate` or the caller's own loop then decodes."""

    def __init__(
        self,
        target: PreTrainedModel,
        input_ids: torch.Tensor | Iterable[int],
        max_new_tokens: int,
        sampling: Sampling,
        *,
        models: dict[str, PreTrainedModel],
        layers: Sequence[int] = (),
        lean: bool | None,
        eos_token_id: int | Iterable[int] | None,
        on_tokens: OnTokens | None,
    ):
        """`models`: those whose context bounds the prompt; `layers`: the target layers the drafter reads."""
        prompt = check_prompt(input_ids, max_new_tokens, models)
        self.tgt = cached_lm(target, output_vocab_size(target), "target", layers, lean=lean)
        self.sampling, self.eos, self.on_tokens = sampling, eos_set(eos_token_id), on_tokens
        self.clock, self.stats = Clock(self.tgt.device), SpecStats(sequences=1)
        self.n, self.total = prompt.numel(), prompt.numel() + max_new_tokens
        self.seq = torch.empty(self.total, dtype=torch.long, device=self.tgt.device)
        self.seq[: self.n] = prompt.to(self.tgt.device)

    def prefill(self) -> torch.Tensor | None:
        """Cache the prompt but its last token, which the first step feeds; the target's features of those
        positions (None without layers or for a one-token prompt)."""
        return self.tgt.forward(self.seq[: self.n - 1])[1] if self.n > 1 else None

    def speculate(self, steps: Steps) -> tuple[torch.Tensor, SpecStats]:
        """Prefill, then speculative steps of one kind until EOS or max_new_tokens; (sequence [1, n], stats)."""
        seq, total, eos, clock, stats = self.seq, self.total, self.eos, self.clock, self.stats
        stats.gamma = steps.gamma
        t0 = clock()
        steps.prefill(self, self.prefill())
        t1 = clock()
        stats.prefill_time_s = t1 - t0
        n = self.n
        while n < total:
            step = steps.step(self, n)
            # The last step keeps only the tokens still wanted (all accepted: the bonus token is dropped).
            new, stop = truncate(step.values[: total - n], eos)
            m = len(new)
            seq[n : n + m] = step.tokens[:m]
            stats.draft_time_s += step.draft_s
            stats.target_time_s += step.target_s
            steps.record(step, m, stats)
            n += m
            if self.on_tokens is not None:
                self.on_tokens(new)
            if stop:
                break
            steps.accept(self, step, n, m)
        stats.decode_time_s = clock() - t1
        return seq[:n].unsqueeze(0), stats
