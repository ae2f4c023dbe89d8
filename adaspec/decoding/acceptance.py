"""Analytic acceptance: how often a draft would be accepted, from parallel forwards instead of decoding.

On the target's own continuation x of a prompt, position t is accepted under greedy SD when
argmax q_t = argmax p_t, and under sampling SD with probability Σ_v min(p_t(v), q_t(v)) = 1 − TVD(p_t, q_t)
(Leviathan et al., 2023). Averaging over response positions gives α without running the sequential
decoder, so many drafts can be compared at the cost of one parallel forward each.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from transformers import PreTrainedModel

from adaspec import data as data_lib
from adaspec.models import shared_vocab

if TYPE_CHECKING:
    from transformers import GenerationMixin


@dataclass
class Continuations:
    """Prompts with the target's greedy continuations, kept as token ids."""

    sequences: list[list[int]]
    prompt_lengths: list[int]

    def __post_init__(self) -> None:
        if len(self.sequences) != len(self.prompt_lengths):
            raise ValueError("one prompt length per sequence")

    def to_json(self) -> dict:
        return {"sequences": self.sequences, "prompt_lengths": self.prompt_lengths}

    @classmethod
    def from_json(cls, obj: dict) -> Continuations:
        return cls(obj["sequences"], obj["prompt_lengths"])


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return ids, mask


@torch.inference_mode()
def generate_continuations(
    model: PreTrainedModel,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int = 0,
    batch_size: int = 16,
    temperature: float = 0.0,
) -> Continuations:
    """The model's continuations (batched, left-padded, greedy at temperature 0), cut after the first EOS."""
    device = next(model.parameters()).device
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False}
    )
    sequences: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids, mask = _left_pad(chunk, pad_token_id)
        # a causal LM: transformers' PreTrainedModel itself has no `generate` (GenerationMixin adds it)
        out = cast("GenerationMixin", model).generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **sampling,
        )
        for prompt, row in zip(chunk, out[:, ids.shape[1] :].tolist()):
            if eos_token_id is not None and eos_token_id in row:
                row = row[: row.index(eos_token_id) + 1]
            sequences.append(list(prompt) + row)
    return Continuations(sequences, [len(p) for p in prompts])


def greedy_continuations(
    target: PreTrainedModel,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int = 0,
    batch_size: int = 16,
) -> Continuations:
    """The target's greedy continuations: what greedy speculative decoding must reproduce."""
    return generate_continuations(target, prompts, max_new_tokens, eos_token_id, pad_token_id, batch_size)


def _scored_batches(
    data: Continuations, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Right-padded (ids, attention mask, scored positions [B, T]) batches of the continuations.

    The scored positions are `data.response_mask` of the continuation tokens (logits at t predict token
    t+1: positions plen-1 .. len-2, so every continuation token is predicted once)."""
    for start in range(0, len(data.sequences), batch_size):
        items: list[data_lib.Item] = [
            {"input_ids": seq, "labels": [], "prompt_length": p}  # with_response sets the labels
            for seq, p in zip(
                data.sequences[start : start + batch_size], data.prompt_lengths[start : start + batch_size]
            )
        ]
        batch = data_lib.collate([data_lib.with_response(it, it["input_ids"]) for it in items], 0)
        score = torch.nn.functional.pad(data_lib.response_mask(batch["labels"]), (0, 1), value=False)
        if score.any():
            yield batch["input_ids"].to(device), batch["attention_mask"].to(device), score.to(device)


def agreement_and_overlap(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> tuple[int, float]:
    """Over rows of target and draft logits [N, V]: how many argmaxes agree (greedy acceptances), and the
    summed Σ_v min(p, q) at `temperature` (sampling acceptance probabilities)."""
    agree = int((p_logits.argmax(-1) == q_logits.argmax(-1)).sum())
    p = torch.softmax(p_logits / temperature, -1)
    q = torch.softmax(q_logits / temperature, -1)
    return agree, float(torch.minimum(p, q).sum())


@torch.inference_mode()
def analytic_alpha(
    target: PreTrainedModel, draft: PreTrainedModel, data: Continuations, batch_size: int = 16, temperature: float = 1.0
) -> dict[str, float]:
    """Mean greedy and sampling acceptance over the continuation positions of `data`.

    Returns alpha_greedy (top-1 agreement), alpha_sampling (mean Σ min(p, q) at `temperature`) and
    n_tokens, the number of scored positions (every generated token, EOS included).
    """
    device = next(target.parameters()).device
    vocab = shared_vocab(target, draft)
    agree = overlap = 0.0
    n = 0
    for ids, mask, score in _scored_batches(data, batch_size, device):
        p_logits = target(input_ids=ids, attention_mask=mask).logits[..., :vocab][score].float()
        q_logits = draft(input_ids=ids, attention_mask=mask).logits[..., :vocab][score].float()
        a, o = agreement_and_overlap(p_logits, q_logits, temperature)
        agree, overlap, n = agree + a, overlap + o, n + int(score.sum())
    if n == 0:
        return {"alpha_greedy": float("nan"), "alpha_sampling": float("nan"), "n_tokens": 0}
    return {"alpha_greedy": agree / n, "alpha_sampling": overlap / n, "n_tokens": n}


@torch.inference_mode()
def greedy_agreement(draft: PreTrainedModel, data: Continuations, batch_size: int = 16) -> float:
    """Greedy α without a target forward: on greedy continuations the target's argmax is the next token."""
    device = next(draft.parameters()).device
    agree, n = 0, 0
    for ids, mask, score in _scored_batches(data, batch_size, device):
        pred = draft(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        agree += int((pred[:, :-1] == ids[:, 1:])[score[:, :-1]].sum())
        n += int(score.sum())
    return agree / n if n else float("nan")
