"""Shared by the drafter tests: target features without the engine, a scripted engine that drives a
drafter through random acceptance patterns, and the plain causal attention EAGLE heads are checked against."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from adaspec.core.sampling import Sampling
from adaspec.drafters.common import repeat_kv

V = 64
PRESETS = ["tiny-llama", "tiny-neox", "tiny-gpt2"]


def final_hidden(target, ids: list[int]) -> Tensor:
    """The target's final normed states of `ids`, [T, H] (transformers' last `hidden_states`)."""
    with torch.no_grad():
        out = target(torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[-1][0]


def drive(
    drafter,
    target,
    prompt: list[int],
    steps: int,
    gamma: int,
    seed: int,
    check: Callable[[list[int], list[int], Tensor], None],
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> None:
    """Run `steps` propose/accept rounds as the engine would, accepting a random prefix of the proposals
    and a random correction token, with exact target features; `check(seq, proposals, q)` sees every
    round's proposals and draft distributions q [g, V] (at `temperature`, `top_p`)."""
    gen = torch.Generator().manual_seed(seed)
    seq = list(prompt)
    h = final_hidden(target, seq)
    drafter.prefill(torch.tensor(seq), h[None, : len(seq) - 1])
    for _ in range(steps):
        n = len(seq)
        proposals, q = drafter.propose(torch.tensor(seq), n, gamma, Sampling(temperature, top_p, gen))
        check(seq, proposals.tolist(), q)
        k = int(torch.randint(0, gamma + 1, (1,), generator=gen))
        seq = seq + proposals[:k].tolist() + [int(torch.randint(0, V, (1,), generator=gen))]
        h = final_hidden(target, seq)
        drafter.accept(len(seq), h[None, n - 1 : len(seq) - 1])


def causal_attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """An `Attend` over the whole fed sequence, causal, no cache: the reference for EagleHead.step's callers
    (the drafter's cached steps, the training-time test's unroll)."""
    mask = torch.ones(q.shape[2], q.shape[2], dtype=torch.bool, device=q.device).tril()
    groups = q.shape[1] // k.shape[1]
    return nn.functional.scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), attn_mask=mask)
