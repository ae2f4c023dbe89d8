"""EAGLE heads: config defaults, shapes, the training-time-test unroll against chained inference, and the
draft-vocabulary maps."""

from __future__ import annotations

import pytest
import torch

from adaspec import AdaspecError
from adaspec.drafters.eagle.draft_vocab import frequent_tokens, restrict_to_draft, to_target_space, vocab_maps
from adaspec.drafters.eagle.drafter import LeanEagle
from adaspec.drafters.eagle.model import EagleConfig, EagleHead
from adaspec.drafters.eagle.training import (
    feature_regression_loss,
    shift_steps,
    step_weights,
    unroll,
    unrolled_logits,
    unrolled_mask,
    unrolled_targets,
)
from adaspec.models import build_model
from adaspec.models.target import default_aux_layers

from .feature_helpers import causal_attend

V = 64


def small_config(variant: str = "eagle3", draft_vocab: int = V, **kw) -> EagleConfig:
    base = dict(
        hidden_size=16,
        target_hidden_size=16,
        vocab_size=V,
        draft_vocab_size=draft_vocab,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=24,
        target_num_layers=6,
        variant=variant,
    )
    base.update(kw)
    return EagleConfig(**base)


def random_head(cfg: EagleConfig, seed: int = 0, draft_tokens: torch.Tensor | None = None) -> EagleHead:
    torch.manual_seed(seed)
    head = EagleHead(cfg).eval()
    with torch.no_grad():
        for p in head.parameters():  # norms away from 1 so every weight matters
            p.add_(torch.randn_like(p) * 0.3)
    if draft_tokens is not None:
        head.set_draft_vocab(draft_tokens)
    return head


def features(cfg: EagleConfig, b: int, t: int, seed: int) -> torch.Tensor:
    width = len(cfg.hidden_layers) * cfg.target_hidden_size
    return torch.randn(b, t, width, generator=torch.Generator().manual_seed(seed))


def chained_logits(head: EagleHead, feats: torch.Tensor, ids: torch.Tensor, p: int, steps: int) -> list:
    """Inference as the drafter runs it (LeanEagle, with its KV cache): real pairs 0..p, then `steps - 1`
    draft pairs fed the head's own output and the true next tokens. Entry j predicts token x_{p+2+j}."""
    lean = LeanEagle(head)
    hidden = lean.step(ids[1 : p + 2], head.project(feats[: p + 1]))[-1:]
    out = [lean.logits(hidden)[-1]]
    for j in range(1, steps):
        hidden = lean.step(ids[p + 1 + j : p + 2 + j], hidden)
        out.append(lean.logits(hidden)[-1])
    return out


# ---- config ----


def test_default_aux_layers_follow_the_reference_and_clamp_for_shallow_targets():
    for layers in (8, 32, 80):  # reference capture ids (2, L//2, L-3) are inputs of those layers
        assert tuple(i + 1 for i in default_aux_layers(layers)) == (2, layers // 2, layers - 3)
    assert default_aux_layers(2) == (0, 0, 0)
    assert default_aux_layers(3) == (0, 1, 1)
    assert default_aux_layers(4) == (0, 1, 2)
    assert default_aux_layers(6) == (1, 2, 3)
    with pytest.raises(AdaspecError, match="at least one"):
        default_aux_layers(0)


def test_config_checks_and_round_trip():
    cfg = small_config(aux_layers=(0, 2, 4))
    assert EagleConfig.from_dict(cfg.to_dict()) == cfg
    assert small_config("eagle1").hidden_layers == (-1,)
    with pytest.raises(AdaspecError, match="exactly 3"):
        small_config(aux_layers=(0, 1))
    with pytest.raises(AdaspecError, match="out of range"):
        small_config(aux_layers=(0, 1, 6))
    with pytest.raises(AdaspecError, match="final normed"):
        small_config("eagle1", aux_layers=(0, 1, 2))
    with pytest.raises(AdaspecError, match="reduced vocabulary"):
        small_config("eagle1", draft_vocab=32)
    with pytest.raises(AdaspecError, match="must equal"):
        small_config("eagle1", hidden_size=32, num_heads=4)
    with pytest.raises(AdaspecError, match="unknown EAGLE variant"):
        small_config("medusa")


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-neox", "tiny-gpt2"])
@pytest.mark.parametrize("variant", ["eagle3", "eagle1"])
def test_head_from_target_shapes(preset, variant):
    target = build_model(preset, V, seed=1)
    head = EagleHead.from_target(target, EagleConfig.for_target(target, variant))
    h = target.config.hidden_size if preset != "tiny-gpt2" else target.config.n_embd
    assert torch.equal(head.embed_tokens.weight, target.get_input_embeddings().weight)
    assert not head.embed_tokens.weight.requires_grad
    if variant == "eagle3":
        assert head.fc.weight.shape == (h, 3 * h) and head.fc.bias is None
        assert head.midlayer.self_attn.q_proj.weight.shape[1] == 2 * h
    else:
        assert head.fc.weight.shape == (h, 2 * h) and head.fc.bias is None  # vLLM's EAGLE-1 fc has none
        assert torch.equal(head.lm_head.weight, target.get_output_embeddings().weight)
        assert not hasattr(head.layers[0], "input_layernorm")
    ids = torch.randint(0, V, (2, 7))
    out = unroll(head, torch.randn(2, 7, len(head.config.hidden_layers) * h), ids, 3)
    assert out.logits.shape == (3, 2, 7, V) and out.hidden.shape == (3, 2, 7, h)


def test_reduced_width_head_trains_its_own_embedding():
    target = build_model("tiny-llama", V, seed=1)
    cfg = EagleConfig.for_target(target, hidden_size=16, num_heads=2, num_kv_heads=2, intermediate_size=40)
    head = EagleHead.from_target(target, cfg)
    assert cfg.target_hidden_size == 32 and head.fc.weight.shape == (16, 96)
    assert head.embed_tokens.weight.requires_grad


# ---- training-time test == chained inference ----


@pytest.mark.parametrize("variant,draft_vocab", [("eagle3", V), ("eagle3", 40), ("eagle1", V)])
def test_unroll_equals_chained_inference_at_every_step(variant, draft_vocab):
    cfg = small_config(variant, draft_vocab)
    perm = torch.randperm(V, generator=torch.Generator().manual_seed(0))
    head = random_head(cfg, seed=1, draft_tokens=perm[:draft_vocab].sort().values if draft_vocab < V else None)
    b, t, steps = 1, 11, 4
    feats, ids = features(cfg, b, t, seed=2), torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(3))
    # float64 (but for the unroll's float32 softmax): the decode path rounds differently from the unroll, and
    # EAGLE-1's unnormed feedback through these random weights amplifies float32 rounding ~20x per step
    head, feats = head.double(), feats.double()
    with torch.no_grad():
        logits = unrolled_logits(head, feats, ids, steps)
        for p in range(t - 1):
            n = min(steps, t - 1 - p)
            chain = chained_logits(head, feats[0], ids[0], p, n)
            for j in range(n):  # index p+1 of step j predicts x_{p+2+j}
                torch.testing.assert_close(logits[j, 0, p + 1], chain[j], rtol=1e-4, atol=1e-4)


def test_unroll_step0_equals_a_plain_causal_forward():
    cfg = small_config()
    head = random_head(cfg, seed=4)
    feats, ids = features(cfg, 2, 9, seed=5), torch.randint(0, V, (2, 9))
    with torch.no_grad():
        ref = head.logits(head.step(ids[:, 1:], head.project(feats[:, :-1]), torch.arange(8), causal_attend))
        torch.testing.assert_close(unrolled_logits(head, feats, ids, 1)[0, :, 1:], ref)


def test_unroll_with_right_padding_matches_each_sequence_alone():
    cfg = small_config()
    head = random_head(cfg, seed=6)
    lengths, t, steps = (9, 5), 9, 3
    feats, ids = features(cfg, 2, t, seed=7), torch.randint(0, V, (2, t))
    mask = torch.tensor([[1] * n + [0] * (t - n) for n in lengths])
    with torch.no_grad():
        batched = unroll(head, feats, ids, steps, mask)
        valid = unrolled_mask(mask, steps)
        for i, n in enumerate(lengths):
            alone = unroll(head, feats[i : i + 1, :n], ids[i : i + 1, :n], steps)
            for j in range(steps):
                rows = valid[j, i, :n]
                assert rows.sum() == n - 1 - j  # indices 1 .. n-1-j
                torch.testing.assert_close(
                    batched.logits[j, i, :n][rows], alone.logits[j, 0][rows], rtol=1e-5, atol=1e-5
                )


def test_alignment_helpers():
    x = torch.arange(10).view(2, 5)
    s = shift_steps(x, 3, fill=-1)
    assert s[0].tolist() == x.tolist()
    assert s[2, 0].tolist() == [2, 3, 4, -1, -1]
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    assert unrolled_mask(mask, 2)[:, 0].int().tolist() == [[0, 1, 1, 1, 0], [0, 1, 1, 0, 0]]
    torch.testing.assert_close(step_weights(4), torch.tensor([1.0, 0.8, 0.64, 0.512]))
    head = random_head(small_config(draft_vocab=3), draft_tokens=torch.tensor([2, 5, 7]))
    target_logits = torch.randn(1, 4, V)
    aligned = unrolled_targets(head, target_logits, 2)
    assert aligned.shape == (2, 1, 4, 3)
    assert torch.equal(aligned[1, 0, 0], target_logits[0, 1, [2, 5, 7]])
    assert torch.equal(aligned[1, 0, 3], torch.zeros(3))


def test_feature_regression_loss():
    feats = torch.randn(2, 6, 16)
    hidden = shift_steps(feats, 3)
    mask = unrolled_mask(torch.ones(2, 6), 3)
    assert float(feature_regression_loss(hidden, feats, mask)) == 0.0
    assert float(feature_regression_loss(hidden + 1.0, feats, mask)) == pytest.approx(0.5)  # smooth-L1 at 1


def test_unroll_bad_inputs():
    head = random_head(small_config())
    with pytest.raises(AdaspecError, match="at least 1 step"):
        unroll(head, torch.randn(1, 4, 48), torch.zeros(1, 4, dtype=torch.long), 0)
    with pytest.raises(AdaspecError, match="do not match"):
        unroll(head, torch.randn(1, 5, 48), torch.zeros(1, 4, dtype=torch.long), 2)
    with pytest.raises(AdaspecError, match="at least 2 tokens"):
        unroll(head, torch.randn(1, 1, 48), torch.zeros(1, 1, dtype=torch.long), 2)


# ---- draft vocabulary ----


def test_frequent_tokens_and_maps():
    data = [[5, 5, 9, 3], [9, 5, 60], [3]]
    assert frequent_tokens(data, 3, V).tolist() == [3, 5, 9]  # 5 x3, 9 x2, 3 x2 (tie -> smaller id)
    assert frequent_tokens(data, 2, V).tolist() == [3, 5]
    assert frequent_tokens(data, 6, V).tolist() == [0, 1, 3, 5, 9, 60]  # unseen smallest ids fill up
    with pytest.raises(AdaspecError, match="outside"):
        frequent_tokens([[V]], 2, V)
    d2t, t2d = vocab_maps(torch.tensor([3, 5, 9]), 12)
    assert d2t.tolist() == [3, 4, 7]  # target = draft + offset
    assert (torch.arange(3) + d2t).tolist() == [3, 5, 9]
    assert t2d.nonzero().flatten().tolist() == [3, 5, 9] and t2d.dtype == torch.bool
    for bad in ([5, 3], [3, 3], [-1, 2], [2, 12]):
        with pytest.raises(AdaspecError):
            vocab_maps(torch.tensor(bad), 12)


def test_draft_distributions_live_in_target_space():
    d2t, _ = vocab_maps(torch.tensor([1, 4, 6]), 8)
    q = torch.softmax(torch.randn(2, 3), -1)
    full = to_target_space(q, d2t, 8)
    assert full.shape == (2, 8) and torch.equal(full[:, [1, 4, 6]], q)
    assert float(full[:, [0, 2, 3, 5, 7]].abs().sum()) == 0.0
    torch.testing.assert_close(full.sum(-1), torch.ones(2))
    assert torch.equal(restrict_to_draft(full, d2t), q)
    head = random_head(small_config(draft_vocab=3, vocab_size=8), draft_tokens=torch.tensor([1, 4, 6]))
    assert head.draft_to_target(torch.tensor([0, 1, 2])).tolist() == [1, 4, 6]
    assert head.t2d.nonzero().flatten().tolist() == [1, 4, 6]
