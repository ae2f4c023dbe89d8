"""CachedLM: hidden states of chosen layers from the same forward, on the KV cache, for three families."""

from __future__ import annotations

import pytest
import torch

from adaspec.errors import AdaspecError
from adaspec.models import build_model
from adaspec.models.target import FINAL, CachedLM, cache_kwarg, decoder_layers, final_norm, fit_vocab

VOCAB = 50


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-neox", "tiny-gpt2"])
def test_hidden_states_equal_transformers_output_hidden_states(preset):
    model = build_model(preset, VOCAB, seed=3)
    ids = torch.randint(VOCAB, (11,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids[None], output_hidden_states=True)
    layers = (1, 0, FINAL)  # any order; the result follows it
    hooks_before = [len(m._forward_hooks) for m in decoder_layers(model)]
    lm = CachedLM(model, VOCAB, "target", layers)
    with torch.no_grad():
        first_logits, first = lm.forward(ids[:6], keep=6)
        last_logits, rest = lm.forward(ids[6:], keep=5)
    hidden = torch.cat([first, rest], dim=1)
    assert hidden.shape == (3, 11, model.config.hidden_size if preset != "tiny-gpt2" else model.config.n_embd)
    # transformers' hidden_states[i + 1] is decoder layer i's output for i < L - 1; its last entry is the
    # last layer's output after the final norm
    assert torch.allclose(hidden[1], ref.hidden_states[1][0], atol=1e-5)
    assert torch.allclose(hidden[2], ref.hidden_states[-1][0], atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(final_norm(model)(hidden[0]), ref.hidden_states[-1][0], atol=1e-5)
    assert torch.allclose(torch.cat([first_logits, last_logits]), ref.logits[0], atol=1e-5)
    # no hooks left behind on the shared model
    assert [len(m._forward_hooks) for m in decoder_layers(model)] == hooks_before


def test_no_layers_no_hidden_and_bad_layer_refused():
    model = build_model("tiny-neox", VOCAB)
    assert CachedLM(model, VOCAB, "target").forward(torch.tensor([1, 2]))[1] is None
    with pytest.raises(AdaspecError, match="hidden layer 7 is out of range for a 2-layer target"):
        CachedLM(model, VOCAB, "target", (7,))


def test_cache_argument_follows_the_installed_signature():
    class Old(torch.nn.Module):
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            return None

    assert cache_kwarg(Old()) == "past_key_values"
    params = __import__("inspect").signature(build_model("tiny-llama", VOCAB).forward).parameters
    assert cache_kwarg(build_model("tiny-llama", VOCAB)) == ("cache" if "cache" in params else "past_key_values")


def test_fit_vocab_pads_and_slices():
    x = torch.zeros(2, 5)
    assert fit_vocab(x, 3).shape == (2, 3)
    padded = fit_vocab(x, 7)
    assert padded.shape == (2, 7) and torch.isinf(padded[:, 5:]).all()


def test_features_of_full_sequences_match_the_cached_path():
    from adaspec.models.target import features

    model = build_model("tiny-llama", VOCAB, seed=4)
    ids = torch.randint(VOCAB, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits, hidden = features(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, (0, FINAL))
        _, cached = CachedLM(model, VOCAB, "t", (0, FINAL)).forward(ids[1], keep=9)
    assert logits.shape == (2, 9, VOCAB) and hidden.shape == (2, 2, 9, 32)
    assert torch.allclose(hidden[:, 1], cached, atol=1e-5)
