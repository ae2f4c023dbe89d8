"""The heads' lean decode path (adaspec.drafters.lean_layer) against the modules it views: EAGLE heads
(both variants, grouped-query attention) and MTP modules, fed in chunks after a cache, after cropping,
with explicit positions and tree visibility, and with rows kept out of order; DFlash's blocks (q/k norms,
non-causal, after context rows with no query) against its training forward."""

from __future__ import annotations

import pytest
import torch

from adaspec.drafters.dflash import DFlashConfig, DFlashDrafter, DFlashHead
from adaspec.drafters.eagle.drafter import LeanEagle
from adaspec.drafters.eagle.model import EagleConfig, EagleHead
from adaspec.drafters.mtp.model import LeanMTPModule, MTPConfig, MTPHeads
from adaspec.drafters.target_parts import target_parts
from adaspec.models import build_model

from .feature_helpers import causal_attend

V = 48
TOL = dict(rtol=1e-5, atol=1e-5)


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():  # norms away from 1 so every weight matters
            p.add_(torch.randn_like(p) * 0.3)
    return module.eval()


def _head(variant: str, kv_heads: int) -> EagleHead:
    cfg = EagleConfig(
        hidden_size=16,
        target_hidden_size=16,
        vocab_size=V,
        draft_vocab_size=V,
        num_heads=4,
        num_kv_heads=kv_heads,
        intermediate_size=24,
        target_num_layers=6,
        variant=variant,
    )
    return _perturbed(EagleHead(cfg), seed=1)


def _reference(head: EagleHead, tokens: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The module over the whole sequence at once, causal, no cache."""
    return head.step(tokens[None], hidden[None], positions, causal_attend)[0]


@pytest.mark.parametrize("variant,kv_heads", [("eagle3", 4), ("eagle3", 2), ("eagle1", 4)])
def test_lean_eagle_chunks_and_crops_equal_one_causal_forward(variant, kv_heads):
    head = _head(variant, kv_heads)
    gen = torch.Generator().manual_seed(2)
    t = 13
    tokens, hidden = torch.randint(0, V, (t,), generator=gen), torch.randn(t, 16, generator=gen)
    with torch.no_grad():
        ref = _reference(head, tokens, hidden, torch.arange(t))
        lean = LeanEagle(head)
        out = torch.cat([lean.step(tokens[a:b], hidden[a:b]) for a, b in ((0, 5), (5, 6), (6, 9), (9, 13))])
        torch.testing.assert_close(out, ref, **TOL)
        torch.testing.assert_close(lean.logits(out), head.logits(ref[None])[0], **TOL)
        lean.layer.crop(7)  # drop rows 7.. and feed them again, as a drafter after a rejection
        torch.testing.assert_close(lean.step(tokens[7:], hidden[7:]), ref[7:], **TOL)


def test_lean_eagle_grows_its_cache_past_the_initial_capacity():
    head = _head("eagle3", 2)
    gen = torch.Generator().manual_seed(3)
    t = 300  # the buffer starts at 256 rows
    tokens, hidden = torch.randint(0, V, (t,), generator=gen), torch.randn(t, 16, generator=gen)
    with torch.no_grad():
        ref = _reference(head, tokens, hidden, torch.arange(t))
        lean = LeanEagle(head)
        out = torch.cat(
            [lean.step(tokens[:250], hidden[:250])]
            + [lean.step(tokens[i : i + 1], hidden[i : i + 1]) for i in range(250, t)]
        )
    torch.testing.assert_close(out, ref, **TOL)


def test_lean_eagle_tree_rows_see_their_ancestors_at_their_depth_positions():
    """Two siblings after a cached prefix, each fed at position prefix (depth 1), seeing the prefix and
    itself, then a child of the second: each equals the causal forward over prefix + its own path."""
    head = _head("eagle3", 2)
    gen = torch.Generator().manual_seed(4)
    p = 6
    tokens, hidden = torch.randint(0, V, (p + 3,), generator=gen), torch.randn(p + 3, 16, generator=gen)
    with torch.no_grad():
        lean = LeanEagle(head)
        lean.step(tokens[:p], hidden[:p])
        visible = torch.zeros(2, p + 2, dtype=torch.bool)
        visible[:, :p] = True
        visible[0, p] = visible[1, p + 1] = True
        siblings = lean.step(tokens[p : p + 2], hidden[p : p + 2], torch.tensor([p, p]), visible)
        child_visible = torch.zeros(1, p + 3, dtype=torch.bool)
        child_visible[0, :p] = True
        child_visible[0, p + 1 :] = True
        child = lean.step(tokens[p + 2 :], hidden[p + 2 :], torch.tensor([p + 1]), child_visible)
        for row, path in ((siblings[0], [p]), (siblings[1], [p + 1]), (child[0], [p + 1, p + 2])):
            idx = torch.tensor(list(range(p)) + path)
            ref = _reference(head, tokens[idx], hidden[idx], torch.arange(len(idx)))
            torch.testing.assert_close(row, ref[-1], **TOL)
        lean.layer.keep(p, [p + 1, p + 2])  # the accepted path: its rows now follow the prefix
        assert lean.layer.length == p + 2
        nxt = torch.randint(0, V, (1,), generator=gen), torch.randn(1, 16, generator=gen)
        out = lean.step(*nxt)
        idx = torch.tensor(list(range(p)) + [p + 1, p + 2])
        ref = _reference(head, torch.cat([tokens[idx], nxt[0]]), torch.cat([hidden[idx], nxt[1]]), torch.arange(p + 3))
        torch.testing.assert_close(out[0], ref[-1], **TOL)


def test_lean_mtp_module_equals_the_module():
    heads = _perturbed(MTPHeads(MTPConfig(depth=2, hidden=16, heads=4, intermediate=24)), seed=5)
    gen = torch.Generator().manual_seed(6)
    t = 11
    prev, emb = torch.randn(t, 16, generator=gen), torch.randn(t, 16, generator=gen)
    for module in heads.mtp:
        with torch.no_grad():
            ref = module(prev[None], emb[None])[0]
            lean = LeanMTPModule(module, heads.cfg)
            out = torch.cat([lean.run(prev[a:b], emb[a:b]) for a, b in ((0, 4), (4, 5), (5, 11))])
            torch.testing.assert_close(out, ref, **TOL)
            lean.layer.crop(3)
            torch.testing.assert_close(lean.run(prev[3:], emb[3:]), ref[3:], **TOL)


def test_drafters_rebuild_their_lean_view_after_the_weights_change():
    from adaspec.drafters.eagle.drafter import EagleDrafter

    head = _head("eagle3", 2)
    drafter = EagleDrafter(head)
    with torch.no_grad():
        head.layer.mlp.down_proj.weight.mul_(2.0)  # as an optimizer step would, in place
    drafter.prefill(torch.tensor([1, 2]), None)
    torch.testing.assert_close(drafter.lean.layer.w_down, head.layer.mlp.down_proj.weight.t())


def test_lean_dflash_block_logits_equal_the_training_forward():
    """The drafter's lean blocks after context appended in chunks (past the cache's initial 256 rows), at
    every γ and with the mask id as the last token, equal the module's training forward of a block that
    wide at the same anchor (grouped-query attention, two layers, every norm and the mask embedding
    perturbed so each weight matters)."""
    target = build_model("tiny-llama", V, seed=1)
    cfg = DFlashConfig.for_target(
        target, block_size=4, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, target_layers=(0, 1)
    )
    head = _perturbed(DFlashHead.from_target(target, cfg), seed=7)
    drafter, parts = DFlashDrafter(head, target), target_parts(target)
    gen = torch.Generator().manual_seed(8)
    t = 300
    seq, feats = torch.randint(0, V, (t,), generator=gen), torch.randn(t, 2 * 32, generator=gen)
    seq[269] = cfg.mask_token_id
    hidden = feats.view(t, 2, 32).transpose(0, 1)  # [layers, T, H], as the engine passes them
    with torch.no_grad():
        drafter.prefill(seq[:9], hidden[:, :8])
        for n in (9, 10, 200, 270, 290):
            drafter.accept(n, hidden[:, drafter.lean.length : n - 1])
            for gamma in range(1, cfg.block_size):
                narrow = DFlashHead(DFlashConfig.from_dict({**cfg.to_dict(), "block_size": gamma + 1}))
                narrow.load_state_dict(head.state_dict())
                want = narrow(parts, feats[None], seq[None], torch.tensor([[n - 1]]))[0, 0]
                torch.testing.assert_close(drafter.block_logits(seq, n, gamma), want, **TOL)
