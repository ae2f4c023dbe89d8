"""Sampling shared by every decode loop: temperature/top-p distributions, exact draws, and `Sampling`, the
settings a decode call carries to its steps and drafter."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from adaspec.errors import AdaspecError


def check_sampling(temperature: float, top_p: float) -> None:
    """Raise AdaspecError unless temperature is finite and >= 0 (0 = greedy) and top_p lies in (0, 1]."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise AdaspecError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise AdaspecError(f"top_p must be in (0, 1], got {top_p}")


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


def make_generator(generator: torch.Generator | None, seed: int | None, device: torch.device) -> torch.Generator | None:
    """The generator to sample with: the one given, a fresh one seeded with `seed`, or None (global RNG)."""
    if generator is not None and seed is not None:
        raise AdaspecError("pass either generator or seed, not both")
    if seed is not None:
        return torch.Generator(device=device).manual_seed(seed)
    return generator


@dataclass(frozen=True)
class Sampling:
    """How a decode call picks tokens, built once per call and handed to its steps and drafter: temperature 0
    is greedy; otherwise tokens are drawn from the temperature / top-p distribution with `generator` (None:
    torch's global RNG)."""

    temperature: float = 0.0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        check_sampling(self.temperature, self.top_p)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits_to_probs` at this temperature and top-p."""
        return logits_to_probs(logits, self.temperature, self.top_p)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """`sample` with this generator."""
        return sample(probs, self.generator)
