"""Lossless speculative decoding (Leviathan et al. 2023; Chen et al. 2023), written in gpt-fast style.

One step: the drafter proposes γ tokens; the target scores the last accepted token plus the γ proposals
in ONE forward that reuses its KV cache (and yields the hidden states a feature drafter reads); the
acceptance rule (adaspec.core.verify) keeps a prefix and the target's cache is cropped back to the
accepted length, so the accepted prefix is never recomputed. Output has exactly the target's
distribution (greedy: exactly the target's greedy output).

Cache invariant between steps, with `seq[:n]` the accepted tokens: the target cache holds `seq[:n-1]`
(the last token is fed with the next proposals, so verification needs no extra forward); each drafter
keeps its own state over a prefix of seq[:n] (adaspec.drafters).

Random draws per sampling step, in this order (a no-cache reference can replay them): the drafter's γ
samples, `torch.rand(γ)` for the acceptance tests, one sample of the correction/bonus token. `sample`
draws one exponential per vocabulary entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec.core.sampling import check_sampling, logits_to_probs, make_generator, sample
from adaspec.models.lean import LeanLM, cached_lm
from adaspec.models.target import CachedLM, Clock, context_length
from adaspec.core.verify import greedy_accepted, verify_chain
from adaspec.decoding.drafter import Drafter
from adaspec.decoding.lm import DRAFT_CONFIDENCE, LMDrafter
from adaspec.errors import AdaspecError
from adaspec.core.metrics import SpecStats, optimal_gamma
from adaspec.models import check_vocab_compatible, output_vocab_size

OnTokens = Callable[[list[int]], None]


@dataclass
class Step:
    tokens: torch.Tensor  # [accepted + 1] on the device: the accepted proposals, then the correction/bonus token
    values: list[int]  # the same on the host
    drafted: int
    hidden: torch.Tensor | None  # the target's features of the drafted + 1 fed positions (None without layers)
    draft_s: float
    target_s: float
    verify_s: float  # the acceptance rule and the step's one host sync

    @property
    def accepted(self) -> int:
        return len(self.values) - 1


def speculative_decode(target: CachedLM | LeanLM, drafter: Drafter, seq: torch.Tensor, n: int, gamma: int,
                       temperature: float, top_p: float, generator: torch.Generator | None,
                       clock: Clock) -> Step:
    """Propose up to `gamma` tokens after seq[:n] and verify them in one target forward (no rollback here)."""
    t0 = clock()
    proposals, draft_probs = drafter.propose(seq, n, gamma, temperature, top_p, generator)
    proposals = proposals.to(target.device)
    g = proposals.shape[0]
    t1 = clock()
    # Row i of the target's logits is its prediction for proposal i (row g: the position after the last).
    logits, hidden = target.forward(torch.cat([seq[n - 1:n], proposals]), keep=g + 1)
    t2 = clock()
    if temperature == 0:
        # greedy needs no distributions: the target's argmax rows, read with the proposals in one sync
        best = logits.argmax(-1)
        host = torch.cat([proposals, best]).tolist()
        k = greedy_accepted(host[:g], host[g:])
        tokens, values = torch.cat([proposals[:k], best[k:k + 1]]), host[:k] + [host[g + k]]
    else:
        p = logits_to_probs(logits, temperature, top_p)
        u = torch.rand(g, generator=generator, device=p.device)
        q = draft_probs.to(p.device) if draft_probs is not None else p.new_zeros(0, p.shape[-1])
        accepted, next_probs = verify_chain(p, proposals, q, u)
        token = sample(next_probs, generator)
        host = torch.cat([proposals, token, accepted.view(1)]).tolist()
        k = host[-1]
        tokens, values = torch.cat([proposals[:k], token]), host[:k] + [host[g]]
    return Step(tokens, values, g, hidden, t1 - t0, t2 - t1, clock() - t2)


# ---- generation loops ----

def _prompt(input_ids: torch.Tensor | Iterable[int], max_new_tokens: int,
            models: dict[str, PreTrainedModel]) -> torch.Tensor:
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
            raise AdaspecError(f"prompt ({ids.numel()} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                               f"{name} model's context of {ctx} positions")
    return ids.long()


def _eos_set(eos_token_id: int | Iterable[int] | None) -> frozenset[int]:
    if eos_token_id is None:
        return frozenset()
    if isinstance(eos_token_id, int):
        return frozenset([eos_token_id])
    return frozenset(int(t) for t in eos_token_id)


def _truncate(values: list[int], eos: frozenset[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first EOS, and whether one was found."""
    for i, tok in enumerate(values):
        if tok in eos:
            return values[: i + 1], True
    return values, False


class AdaptiveGamma:
    """γ per step maximising (1 − α^{γ+1}) / ((1 − α)(γc + 1)) from running estimates.

    α is an exponential moving average of the per-step estimate accepted / (accepted + rejected) (draft
    tokens after a rejection were never judged, so counting them would bias α low); c is the run's
    measured draft/target forward time ratio.
    """

    def __init__(self, gamma: int, gamma_max: int, decay: float = 0.9):
        self.gamma, self.gamma_max, self.decay = gamma, gamma_max, decay
        self.accepted = self.judged = 0.0

    def update(self, drafted: int, accepted: int, stats: SpecStats) -> None:
        self.accepted = self.decay * self.accepted + accepted
        self.judged = self.decay * self.judged + accepted + int(accepted < drafted)
        if self.judged > 0 and not math.isnan(stats.c):
            self.gamma = optimal_gamma(self.accepted / self.judged, stats.c, self.gamma_max)


def _as_drafter(draft: PreTrainedModel | Drafter, target: PreTrainedModel,
                tokenizer: PreTrainedTokenizerBase | None, vocab: int, lean: bool | None,
                confidence: float | None) -> tuple[Drafter, dict[str, PreTrainedModel]]:
    """A drafter for `draft` and the models whose context bounds the prompt."""
    if isinstance(draft, PreTrainedModel):
        check_vocab_compatible(target, draft, tokenizer, tokenizer, quiet=tokenizer is None)
        drafter = LMDrafter(draft, vocab, lean, confidence=DRAFT_CONFIDENCE if confidence is None else confidence)
        return drafter, {"target": target, "draft": draft}
    if not isinstance(draft, Drafter):
        raise AdaspecError(f"draft must be a causal LM or a Drafter, got {type(draft).__name__}")
    return draft, {"target": target}


def _hidden_slice(hidden: torch.Tensor | None, m: int) -> torch.Tensor | None:
    return None if hidden is None else hidden[:, :m]


@torch.inference_mode()
def speculative_generate(target: PreTrainedModel, draft: PreTrainedModel | Drafter,
                         input_ids: torch.Tensor, max_new_tokens: int = 128, gamma: int = 5,
                         temperature: float = 0.0, top_p: float = 1.0,
                         eos_token_id: int | Iterable[int] | None = None,
                         generator: torch.Generator | None = None, seed: int | None = None,
                         adaptive_gamma: bool = False, gamma_max: int | None = None,
                         tokenizer: PreTrainedTokenizerBase | None = None,
                         on_tokens: OnTokens | None = None, lean: bool | None = None,
                         draft_confidence: float | None = None) -> tuple[torch.Tensor, SpecStats]:
    """Generate up to `max_new_tokens` after one prompt with speculative decoding.

    `draft` is a draft causal LM (sharing the target's token ids) or any `Drafter` (adaspec.drafters).
    Returns the full sequence (prompt + generated, shape [1, n], on the target's device) and the stats.
    temperature 0 is greedy (output identical to the target's greedy decoding); otherwise tokens follow
    the target's temperature/top-p distribution exactly. Generation stops after `max_new_tokens` tokens or
    at the first token in `eos_token_id` (which is emitted; None = never stop early). With
    `adaptive_gamma`, `gamma` is the first step's draft length and later steps choose γ in
    [1, gamma_max] (default max(gamma, 8)) from the running α and measured c. `tokenizer`, when given,
    lets the output sizes differ by padding rows beyond it. `on_tokens` receives each step's new tokens.
    `lean`: the target and a draft model run on the lean decode path (adaspec.models.lean) where their
    family supports it (None: automatically; True: required; False: the transformers path).
    `draft_confidence` (a draft model only; None: `DRAFT_CONFIDENCE`): a step stops drafting after the first
    proposal the draft gives a probability below it (adaspec.decoding.lm.LMDrafter); 0 drafts γ every step.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise AdaspecError(f"gamma must be an integer >= 1, got {gamma!r}")
    gamma_max = max(gamma, 8) if gamma_max is None else gamma_max
    if adaptive_gamma and gamma_max < gamma:
        raise AdaspecError(f"gamma_max ({gamma_max}) must be >= gamma ({gamma})")
    check_sampling(temperature, top_p)
    vocab = output_vocab_size(target)
    drafter, bounded = _as_drafter(draft, target, tokenizer, vocab, lean, draft_confidence)
    limit = drafter.max_gamma
    if limit is not None and max(gamma, gamma_max if adaptive_gamma else 0) > limit:
        raise AdaspecError(f"this drafter proposes at most {limit} tokens per step; got gamma "
                           f"{max(gamma, gamma_max if adaptive_gamma else 0)}")
    prompt = _prompt(input_ids, max_new_tokens, bounded)
    tgt = cached_lm(target, vocab, "target", drafter.hidden_layers, lean=lean)
    generator = make_generator(generator, seed, tgt.device)
    eos, clock = _eos_set(eos_token_id), Clock(tgt.device)
    stats = SpecStats(gamma=gamma_max if adaptive_gamma else gamma, sequences=1)
    controller = AdaptiveGamma(gamma, gamma_max) if adaptive_gamma else None

    n, total = prompt.numel(), prompt.numel() + max_new_tokens
    seq = torch.empty(total, dtype=torch.long, device=tgt.device)
    seq[:n] = prompt.to(tgt.device)
    t0 = clock()
    # the target caches the prompt but its last token, which the first step feeds
    hidden = tgt.forward(seq[: n - 1])[1] if n > 1 else None
    drafter.prefill(seq[:n], hidden)
    t1 = clock()
    stats.prefill_time_s = t1 - t0
    while n < total:
        g = min(controller.gamma if controller else gamma, total - n)
        step = speculative_decode(tgt, drafter, seq, n, g, temperature, top_p, generator, clock)
        g, k = step.drafted, step.accepted
        # The last step keeps only the tokens still wanted (all g accepted: the bonus token is dropped).
        new, stop = _truncate(step.values[: total - n], eos)
        m = len(new)
        seq[n:n + m] = step.tokens[:m]
        stats.record_step(g, k, m)
        stats.draft_time_s += step.draft_s
        stats.target_time_s += step.target_s
        stats.verify_time_s += step.verify_s
        if controller:
            controller.update(g, k, stats)
        n += m
        if on_tokens is not None:
            on_tokens(new)
        if stop:
            break
        # Roll back to the accepted length: the target keeps seq[:n-1]; its features of the kept positions
        # (the fed last token and the accepted proposals, at most m of them) go to the drafter.
        tgt.crop(n - 1)
        drafter.accept(n, _hidden_slice(step.hidden, min(k + 1, m)))
    stats.decode_time_s = clock() - t1
    return seq[:n].unsqueeze(0), stats


@torch.inference_mode()
def target_only_generate(target: PreTrainedModel, input_ids: torch.Tensor, max_new_tokens: int = 128,
                         eos_token_id: int | Iterable[int] | None = None, temperature: float = 0.0,
                         top_p: float = 1.0, generator: torch.Generator | None = None, seed: int | None = None,
                         on_tokens: OnTokens | None = None, lean: bool | None = None
                         ) -> tuple[torch.Tensor, SpecStats]:
    """Plain KV-cached autoregressive decoding with the same structure, clock and decode path (`lean` as in
    speculative_generate) as speculative_generate: the baseline of benchmarks, one target forward per
    token; stats count steps and forwards."""
    check_sampling(temperature, top_p)
    prompt = _prompt(input_ids, max_new_tokens, {"target": target})
    tgt = cached_lm(target, output_vocab_size(target), "target", lean=lean)
    generator = make_generator(generator, seed, tgt.device)
    eos, clock = _eos_set(eos_token_id), Clock(tgt.device)
    sync_each_token = bool(eos) or on_tokens is not None
    stats = SpecStats(sequences=1)
    n, total = prompt.numel(), prompt.numel() + max_new_tokens
    seq = torch.empty(total, dtype=torch.long, device=tgt.device)
    seq[:n] = prompt.to(tgt.device)
    t0 = clock()
    if n > 1:
        tgt.forward(seq[: n - 1])
    t1 = clock()
    stats.prefill_time_s = t1 - t0
    while n < total:
        logits = tgt.forward(seq[n - 1:n])[0][0]
        token = logits.argmax(-1, keepdim=True) if temperature == 0 else sample(
            logits_to_probs(logits, temperature, top_p), generator)
        seq[n:n + 1] = token
        n += 1
        stats.record_step(0, 0, 1)
        if sync_each_token:  # the only host sync per token, and only when someone needs the token
            value = int(token)
            if on_tokens is not None:
                on_tokens([value])
            if value in eos:
                break
    stats.decode_time_s = clock() - t1
    stats.target_time_s = stats.decode_time_s
    return seq[:n].unsqueeze(0), stats
