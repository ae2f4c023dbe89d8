"""Lossless speculative decoding (Leviathan et al. 2023; Chen et al. 2023), written in gpt-fast style.

One step: the drafter proposes γ tokens; the target scores the last accepted token plus the γ proposals
in ONE forward that reuses its KV cache (and yields the hidden states a feature drafter reads); the
acceptance rule (adaspec.core.verify) keeps a prefix and the target's cache is cropped back to the
accepted length, so the accepted prefix is never recomputed. Output has exactly the target's
distribution (greedy: exactly the target's greedy output).

The loop around the steps (set-up, stopping, stats, and the cache invariant between steps) is
adaspec.decoding.engine's, shared with token trees (adaspec.decoding.tree_generate): `ChainSteps` is the
chain's step kind.

Random draws per sampling step, in this order (a no-cache reference can replay them): the drafter's γ
samples, `torch.rand(γ)` for the acceptance tests, one sample of the correction/bonus token. `sample`
draws one exponential per vocabulary entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec.core.metrics import SpecStats, optimal_gamma
from adaspec.core.sampling import Sampling
from adaspec.core.verify import greedy_accepted, verify_chain
from adaspec.decoding.drafter import Drafter
from adaspec.decoding.engine import Engine, OnTokens, Step, as_drafter, kept_features, sampling_for
from adaspec.errors import AdaspecError
from adaspec.models.lean import LeanLM
from adaspec.models.target import CachedLM, Clock


@dataclass
class ChainStep(Step):
    drafted: int
    verify_s: float  # the acceptance rule and the step's one host sync


def speculative_decode(
    target: CachedLM | LeanLM, drafter: Drafter, seq: torch.Tensor, n: int, gamma: int, sampling: Sampling, clock: Clock
) -> ChainStep:
    """Propose up to `gamma` tokens after seq[:n] and verify them in one target forward (no rollback here)."""
    t0 = clock()
    proposals, draft_probs = drafter.propose(seq, n, gamma, sampling)
    proposals = proposals.to(target.device)
    g = proposals.shape[0]
    t1 = clock()
    # Row i of the target's logits is its prediction for proposal i (row g: the position after the last).
    logits, hidden = target.forward(torch.cat([seq[n - 1 : n], proposals]), keep=g + 1)
    t2 = clock()
    if sampling.greedy:
        # greedy needs no distributions: the target's argmax rows, read with the proposals in one sync
        best = logits.argmax(-1)
        host = torch.cat([proposals, best]).tolist()
        k = greedy_accepted(host[:g], host[g:])
        tokens, values = torch.cat([proposals[:k], best[k : k + 1]]), host[:k] + [host[g + k]]
    else:
        p = sampling.probs(logits)
        u = torch.rand(g, generator=sampling.generator, device=p.device)
        q = draft_probs.to(p.device) if draft_probs is not None else p.new_zeros(0, p.shape[-1])
        accepted, next_probs = verify_chain(p, proposals, q, u)
        token = sampling.draw(next_probs)
        host = torch.cat([proposals, token, accepted.view(1)]).tolist()
        k = host[-1]
        tokens, values = torch.cat([proposals[:k], token]), host[:k] + [host[g]]
    return ChainStep(tokens, values, hidden, t1 - t0, t2 - t1, g, clock() - t2)


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


class ChainSteps:
    """The engine's chain steps: γ proposals per step (fixed, or chosen by AdaptiveGamma), `speculative_decode`."""

    def __init__(self, drafter: Drafter, gamma: int, controller: AdaptiveGamma | None):
        self.drafter, self.controller = drafter, controller
        self.gamma = controller.gamma_max if controller else gamma  # proposals per step, at most

    def prefill(self, engine: Engine, hidden: torch.Tensor | None) -> None:
        self.drafter.prefill(engine.seq[: engine.n], hidden)

    def step(self, engine: Engine, n: int) -> ChainStep:
        g = min(self.controller.gamma if self.controller else self.gamma, engine.total - n)
        return speculative_decode(engine.tgt, self.drafter, engine.seq, n, g, engine.sampling, engine.clock)

    def record(self, step: ChainStep, emitted: int, stats: SpecStats) -> None:
        stats.record_step(step.drafted, step.accepted, emitted)
        stats.verify_time_s += step.verify_s
        if self.controller:
            self.controller.update(step.drafted, step.accepted, stats)

    def accept(self, engine: Engine, step: ChainStep, n: int, emitted: int) -> None:
        # The target keeps seq[:n-1]; its features of the kept positions (the fed last token and the accepted
        # proposals, at most `emitted` of them) go to the drafter.
        engine.tgt.crop(n - 1)
        self.drafter.accept(n, kept_features(step.hidden, min(step.accepted + 1, emitted)))


@torch.inference_mode()
def speculative_generate(
    target: PreTrainedModel,
    draft: PreTrainedModel | Drafter,
    input_ids: torch.Tensor,
    max_new_tokens: int = 128,
    gamma: int = 5,
    temperature: float = 0.0,
    top_p: float = 1.0,
    eos_token_id: int | Iterable[int] | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    adaptive_gamma: bool = False,
    gamma_max: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    on_tokens: OnTokens | None = None,
    lean: bool | None = None,
    draft_confidence: float | None = None,
) -> tuple[torch.Tensor, SpecStats]:
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
    sampling = sampling_for(target, temperature, top_p, generator, seed)
    drafter, bounded = as_drafter(draft, target, tokenizer, lean, draft_confidence)
    limit, most = drafter.max_gamma, max(gamma, gamma_max if adaptive_gamma else 0)
    if limit is not None and most > limit:
        raise AdaspecError(f"this drafter proposes at most {limit} tokens per step; got gamma {most}")
    engine = Engine(
        target,
        input_ids,
        max_new_tokens,
        sampling,
        models=bounded,
        layers=drafter.hidden_layers,
        lean=lean,
        eos_token_id=eos_token_id,
        on_tokens=on_tokens,
    )
    return engine.speculate(ChainSteps(drafter, gamma, AdaptiveGamma(gamma, gamma_max) if adaptive_gamma else None))


@torch.inference_mode()
def target_only_generate(
    target: PreTrainedModel,
    input_ids: torch.Tensor,
    max_new_tokens: int = 128,
    eos_token_id: int | Iterable[int] | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    on_tokens: OnTokens | None = None,
    lean: bool | None = None,
) -> tuple[torch.Tensor, SpecStats]:
    """Plain KV-cached autoregressive decoding with the same structure, clock and decode path (`lean` as in
    speculative_generate) as speculative_generate: the baseline of benchmarks, one target forward per
    token; stats count steps and forwards."""
    sampling = sampling_for(target, temperature, top_p, generator, seed)
    engine = Engine(
        target,
        input_ids,
        max_new_tokens,
        sampling,
        models={"target": target},
        lean=lean,
        eos_token_id=eos_token_id,
        on_tokens=on_tokens,
    )
    tgt, seq, n, total, clock, stats = engine.tgt, engine.seq, engine.n, engine.total, engine.clock, engine.stats
    eos, greedy = engine.eos, sampling.greedy
    sync_each_token = bool(eos) or on_tokens is not None
    t0 = clock()
    engine.prefill()
    t1 = clock()
    stats.prefill_time_s = t1 - t0
    while n < total:
        logits = tgt.forward(seq[n - 1 : n])[0][0]
        token = logits.argmax(-1, keepdim=True) if greedy else sampling.draw(sampling.probs(logits))
        seq[n : n + 1] = token
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
