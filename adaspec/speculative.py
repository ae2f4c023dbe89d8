"""Lossless speculative decoding (Leviathan et al. 2023; Chen et al. 2023), written in gpt-fast style.

One step: the draft proposes γ tokens autoregressively from its own KV cache; the target scores the last
accepted token plus the γ proposals in ONE forward that reuses its KV cache; a prefix is accepted by the
rule below and both caches are cropped back to the accepted length, so the accepted prefix is never
recomputed. Output has exactly the target's distribution (greedy: exactly the target's greedy output).

Cache invariant between steps, with `seq[:n]` the accepted tokens: the target cache holds `seq[:n-1]` (the
last token is fed with the next proposals, so verification needs no extra forward) and the draft cache
holds a prefix `seq[:k]`, k < n; the draft catches up on `seq[k:n]` (one or two tokens: the correction or
bonus token, and after a fully accepted step the last proposal it never fed) in its first forward of the
next step.

Random draws per sampling step, in this order (a no-cache reference can replay them): γ draft samples,
`torch.rand(γ)` for the acceptance tests, one sample of the correction/bonus token. `sample` draws one
exponential per vocabulary entry.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from adaspec.errors import AdaspecError
from adaspec.metrics import SpecStats, optimal_gamma
from adaspec.models import check_vocab_compatible, load_model, load_tokenizer, output_vocab_size

OnTokens = Callable[[list[int]], None]


# ---- sampling helpers ----

def logits_to_probs(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0) -> torch.Tensor:
    """Softmax of logits / temperature over the last dim, restricted to the top-p nucleus.

    Temperature 0 gives the one-hot argmax. Top-p keeps the most probable tokens until their mass reaches
    top_p (a token is dropped when the mass strictly before it, in descending order, is already >= top_p,
    as transformers' TopPLogitsWarper does); the most probable token is always kept.
    """
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        sorted_probs[..., 0] = sorted_probs[..., 0].clamp_min(torch.finfo(sorted_probs.dtype).tiny)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `probs` (shape [..., 1]), without a host sync.

    argmax(p / E) with E ~ Exp(1) i.i.d. is an exact draw from p (the exponential-race trick).
    """
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / race, dim=-1, keepdim=True)


# ---- one model with its KV cache ----

class _CachedLM:
    """A causal LM plus its DynamicCache; `seen` counts the tokens in the cache."""

    def __init__(self, model: PreTrainedModel, vocab: int, name: str):
        self.model, self.vocab, self.seen = model, vocab, 0
        self.cache = DynamicCache(config=model.config)
        if not getattr(self.cache, "is_croppable", True):
            raise AdaspecError(f"the {name} model's KV cache cannot be rolled back (sliding-window or "
                               "recurrent layers), so it cannot be used for speculative decoding")
        self.device = next(model.parameters()).device
        self.own_vocab = output_vocab_size(model)
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters

    def forward(self, tokens: torch.Tensor, keep: int = 1) -> torch.Tensor:
        """Feed 1-D `tokens` after the cached ones; float32 logits of the last `keep` positions, [keep, V]."""
        tokens = tokens.to(self.device).unsqueeze(0)
        kwargs = {"logits_to_keep": keep} if self._keep_arg else {}
        logits = self.model(input_ids=tokens, past_key_values=self.cache, use_cache=True, **kwargs).logits
        self.seen += tokens.shape[1]
        logits = logits[0, -keep:].float()
        if self.own_vocab != self.vocab:  # padded output rows: the draft never proposes what the target lacks
            if self.own_vocab > self.vocab:
                logits = logits[:, : self.vocab]
            else:
                logits = torch.nn.functional.pad(logits, (0, self.vocab - self.own_vocab), value=-math.inf)
        return logits

    def crop(self, length: int) -> None:
        """Roll the cache back to its first `length` tokens (negative crop = tokens to remove, in 4.x and 5.x)."""
        if length < self.seen:
            self.cache.crop(length - self.seen)
            self.seen = length


class _Clock:
    """perf_counter timestamps, synchronising CUDA first so they measure finished work."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


# ---- the step ----

@dataclass
class _Step:
    tokens: torch.Tensor  # [γ + 1]: the proposals, then the correction/bonus token at index `accepted`
    values: list[int]  # the same on the host: proposals, the token, then `accepted`
    accepted: int
    draft_s: float
    target_s: float


def speculative_decode(target: _CachedLM, draft: _CachedLM, seq: torch.Tensor, n: int, gamma: int,
                       temperature: float, top_p: float, generator: torch.Generator | None,
                       clock: _Clock) -> _Step:
    """Propose `gamma` tokens after seq[:n], verify them in one target forward; caches are not cropped."""
    t0 = clock()
    feed = seq[draft.seen:n]  # tokens the draft has not seen yet (1 or 2)
    proposals, draft_probs = [], []
    for _ in range(gamma):
        logits = draft.forward(feed)[0]
        if temperature == 0:
            feed = logits.argmax(-1, keepdim=True)
        else:
            q = logits_to_probs(logits, temperature, top_p)
            feed = sample(q, generator)
            draft_probs.append(q)
        proposals.append(feed)
    proposals = torch.cat(proposals).to(target.device)
    t1 = clock()
    # Row i of the target's logits is its prediction for proposal i (row γ: the position after the last).
    logits = target.forward(torch.cat([seq[n - 1:n], proposals]), keep=gamma + 1)
    t2 = clock()
    if temperature == 0:
        # Greedy: accept proposals while they equal the target's argmax, then emit the target's argmax
        # (the correction at the first mismatch, or the bonus token after all γ).
        best = logits.argmax(-1)
        accepted = (proposals == best[:gamma]).cumprod(0).sum()
        token = best.index_select(0, accepted.view(1))
    else:
        p = logits_to_probs(logits, temperature, top_p)  # [γ+1, V]
        q = torch.stack(draft_probs).to(p.device)  # [γ, V]
        # Accept proposal x_i with probability min(1, p_i(x_i) / q_i(x_i)), i.e. iff u_i * q_i(x_i) < p_i(x_i)
        # with u_i ~ U[0, 1); stop at the first rejection.
        u = torch.rand(gamma, generator=generator, device=p.device)
        idx = proposals.view(-1, 1)
        ok = u * q.gather(1, idx).view(-1) < p[:gamma].gather(1, idx).view(-1)
        accepted = ok.long().cumprod(0).sum()
        # On the first rejection (position i) sample from norm(max(0, p_i − q_i)); if all γ were accepted,
        # sample the bonus token from p_γ (the padded q row is zero). Computed for the row `accepted` on the
        # device, so the only host sync of the step is the .tolist() below.
        residual = (p - torch.cat([q, torch.zeros_like(q[:1])])).clamp_min(0).index_select(0, accepted.view(1))
        mass = residual.sum()
        residual = torch.where(mass > 0, residual / mass, p.index_select(0, accepted.view(1)))
        token = sample(residual[0], generator)
    tokens = torch.cat([proposals, token])
    values = torch.cat([tokens, accepted.view(1)]).tolist()
    return _Step(tokens, values, values[-1], t1 - t0, t2 - t1)


# ---- generation loops ----

def _context_length(model: PreTrainedModel) -> int | None:
    n = getattr(model.config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


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
        ctx = _context_length(model)
        if ctx is not None and ids.numel() + max_new_tokens > ctx:
            raise AdaspecError(f"prompt ({ids.numel()} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                               f"{name} model's context of {ctx} positions")
    return ids.long()


def _check_sampling(temperature: float, top_p: float) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise AdaspecError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise AdaspecError(f"top_p must be in (0, 1], got {top_p}")


def _generator(generator: torch.Generator | None, seed: int | None, device: torch.device
               ) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise AdaspecError("pass either generator or seed, not both")
    if seed is not None:
        return torch.Generator(device=device).manual_seed(seed)
    return generator


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


class _AdaptiveGamma:
    """γ per step maximising (1 − α^{γ+1}) / ((1 − α)(γc + 1)) from running estimates.

    α is an exponential moving average of the per-step geometric estimate (accepted tokens over judged
    tokens: draft tokens after a rejection were never judged, so counting them would bias α low); c is
    the run's measured draft/target forward time ratio.
    """

    def __init__(self, gamma: int, gamma_max: int, decay: float = 0.9):
        self.gamma, self.gamma_max, self.decay = gamma, gamma_max, decay
        self.accepted = self.judged = 0.0

    def update(self, drafted: int, accepted: int, stats: SpecStats) -> None:
        self.accepted = self.decay * self.accepted + accepted
        self.judged = self.decay * self.judged + accepted + int(accepted < drafted)
        if self.judged > 0 and not math.isnan(stats.c):
            self.gamma = optimal_gamma(self.accepted / self.judged, stats.c, self.gamma_max)


@torch.inference_mode()
def speculative_generate(target: PreTrainedModel, draft: PreTrainedModel,
                         input_ids: torch.Tensor, max_new_tokens: int = 128, gamma: int = 5,
                         temperature: float = 0.0, top_p: float = 1.0,
                         eos_token_id: int | Iterable[int] | None = None,
                         generator: torch.Generator | None = None, seed: int | None = None,
                         adaptive_gamma: bool = False, gamma_max: int | None = None,
                         tokenizer: PreTrainedTokenizerBase | None = None,
                         on_tokens: OnTokens | None = None) -> tuple[torch.Tensor, SpecStats]:
    """Generate up to `max_new_tokens` after one prompt with speculative decoding.

    Returns the full sequence (prompt + generated, shape [1, n], on the target's device) and the stats.
    temperature 0 is greedy (output identical to the target's greedy decoding); otherwise tokens follow
    the target's temperature/top-p distribution exactly. Generation stops after `max_new_tokens` tokens or
    at the first token in `eos_token_id` (which is emitted; None = never stop early). With
    `adaptive_gamma`, `gamma` is the first step's draft length and later steps choose γ in
    [1, gamma_max] (default max(gamma, 8)) from the running α and measured c. `tokenizer`, when given,
    lets the output sizes differ by padding rows beyond it. `on_tokens` receives each step's new tokens.
    """
    if isinstance(gamma, bool) or not isinstance(gamma, int) or gamma < 1:
        raise AdaspecError(f"gamma must be an integer >= 1, got {gamma!r}")
    gamma_max = max(gamma, 8) if gamma_max is None else gamma_max
    if adaptive_gamma and gamma_max < gamma:
        raise AdaspecError(f"gamma_max ({gamma_max}) must be >= gamma ({gamma})")
    _check_sampling(temperature, top_p)
    check_vocab_compatible(target, draft, tokenizer, tokenizer)
    prompt = _prompt(input_ids, max_new_tokens, {"target": target, "draft": draft})
    vocab = output_vocab_size(target)
    tgt, drf = _CachedLM(target, vocab, "target"), _CachedLM(draft, vocab, "draft")
    generator = _generator(generator, seed, tgt.device)
    eos, clock = _eos_set(eos_token_id), _Clock(tgt.device)
    stats = SpecStats(gamma=gamma_max if adaptive_gamma else gamma, sequences=1)
    controller = _AdaptiveGamma(gamma, gamma_max) if adaptive_gamma else None

    n, total = prompt.numel(), prompt.numel() + max_new_tokens
    seq = torch.empty(total, dtype=torch.long, device=tgt.device)
    seq[:n] = prompt.to(tgt.device)
    t0 = clock()
    if n > 1:  # both caches get the prompt but its last token, which the first step feeds
        tgt.forward(seq[: n - 1])
        drf.forward(seq[: n - 1])
    t1 = clock()
    stats.prefill_time_s = t1 - t0
    while n < total:
        g = min(controller.gamma if controller else gamma, total - n)
        step = speculative_decode(tgt, drf, seq, n, g, temperature, top_p, generator, clock)
        k = step.accepted
        # The last step keeps only the tokens still wanted (all g accepted: the bonus token is dropped).
        new, stop = _truncate((step.values[:k] + [step.values[g]])[: total - n], eos)
        m = len(new)
        seq[n:n + m] = torch.cat([step.tokens[:k], step.tokens[g:]])[:m]
        stats.record_step(g, k, m)
        stats.draft_time_s += step.draft_s
        stats.target_time_s += step.target_s
        if controller:
            controller.update(g, k, stats)
        n += m
        if on_tokens is not None:
            on_tokens(new)
        if stop:
            break
        # Roll back to the accepted length: both caches keep at most seq[:n-1] (no-op where already shorter).
        tgt.crop(n - 1)
        drf.crop(n - 1)
    stats.decode_time_s = clock() - t1
    return seq[:n].unsqueeze(0), stats


@torch.inference_mode()
def target_only_generate(target: PreTrainedModel, input_ids: torch.Tensor, max_new_tokens: int = 128,
                         eos_token_id: int | Iterable[int] | None = None, temperature: float = 0.0,
                         top_p: float = 1.0, generator: torch.Generator | None = None, seed: int | None = None,
                         on_tokens: OnTokens | None = None) -> tuple[torch.Tensor, SpecStats]:
    """Plain KV-cached autoregressive decoding with the same structure and clock as speculative_generate
    (the baseline of benchmarks): one target forward per token; stats count steps and forwards."""
    _check_sampling(temperature, top_p)
    prompt = _prompt(input_ids, max_new_tokens, {"target": target})
    tgt = _CachedLM(target, output_vocab_size(target), "target")
    generator = _generator(generator, seed, tgt.device)
    eos, clock = _eos_set(eos_token_id), _Clock(tgt.device)
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
        logits = tgt.forward(seq[n - 1:n])[0]
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


# ---- CLI ----

@dataclass
class GenerateOptions:
    """Speculative decoding of one prompt: streams the text, then prints acceptance and speed statistics."""

    target: str = field(metadata={"help": "target model directory or hub id (its tokenizer is used)"})
    draft: str = field(metadata={"help": "draft model directory or hub id (same vocabulary as the target)"})
    prompt: str = field(metadata={"help": "prompt text"})
    gamma: int = field(default=5, metadata={"help": "draft tokens per step (the first step's when adaptive)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature; 0 = greedy"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass in (0, 1]"})
    max_new_tokens: int = field(default=128, metadata={"help": "maximum number of generated tokens"})
    adaptive_gamma: bool = field(default=False, metadata={
        "help": "choose gamma per step from the running acceptance rate and measured draft/target cost"})
    gamma_max: int = field(default=8, metadata={"help": "largest gamma the adaptive choice may use"})
    seed: int | None = field(default=None, metadata={"help": "random seed for sampling"})
    device: str | None = field(default=None, metadata={"help": "torch device, e.g. cpu or cuda; unset: cuda "
                                                                "when available, else cpu"})
    stop_at_eos: bool = field(default=True, metadata={"help": "stop at the tokenizer's end-of-sequence token"})
    json: bool = field(default=False, metadata={"help": "print one JSON object (text and stats) instead of "
                                                        "streaming"})

    def __post_init__(self) -> None:
        if self.gamma < 1:
            raise AdaspecError(f"--gamma must be >= 1, got {self.gamma}")
        if self.gamma_max < 1:
            raise AdaspecError(f"--gamma-max must be >= 1, got {self.gamma_max}")
        if self.adaptive_gamma and self.gamma_max < self.gamma:
            raise AdaspecError(f"--gamma-max ({self.gamma_max}) must be >= --gamma ({self.gamma})")
        if self.max_new_tokens < 1:
            raise AdaspecError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        _check_sampling(self.temperature, self.top_p)
        if not self.prompt:
            raise AdaspecError("--prompt is empty")


class _TextStream:
    """Prints decoded text as tokens arrive. The prompt is decoded with the new tokens so word boundaries
    come out right; text ending in an incomplete UTF-8 sequence is held back until it completes."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int]):
        self.tokenizer, self.ids = tokenizer, list(prompt_ids)
        self.printed = self._decode()
        self._write(self.printed)

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


def run_generate(opts: GenerateOptions) -> int:
    device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    target = load_model(opts.target, device=device)
    draft = load_model(opts.draft, device=device)
    tokenizer = load_tokenizer(opts.target)
    try:
        draft_tokenizer = load_tokenizer(opts.draft)
    except AdaspecError:  # a draft saved without a tokenizer is checked by output size only
        draft_tokenizer = None
    check_vocab_compatible(target, draft, tokenizer, draft_tokenizer)
    input_ids = tokenizer(opts.prompt, return_tensors="pt").input_ids
    if input_ids.numel() == 0 and tokenizer.bos_token_id is not None:
        input_ids = torch.tensor([[tokenizer.bos_token_id]])
    stream = None if opts.json else _TextStream(tokenizer, input_ids[0].tolist())
    seq, stats = speculative_generate(
        target, draft, input_ids, max_new_tokens=opts.max_new_tokens, gamma=opts.gamma,
        temperature=opts.temperature, top_p=opts.top_p,
        eos_token_id=tokenizer.eos_token_id if opts.stop_at_eos else None, seed=opts.seed,
        adaptive_gamma=opts.adaptive_gamma, gamma_max=opts.gamma_max, tokenizer=tokenizer, on_tokens=stream)
    generated = seq[0, input_ids.shape[1]:].tolist()
    if opts.json:
        print(json.dumps({"prompt": opts.prompt, "text": tokenizer.decode(generated, skip_special_tokens=True),
                          "tokens": generated, "stats": stats.to_dict()}))
    else:
        print("\n")
        print(stats.format())
    return 0
