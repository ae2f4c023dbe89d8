"""Medusa heads: shapes, zero-initialised blocks start as the identity, every block is its own module,
the parallel chain equals a direct recomputation, γ bounded by the head count."""

from __future__ import annotations

import pytest
import torch

from adaspec import AdaspecError
from adaspec.core.sampling import Sampling
from adaspec.drafters.medusa.model import MedusaDrafter, build_medusa
from adaspec.drafters.target_parts import target_parts
from adaspec.models import build_model

from .feature_helpers import PRESETS, V, drive, final_hidden


@pytest.fixture(scope="module", params=PRESETS)
def target(request):
    return build_model(request.param, V, seed=1)


def perturb(heads, seed: int) -> None:
    """Non-zero residual weights, as after some training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.blocks.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def test_shapes_and_identity_at_init(target):
    heads = build_medusa(target, heads=4, layers=2)
    parts = target_parts(target)
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = target(ids, output_hidden_states=True)
        logits = heads(parts, out.hidden_states[-1], ids)
    assert len(logits) == 4 and all(x.shape == (2, 7, V) for x in logits)
    for x in logits:  # identity blocks + copied head: the target's own logits
        torch.testing.assert_close(x, out.logits, atol=1e-5, rtol=1e-5)
    shared = build_medusa(target, heads=2, layers=1, shared_head=True)
    assert shared.lm_heads is None
    with torch.no_grad():
        torch.testing.assert_close(shared(parts, out.hidden_states[-1], ids)[1], out.logits, atol=1e-5, rtol=1e-5)


def test_every_block_is_its_own_module():
    target = build_model("tiny-llama", V, seed=1)
    heads = build_medusa(target, heads=3, layers=3)
    linears = [layer for block in heads.blocks for layer in block.layers]
    assert len({id(x) for x in linears}) == 9
    assert len({x.weight.data_ptr() for x in linears}) == 9
    assert all(int(torch.count_nonzero(x.weight)) == 0 for x in linears)
    assert all(int(torch.count_nonzero(x.bias)) == 0 for x in linears)
    assert len({x.weight.data_ptr() for x in heads.lm_heads}) == 3


def test_blocks_compute_residual_silu():
    target = build_model("tiny-llama", V, seed=1)
    heads = build_medusa(target, heads=2, layers=2)
    perturb(heads, 0)
    parts = target_parts(target)
    h = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = h
        for layer in heads.blocks[1].layers:
            x = x + torch.nn.functional.silu(x @ layer.weight.T + layer.bias)
        torch.testing.assert_close(heads(parts, h, None)[1], heads.lm_heads[1](x))


@pytest.mark.parametrize("gamma", [1, 2, 4])
def test_chain_matches_direct_recomputation(target, gamma):
    heads = build_medusa(target, heads=4, layers=1)
    perturb(heads, gamma)
    parts = target_parts(target)
    rounds = []
    with torch.no_grad():
        drive(
            MedusaDrafter(heads, target),
            target,
            [3, 9, 1],
            steps=6,
            gamma=gamma,
            seed=gamma,
            check=lambda seq, proposals, q: rounds.append((seq, q)),
        )
        for seq, q in rounds:
            h = final_hidden(target, seq)[len(seq) - 2]  # the state that produced seq[n-1]
            want = torch.stack([torch.softmax(x.float(), -1) for x in heads(parts, h, None)[:gamma]])
            torch.testing.assert_close(q, want, atol=1e-6, rtol=1e-5)


def test_gamma_above_heads_is_refused_and_one_token_prompt():
    target = build_model("tiny-gpt2", V, seed=1)
    drafter = MedusaDrafter(build_medusa(target, heads=2), target)
    assert drafter.max_gamma == 2
    drafter.prefill(torch.tensor([4]), None)
    proposals, q = drafter.propose(torch.tensor([4]), 1, 2, Sampling(1.0))
    assert proposals.numel() == 0 and q.shape == (0, V)
    with pytest.raises(AdaspecError, match="at most 2 tokens per step; got gamma 3"):
        drafter.propose(torch.tensor([4]), 1, 3, Sampling())
