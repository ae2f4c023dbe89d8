"""Exact distributions and a chi-square test for the losslessness tests of every drafter."""

from __future__ import annotations

import torch
from scipy.stats import chisquare
from transformers import AutoModelForCausalLM, GPTNeoXConfig
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper


def tiny_neox(seed: int, vocab: int):
    """A 1-layer GPT-NeoX with a sharpened head (confident, so few tokens carry the mass)."""
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        rotary_pct=0.25,
        tie_word_embeddings=False,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)
    return model


def exact_joint(model, prompt: list[int], vocab: int, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """P(x1, x2, x3 | prompt) under the model's temperature/top-p sampling, via transformers' warpers."""
    pairs = torch.cartesian_prod(torch.arange(vocab), torch.arange(vocab))
    batch = torch.cat([torch.tensor(prompt).expand(len(pairs), -1), pairs], dim=1)
    with torch.no_grad():
        logits = model(batch).logits[:, -3:].float()
    warp = [TemperatureLogitsWarper(temperature)] + ([TopPLogitsWarper(top_p)] if top_p < 1 else [])
    probs = []
    for pos in range(3):
        scores = logits[:, pos]
        for w in warp:
            scores = w(batch, scores)
        probs.append(torch.softmax(scores, -1))
    p1 = probs[0][0]  # same for every row
    p2 = probs[1].view(vocab, vocab, vocab)[:, 0]  # [x1, x2], independent of the x2 in the batch row
    p3 = probs[2].view(vocab, vocab, vocab)  # [x1, x2, x3]
    return (p1[:, None, None] * p2[:, :, None] * p3).double()


def chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of `counts` under `probs` (rare cells pooled; 0 for a sample `probs` cannot produce)."""
    n = counts.sum()
    expected = probs.flatten() * n
    observed = counts.flatten().double()
    if observed[expected == 0].sum() > 0:
        return 0.0  # a sample the distribution cannot produce
    big = expected >= 5  # pool the rare cells so the chi-square approximation holds
    obs, exp = observed[big], expected[big]
    if expected[~big].sum() > 0:
        obs = torch.cat([obs, observed[~big].sum().view(1)])
        exp = torch.cat([exp, expected[~big].sum().view(1)])
    return float(chisquare(obs.numpy(), exp.numpy() * (obs.sum() / exp.sum()).item()).pvalue)
