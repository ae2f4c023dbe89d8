"""Teacher-forced acceptance of heads: the leading-correct count against a naive loop and against what the
speculative loop accepts at each of its steps; the analytic α of EAGLE, MTP and Medusa heads against greedy
speculative decoding's counters (replayed schedule) and a naive per-position computation."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from adaspec.decoding.acceptance import Continuations
from adaspec.decoding.generate import speculative_generate
from adaspec.drafters.eagle.drafter import EagleDrafter
from adaspec.drafters.medusa.model import MedusaDrafter, build_medusa
from adaspec.drafters.mtp.model import MTPDrafter
from adaspec.drafters.target_parts import target_parts
from adaspec.evaluation.head_acceptance import analytic_alpha, drafter_forward, head_acceptance, leading_correct
from adaspec.models import build_model
from adaspec.models.target import FINAL, features

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
    out, stats = speculative_generate(
        target,
        MedusaDrafter(heads, target),
        torch.tensor([prompt]),
        max_new_tokens=30,
        gamma=3,
        on_tokens=chunks.append,
    )
    seq = out[0].tolist()
    assert 0 < stats.accepted < stats.drafted
    with torch.no_grad():
        hidden = target(out, output_hidden_states=True).hidden_states[-1]
        logits = heads(parts, hidden, out)
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
    metrics = head_acceptance(partial(heads, parts), target, data, depth=3)
    assert 0 < metrics["alpha_depth1"] <= 1 and 0 <= metrics["accept_length"] <= 3
    assert metrics["n_steps"] == len(seq) - 3 - 2 - (len(prompt) - 2) + 1


# ---- analytic α of heads against greedy speculative decoding (as tests/evaluation/test_evaluate.py for drafts)

N_PROMPTS, MAX_NEW = 8, 32
STEPS = {"eagle": 6, "mtp": 3, "medusa": 6}  # fitting steps that leave each head's α mid-range


def _fit(drafter, target, data: Continuations, depth: int, steps: int, lr: float) -> None:
    """A few Adam steps of CE on the continuations' own tokens at every depth: a head that agrees with the
    target on part of them, so the comparisons below count both acceptances and rejections."""
    layers, forward = drafter_forward(drafter, depth)
    module = drafter.head if isinstance(drafter, EagleDrafter) else drafter.heads
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    ids = torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in data.sequences], batch_first=True)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(s) for s in data.sequences])[:, None]).long()
    _, hidden = features(target, {"input_ids": ids, "attention_mask": mask}, layers)
    hidden = torch.cat(list(hidden), -1)
    for _ in range(steps):
        logits = forward(hidden, ids)
        loss = 0.0
        for b, (seq, plen) in enumerate(zip(data.sequences, data.prompt_lengths)):
            for k in range(1, depth + 1):  # depth k at i proposes token i + k + 1
                i = torch.arange(plen - 2, len(seq) - k - 1)
                loss = loss + torch.nn.functional.cross_entropy(logits[k - 1][b, i], ids[b, i + k + 1])
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()


@pytest.fixture(scope="module")
def fitted(tiny_tokenizer):
    from adaspec import data as data_lib
    from adaspec.decoding.acceptance import greedy_continuations
    from adaspec.drafters.eagle.model import EagleConfig, EagleHead
    from adaspec.drafters.mtp.model import build_mtp

    tok = tiny_tokenizer
    target = build_model("tiny-neox", len(tok), seed=0).eval()
    target.requires_grad_(False)
    prompts = [
        data_lib.encode_prompt(ex, tok, 256 - MAX_NEW) for ex in data_lib.load_task("gsm8k", "test", limit=N_PROMPTS)
    ]
    conts = greedy_continuations(target, prompts, MAX_NEW, tok.eos_token_id, data_lib.pad_id(tok))
    drafters = {
        "eagle": EagleDrafter(EagleHead.from_target(target, EagleConfig.for_target(target), seed=0)),
        "mtp": MTPDrafter(build_mtp(target, 2), target),
        "medusa": MedusaDrafter(build_medusa(target, 2), target),
    }
    with torch.enable_grad():
        for name, d in drafters.items():
            _fit(d, target, conts, 2, steps=STEPS[name], lr=1e-2)
    return tok, target, drafters


@pytest.mark.parametrize("gamma", [1, 2])
def test_greedy_sd_replays_the_heads_teacher_forced_agreement(fitted, tmp_path, gamma):
    """Greedy SD with a head counts exactly what replaying its schedule on the head's teacher-forced proposals
    gives, and the analytic greedy α is the mean first-proposal agreement on every continuation token: at
    γ = 1 the two score the same positions (up to the bonus tokens SD never tests)."""
    import json

    from helpers import replay_greedy_sd

    from adaspec.evaluation.evaluate import EvalSettings, evaluate

    tok, target, drafters = fitted
    r = evaluate(
        target,
        drafters,
        tok,
        EvalSettings("gsm8k", n_prompts=N_PROMPTS, gamma=gamma, max_new_tokens=MAX_NEW, loss_examples=2, warmup=False),
        cache_dir=tmp_path,
    ).to_json()
    conts = Continuations.from_json(
        json.loads(open(r["target"]["continuations"]["cache_file"]).read())["continuations"]
    )
    for name, drafter in drafters.items():
        layers, forward = drafter_forward(drafter, gamma)
        totals, agree, overlap = [0, 0, 0], [], []
        with torch.inference_mode():
            for seq, plen in zip(conts.sequences, conts.prompt_lengths):
                assert len(seq) - plen == MAX_NEW and plen >= 2  # no early EOS: the schedule is the whole story
                ids = torch.tensor([seq])
                logits, hidden = features(target, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, layers)
                assert torch.equal(logits[0, plen - 1 : -1].argmax(-1), ids[0, plen:])
                depth = forward(torch.cat(list(hidden), -1), ids)

                def ok(r_: int, k: int) -> bool:  # depth k at position plen + r - 2 proposes token plen + r + k - 1
                    return int(depth[k - 1][0, plen + r_ - 2].argmax()) == seq[plen + r_ + k - 1]

                agree += [ok(i, 1) for i in range(MAX_NEW)]
                for i in range(MAX_NEW):  # the sampling α of the first proposal, position by position
                    p = torch.softmax(logits[0, plen + i - 1], -1)
                    q = torch.softmax(depth[0][0, plen + i - 2].float(), -1)
                    overlap.append(float(torch.minimum(p, q).sum()))
                for j, x in enumerate(replay_greedy_sd(ok, gamma, MAX_NEW)):
                    totals[j] += x
        d = r["drafts"][name]
        s = d["stats"]
        assert (s["drafted"], s["accepted"], s["rejections"]) == tuple(totals), name
        assert 0 < s["accepted"] and s["rejections"] > 0, name  # both outcomes occur
        a = d["analytic"]
        assert a["n_tokens"] == N_PROMPTS * MAX_NEW
        assert a["alpha_greedy"] == pytest.approx(sum(agree) / len(agree)), name
        assert a["alpha_sampling"] == pytest.approx(sum(overlap) / len(overlap), rel=1e-5), name
        if gamma == 1:
            assert 0.1 < a["alpha_greedy"] < 0.9, name  # mid-range: the comparison means something
        print(f"{name} gamma={gamma}: alpha {d['alpha']:.3f}, analytic greedy {a['alpha_greedy']:.3f}")


def test_only_heads_have_a_head_forward():
    target = build_model("tiny-neox", V, seed=0)
    assert drafter_forward(object()) is None
    assert analytic_alpha(object(), target, Continuations([[1, 2, 3]], [2])) is None
    layers, forward = drafter_forward(MedusaDrafter(build_medusa(target, 3), target), depth=2)
    assert layers == (FINAL,)
    out = forward(torch.zeros(1, 5, target.config.hidden_size), torch.zeros(1, 5, dtype=torch.long))
    assert len(out) == 2 and out[0].shape == (1, 5, V)
