"""Teacher-forced acceptance of multi-token heads: the leading-correct count against a naive loop, and
against what the speculative loop actually accepts at each of its steps."""

from __future__ import annotations

import torch

from adaspec.decoding.generate import speculative_generate
from adaspec.drafters.target_parts import target_parts
from adaspec.drafters.medusa import MedusaDrafter, build_medusa
from adaspec.evaluation.acceptance import Continuations
from adaspec.evaluation.head_acceptance import head_acceptance, leading_correct
from adaspec.models import build_model

V = 64


def test_leading_correct_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    d, lengths, plens = 3, [11, 7, 4], [3, 2, 2]
    ids = torch.randint(0, 4, (3, 11), generator=gen)
    logits = [torch.randn(3, 11, 4, generator=gen) for _ in range(d)]
    got = leading_correct(logits, ids, lengths, plens).tolist()
    want = []
    for b, (length, plen) in enumerate(zip(lengths, plens)):
        for i in range(max(plen - 2, 0), length - d - 1):
            n = 0
            while n < d and int(logits[n][b, i].argmax()) == int(ids[b, i + n + 2]):
                n += 1
            want.append(n)
    assert got == want and len(want) > 0


def test_teacher_forced_counts_are_what_decoding_accepts():
    target = build_model("tiny-gpt2", V, seed=1)  # repetitive greedy text: identity Medusa heads often hit
    heads = build_medusa(target, heads=3)
    parts = target_parts(target)
    prompt = [7, 3, 9, 1]
    chunks: list[list[int]] = []
    out, stats = speculative_generate(target, MedusaDrafter(heads, target), torch.tensor([prompt]),
                                      max_new_tokens=30, gamma=3, on_tokens=chunks.append)
    seq = out[0].tolist()
    assert 0 < stats.accepted < stats.drafted
    with torch.no_grad():
        hidden = target(out, output_hidden_states=True).hidden_states[-1]
        logits = heads(parts, hidden)
    n, checked = len(prompt), 0
    for chunk in chunks[:-1]:  # the last step may be cut by max_new_tokens
        i = n - 2
        if i + 3 + 1 < len(seq):
            k = 0
            while k < 3 and int(logits[k][0, i].argmax()) == seq[i + k + 2]:
                k += 1
            assert k == len(chunk) - 1
            checked += 1
        n += len(chunk)
    assert checked > 3
    data = Continuations([seq], [len(prompt)])
    metrics = head_acceptance(lambda h, ids: heads(parts, h), target, data, depth=3)
    assert 0 < metrics["alpha_depth1"] <= 1 and 0 <= metrics["accept_length"] <= 3
    assert metrics["n_steps"] == len(seq) - 3 - 2 - (len(prompt) - 2) + 1
