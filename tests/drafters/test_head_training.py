"""The training forwards and depth losses are aligned with decoding: heads trained for a few steps by
self-distillation on the target's own greedy continuations get their proposals accepted (shifting the
teacher by one position leaves acceptance near zero)."""

from __future__ import annotations

import pytest
import torch

from adaspec.data import response_mask
from adaspec.decoding.generate import speculative_generate
from adaspec.distill.selection import reduce_loss
from adaspec.distill.steps import place_by_predicted_token
from adaspec.drafters.medusa.model import MedusaDrafter, build_medusa
from adaspec.drafters.mtp.model import MTPDrafter, build_mtp
from adaspec.drafters.multi_token_loss import depth_token_losses, depth_weights
from adaspec.drafters.target_parts import target_parts
from adaspec.models import build_model

from .feature_helpers import V


@pytest.mark.parametrize("kind,steps,first,second", [("mtp", 100, 0.5, 0.4), ("medusa", 150, 0.3, 0.12)])
def test_trained_heads_are_accepted(kind, steps, first, second):
    target = build_model("tiny-llama", V, seed=1)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, V, (64, 4), generator=gen)
    with torch.no_grad():
        data = target.generate(
            prompts, attention_mask=torch.ones_like(prompts), do_sample=False, max_new_tokens=28, pad_token_id=0
        )
        out = target(data, output_hidden_states=True)
    hidden, teacher = out.hidden_states[-1], out.logits
    labels = data.clone()
    labels[:, :4] = -100  # response tokens only
    torch.manual_seed(0)
    heads = build_mtp(target, depth=2, seed=0) if kind == "mtp" else build_medusa(target, heads=2)
    drafter = MTPDrafter(heads, target) if kind == "mtp" else MedusaDrafter(heads, target)
    parts = target_parts(target)
    opt = torch.optim.Adam(heads.parameters(), lr=3e-3)
    heads.train()
    for _ in range(steps):
        idx = torch.randint(0, 64, (16,), generator=gen)
        logits = heads(parts, hidden[idx], data[idx])
        # as the head training runs it: depths weighed and placed at their tokens, reduced over the response
        losses = depth_token_losses(logits, teacher[idx], labels[idx], "fkl")
        response = response_mask(labels[idx])
        spread = place_by_predicted_token(
            [loss * mask for loss, mask in losses], depth_weights(len(losses)), response.shape[1], first=1
        )
        loss = reduce_loss(spread, response, response)
        opt.zero_grad()
        loss.backward()
        opt.step()
    heads.eval()
    totals = None
    for i in range(4):
        _, stats = speculative_generate(target, drafter, prompts[i : i + 1], max_new_tokens=24, gamma=2)
        totals = stats if totals is None else totals + stats
    acceptance = totals.position_acceptance
    assert acceptance[0] > first and acceptance[1] > second, acceptance
