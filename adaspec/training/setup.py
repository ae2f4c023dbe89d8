"""Set-up every training recipe shares: the validation continuations a run measures acceptance on, the
target's own responses as training data, the token budget of an AdaSPEC run matched to its KD reference, and
the validation cross-entropy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import PreTrainedModel

from adaspec import data as data_lib
from adaspec.decoding.acceptance import Continuations, generate_continuations, greedy_continuations
from adaspec.distill.cache_store import items_fingerprint
from adaspec.io import atomic_write_json
from adaspec.training.loop import planned_steps
from adaspec.training.options import TrainOptions
from adaspec.training.run_fingerprint import Run


def matched_budget(n_items: int, batch_size: int, grad_accum: int, epochs: float, k: float,
                   by: Literal["batch", "epochs"]) -> tuple[int, float, int | None]:
    """(global batch, epochs, optimizer steps or None) of a run at fraction k that trains on as many tokens
    as KD on every token at `batch_size` and `epochs`.

    "epochs": epochs / k at the same batch, so 1/k times KD's steps. "batch": batch / k (rounded) and
    epochs / k, at exactly KD's optimizer steps (the authors' scripts, yuezhouhu/adaspec branches
    gsm8k-target-pythia-1.4b-{ref,draft}-pythia-31m-3epoch: 8 x 2 sequences for 3 epochs against 8 x 5
    for 7.5, about 1,401 steps each). The steps are fixed rather than left to epochs / k, which differs
    from KD's count by the incomplete batches each epoch drops.
    """
    if by == "epochs":
        return batch_size, epochs / k, None
    return max(1, round(batch_size / k)), epochs / k, planned_steps(n_items, batch_size, grad_accum, epochs)


@torch.no_grad()
def generate_items(model: PreTrainedModel, items: list[dict], max_new_tokens: int, max_length: int,
                   temperature: float, eos_token_id: int | None, seed: int) -> list[dict]:
    """Replace the responses of `items` by the model's own continuations of their prompts."""
    was_training = model.training
    model.eval()
    prompts = [it["input_ids"][: it["prompt_length"]] for it in items]
    room = max(1, min(max_new_tokens, max_length - max(len(p) for p in prompts)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = generate_continuations(model, prompts, room, eos_token_id, batch_size=len(prompts),
                                     temperature=temperature)
    model.train(was_training)
    return [data_lib.with_response(it, seq) for it, seq in zip(items, gen.sequences)]


def json_cached(path: Path, make: Callable[[], Continuations]) -> Continuations:
    if path.exists():
        return Continuations.from_json(json.loads(path.read_text()))
    value = make()
    atomic_write_json(path, value.to_json(), indent=None)
    return value


def target_response_items(target: PreTrainedModel, items: list[dict], opts: TrainOptions, run: Run,
                          accelerator: Accelerator, eos: int | None) -> list[dict]:
    """`items` with the target's own continuations of their prompts as responses (generated once, kept in
    <output>/target_responses-<key>.json, named by the target and settings that made them). `opts` carries
    gen_max_new_tokens, gen_temperature, max_length, seed."""
    def target_responses() -> Continuations:
        seqs: list[list[int]] = []
        for s in range(0, len(items), opts.batch_size):
            made = generate_items(target, items[s:s + opts.batch_size], opts.gen_max_new_tokens,
                                  opts.max_length, opts.gen_temperature, eos, opts.seed + s)
            seqs += [it["input_ids"] for it in made]
        return Continuations(seqs, [it["prompt_length"] for it in items])

    path = run.cache_name("target_responses", target=run.fingerprint["target"], items=items_fingerprint(items),
                          batch_size=opts.batch_size, seed=opts.seed, max_new_tokens=opts.gen_max_new_tokens,
                          max_length=opts.max_length, temperature=opts.gen_temperature)
    # the main process writes the file, the others then read it (no two writers, no half-read file)
    with accelerator.main_process_first():
        made = json_cached(path, target_responses)
    return [data_lib.with_response(it, seq) for it, seq in zip(items, made.sequences)]


def val_continuations(target: PreTrainedModel, prompts: list[list[int]], max_new_tokens: int, eos: int | None,
                      run: Run, accelerator: Accelerator) -> Continuations:
    """The target's greedy continuations of the validation prompts, cached in the output folder under a
    name keyed by the target's fingerprint and the prompts (a different target never reuses them)."""
    path = run.cache_name("val_continuations", target=run.fingerprint["target"], max_new_tokens=max_new_tokens,
                          eos=eos, prompts=hashlib.sha256(json.dumps(prompts).encode()).hexdigest())
    with accelerator.main_process_first():
        return json_cached(path, lambda: greedy_continuations(target, prompts, max_new_tokens, eos))


def cross_entropy_loss(model: torch.nn.Module, batch: dict, step: int
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Per-token cross-entropy on the response positions (a TokenLoss for the training loop)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    per_token = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")
    return per_token, data_lib.response_mask(batch["labels"]), {}


@torch.inference_mode()


def validation_loss(model: PreTrainedModel, items: list[dict], pad_id: int, batch_size: int = 16) -> float:
    """Mean cross-entropy per response token."""
    device = next(model.parameters()).device
    total, n = 0.0, 0
    for start in range(0, len(items), batch_size):
        batch = {k: v.to(device) for k, v in data_lib.collate(items[start:start + batch_size], pad_id).items()}
        per_token, mask, _ = cross_entropy_loss(model, batch, 0)
        total += float((per_token * mask).sum())
        n += int(mask.sum())
    return total / max(n, 1)
