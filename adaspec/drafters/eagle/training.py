"""Training-time test (EAGLE-3): unroll n draft steps at every position at once, each step fed the head's
own previous output as at inference, so training sees the features the head will really read.

This follows SpecForge's `OnlineEagle3Model` (specforge/algorithms/eagle3/model.py, after SafeAILab/EAGLE
eagle/traineagle3/cnets.py) rather than a plain causal re-run of the layer: at step j the query of head
position p attends the step-0 keys of positions <= p (the real target features) plus the keys that the
steps 1..j produced at position p itself, with RoPE position p + j. That is exactly the attention of the
chained inference where the draft's own pairs sit at positions p+1..p+j of its KV cache, so step j of the
unroll equals the j-th chained draft step with teacher-forced tokens (tests/drafters/test_eagle.py checks
it) — a simpler causal unroll over the shifted sequence would let step j attend other positions' own
outputs, which inference never does.

Alignment of everything returned, with input_ids x_0..x_{T-1} and target_hidden h_0..h_{T-1} (the target's
features after reading x_0..x_t): index t of step j is the head's prediction of token x_{t+1+j} from the
pair (h_{t-1}, x_t) unrolled j times — the token the target's logits[:, t+j] predict. Index 0 (no h_{-1})
is never valid. `shift_steps` aligns any per-position tensor (target logits, features, masks) the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from adaspec.distill.teacher import TopK
from adaspec.drafters.common import repeat_kv
from adaspec.drafters.eagle.draft_vocab import draft_ids, restrict_to_draft, restrict_topk_to_draft
from adaspec.drafters.eagle.model import EagleHead
from adaspec.drafters.family import HeadForward
from adaspec.errors import AdaspecError


@dataclass
class Unrolled:
    logits: Tensor  # [steps, B, T, V_draft]
    hidden: Tensor  # [steps, B, T, H]: the layer's outputs (before the final norm)


class _UnrollAttention:
    """The TTT attention: causal over step 0's keys, plus each later step's key at the query's own position."""

    def __init__(self, key_mask: Tensor | None):
        self.key_mask = key_mask
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.mask0: Tensor | None = None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        groups = q.shape[1] // k.shape[1]
        self.keys.append(repeat_kv(k, groups))
        self.values.append(repeat_kv(v, groups))
        t = q.shape[2]
        if self.mask0 is None:
            mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
            if self.key_mask is not None:  # padded keys are hidden; a query always sees itself
                mask = (mask & self.key_mask[:, None, None, :]) | torch.eye(t, dtype=torch.bool, device=q.device)
            self.mask0 = mask
        scale = 1.0 / math.sqrt(q.shape[-1])
        scores = [(q @ self.keys[0].transpose(-1, -2) * scale).masked_fill(~self.mask0, -math.inf)]
        scores += [(q * ki).sum(-1, keepdim=True) * scale for ki in self.keys[1:]]
        weights = torch.softmax(torch.cat(scores, dim=-1), dim=-1, dtype=torch.float32).to(q.dtype)
        out = weights[..., :t] @ self.values[0]
        for i, vi in enumerate(self.values[1:]):
            out = out + weights[..., t + i : t + i + 1] * vi
        return out


def shift_steps(x: Tensor, steps: int, fill: float | bool = 0) -> Tensor:
    """[B, T, ...] -> [steps, B, T, ...] with out[j][:, t] = x[:, t + j] (`fill` past the end)."""
    t = x.shape[1]
    out = x.new_full((steps, *x.shape), fill)
    for j in range(min(steps, t)):
        out[j, :, : t - j] = x[:, j:]
    return out


def unroll(
    head: EagleHead, target_hidden: Tensor, input_ids: Tensor, steps: int, attention_mask: Tensor | None = None
) -> Unrolled:
    """Run `steps` TTT steps. target_hidden [B, T, layers * H_target] (EAGLE-3: the aux layers concatenated in
    the head's order; EAGLE-1: the final normed state), input_ids [B, T], attention_mask [B, T] (1 = real
    token, right padding). Returns logits and hidden aligned as the module docstring says."""
    if steps < 1:
        raise AdaspecError(f"the training-time test needs at least 1 step, got {steps}")
    b, t = input_ids.shape
    if target_hidden.shape[:2] != (b, t):
        raise AdaspecError(f"target hidden states {tuple(target_hidden.shape)} do not match input ids {(b, t)}")
    if t < 2:
        raise AdaspecError("the training-time test needs sequences of at least 2 tokens")
    # head position p = pair (h_p, x_{p+1}); it is written back at index p + 1
    hidden = head.project(target_hidden[:, :-1])
    key_mask = None
    if attention_mask is not None:
        real = attention_mask.bool()
        key_mask = real[:, :-1] & real[:, 1:]
    tokens = shift_steps(input_ids[:, 1:], steps)  # step j reads x_{p+1+j} (teacher-forced)
    positions = torch.arange(t - 1, device=input_ids.device)
    attend = _UnrollAttention(key_mask)
    logits, outputs = [], []
    for j in range(steps):
        hidden = head.step(tokens[j], hidden, positions + j, attend)
        outputs.append(hidden)
        logits.append(head.logits(hidden))
    return Unrolled(_from_index_1(logits), _from_index_1(outputs))


def eagle_forward(head: EagleHead, depth: int) -> HeadForward:
    """A head's `depth` unroll steps as the depths of adaspec.evaluation.head_acceptance (unroll step j is
    depth j+1: index t of step j predicts token t+1+j from the features of t-1, so depth j+1 at position i is
    unroll index i+1), its draft-vocabulary logits scattered over the target's vocabulary (-inf elsewhere, so
    argmax and softmax are the drafter's)."""

    def forward(hidden: Tensor, ids: Tensor) -> list[Tensor]:
        logits = unroll(head, hidden, ids, depth).logits.float()
        full = logits.new_full((*logits.shape[:-1], head.config.vocab_size), float("-inf"))
        full = full.index_copy_(-1, draft_ids(head.d2t), logits)
        return [full[j][:, 1:] for j in range(depth)]

    return forward


def _from_index_1(per_step: list[Tensor]) -> Tensor:
    """Stack per-step [B, T-1, X] head outputs as [steps, B, T, X], zeros at index 0 (no pair there)."""
    return torch.nn.functional.pad(torch.stack(per_step), (0, 0, 1, 0))


def unrolled_logits(
    head: EagleHead, target_hidden: Tensor, input_ids: Tensor, steps: int, attention_mask: Tensor | None = None
) -> Tensor:
    """[steps, B, T, V_draft] draft logits; see `unroll`."""
    return unroll(head, target_hidden, input_ids, steps, attention_mask).logits


def unrolled_mask(attention_mask: Tensor, steps: int) -> Tensor:
    """[steps, B, T] bool: where step j's prediction at index t has a target position (t + j) that is a real
    token. AND it with `shift_steps(response_mask, steps)` to train on response tokens only."""
    valid = shift_steps(attention_mask.bool(), steps, False)
    valid[:, :, 0] = False
    return valid


def unrolled_targets(head: EagleHead, target_logits: Tensor | TopK, steps: int) -> Tensor | TopK:
    """The target's logits [B, T, V] aligned with `unrolled_logits` and restricted to the draft vocabulary:
    [steps, B, T, V_draft]. Softmax of these is the target's distribution renormalised over the draft
    vocabulary (SpecForge's `target_p`), so any divergence in adaspec's losses applies step by step
    (`distill.teacher.divergence`). A cached top-K teacher [B, T, K] comes back the same way, as a TopK
    [steps, B, T, K] over the draft vocabulary (`draft_vocab.restrict_topk_to_draft`)."""
    if isinstance(target_logits, Tensor):
        return shift_steps(restrict_to_draft(target_logits, head.d2t), steps)
    reduced = not bool(head.t2d.all())  # the full vocabulary needs no mapping (nor a sink column)
    ids, lps = target_logits.ids, target_logits.logprobs
    if reduced:
        ids, lps = restrict_topk_to_draft(ids, lps, head.t2d)
    return TopK(shift_steps(ids, steps), shift_steps(lps, steps), sink=reduced)


def step_weights(steps: int, decay: float = 0.8, device: torch.device | str | None = None) -> Tensor:
    """EAGLE-3 / SpecForge step weights decay**j, j = 0..steps-1."""
    return decay ** torch.arange(steps, dtype=torch.float32, device=device)


def feature_regression_loss(hidden: Tensor, target_feature: Tensor, mask: Tensor) -> Tensor:
    """EAGLE-1's regression term: smooth-L1 between the head's outputs `hidden` [steps, B, T, H] and the
    target's feature they stand for (the feature of position t + j, the same shift as the logits),
    averaged over `mask` [steps, B, T]. The EAGLE-1 reference weighs it 1.0 against 0.1 for the token loss."""
    goal = shift_steps(target_feature.to(hidden.dtype), hidden.shape[0])
    per = torch.nn.functional.smooth_l1_loss(hidden, goal, reduction="none").mean(-1)
    m = mask.to(per.dtype)
    return (per * m).sum() / m.sum().clamp_min(1)
