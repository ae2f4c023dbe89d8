"""The Drafter seam: the engine hands a feature drafter exactly the target's hidden states of the
accepted positions, from the verification forward, and stays lossless for any drafter."""

from __future__ import annotations

import pytest
import torch

from adaspec.decoding.generate import speculative_generate
from adaspec.drafters import DRAFTERS, Drafter, LMDrafter
from adaspec.errors import AdaspecError
from adaspec.models import build_model
from adaspec.models.target import FINAL

VOCAB = 40


class RecordingDrafter:
    """Proposes pseudo-random tokens; checks every feature it is given against a fresh target forward."""

    hidden_layers = (0, FINAL)
    max_gamma = None

    def __init__(self, target, seed: int = 0):
        self.target, self.g = target, torch.Generator().manual_seed(seed)
        self.features: torch.Tensor | None = None  # [layers, n-1, H] of seq[:n-1]

    def prefill(self, prompt, hidden):
        self.features = hidden

    def propose(self, seq, n, gamma, sampling):
        self.check(seq, n - 1)
        x = torch.randint(VOCAB, (gamma,), generator=self.g)
        if sampling.greedy:
            return x, None
        return x, torch.full((gamma, VOCAB), 1.0 / VOCAB)

    def accept(self, n, hidden):
        self.features = torch.cat([self.features, hidden], dim=1) if self.features is not None else hidden

    def check(self, seq, length):
        if length == 0:
            assert self.features is None
            return
        with torch.no_grad():
            ref = self.target(input_ids=seq[None, :length], output_hidden_states=True).hidden_states
        assert self.features.shape[1] == length
        assert torch.allclose(self.features[0], ref[1][0], atol=1e-5)
        assert torch.allclose(self.features[1], ref[-1][0], atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-neox", "tiny-gpt2"])
@pytest.mark.parametrize("gamma", [1, 3])
def test_feature_drafter_gets_the_accepted_positions_hidden_states(preset, gamma):
    target = build_model(preset, VOCAB, seed=2)
    ids = torch.randint(1, VOCAB, (1, 5), generator=torch.Generator().manual_seed(gamma))
    drafter = RecordingDrafter(target)
    assert isinstance(drafter, Drafter)
    out, stats = speculative_generate(target, drafter, ids, max_new_tokens=20, gamma=gamma)
    expected = target.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20, eos_token_id=None, pad_token_id=0
    )
    assert torch.equal(out, expected)
    drafter.check(out[0], out.shape[1] - 1)  # after the last step: every position but the newest token


def test_sampling_with_a_drafter_runs_and_gamma_limit_is_enforced():
    target = build_model("tiny-neox", VOCAB, seed=2)
    drafter = RecordingDrafter(target)
    out, stats = speculative_generate(
        target, drafter, torch.tensor([[3, 4]]), max_new_tokens=10, gamma=2, temperature=1.0, seed=0
    )
    assert out.shape[1] == 12 and stats.drafted > 0
    drafter.max_gamma = 2
    with pytest.raises(AdaspecError, match="at most 2 tokens per step"):
        speculative_generate(target, drafter, torch.tensor([[3]]), max_new_tokens=4, gamma=3)


def test_drafter_names():
    assert DRAFTERS["lm"] is LMDrafter
    assert isinstance(LMDrafter(build_model("tiny-gpt2", VOCAB), VOCAB), Drafter)
