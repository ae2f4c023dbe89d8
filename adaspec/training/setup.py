"""Set-up the training recipes share: `RecipeSetup`, the one set-up of `distill` and of every `train-head`
recipe (the seed, the frozen target, its tokenizer, the encoded examples, the validation continuations a
run measures acceptance on, the target's own responses as training data, the token budget of an AdaSPEC run
matched to its KD reference, the per-step random draws, the banner, the loop and the train summary), and
train-target's validation cross-entropy."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec import data as data_lib
from adaspec.data.options import load_split, train_items
from adaspec.decoding.acceptance import Continuations, generate_continuations, greedy_continuations
from adaspec.distill import cold_start, selection
from adaspec.distill.cache_store import TeacherCache, items_fingerprint
from adaspec.io import atomic_write_json
from adaspec.models import load_model, load_tokenizer
from adaspec.training.checkpoint import load_checkpoint
from adaspec.training.loop import (
    Budget,
    OnStep,
    PrepareItems,
    TokenLoss,
    Validate,
    make_accelerator,
    planned_steps,
    train_loop,
)
from adaspec.training.options import KDOptions
from adaspec.training.run_fingerprint import Run, cache_fingerprint, open_run, path_fingerprint

# options naming an input of a distilling run: their fingerprint (not their path) defines the run
RUN_INPUTS = {
    "target": path_fingerprint,
    "ref": path_fingerprint,
    "draft_init": path_fingerprint,
    "teacher_cache": cache_fingerprint,
}


def matched_budget(
    n_items: int, batch_size: int, grad_accum: int, epochs: float, k: float, by: Literal["batch", "epochs"]
) -> tuple[int, float, int | None]:
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


def run_budget(opts: KDOptions, n_items: int) -> Budget:
    """The budget a run of `n_items` examples trains for: the options' own, or with --match-token-budget
    `matched_budget`'s batch, epochs and steps (an explicit --max-steps stays)."""
    if not opts.match_token_budget:
        return Budget.of(opts)
    batch_size, epochs, steps = matched_budget(
        n_items, opts.batch_size, opts.grad_accum, opts.epochs, opts.k, opts.budget_by
    )
    return Budget(batch_size, epochs, opts.max_steps or steps)


@torch.no_grad()
def generate_items(
    model: PreTrainedModel,
    items: list[dict],
    max_new_tokens: int,
    max_length: int,
    temperature: float,
    eos_token_id: int | None,
    seed: int,
) -> list[dict]:
    """Replace the responses of `items` by the model's own continuations of their prompts."""
    was_training = model.training
    model.eval()
    prompts = [it["input_ids"][: it["prompt_length"]] for it in items]
    room = max(1, min(max_new_tokens, max_length - max(len(p) for p in prompts)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = generate_continuations(
            model, prompts, room, eos_token_id, batch_size=len(prompts), temperature=temperature
        )
    model.train(was_training)
    return [data_lib.with_response(it, seq) for it, seq in zip(items, gen.sequences)]


def json_cached(path: Path, make: Callable[[], Continuations]) -> Continuations:
    if path.exists():
        return Continuations.from_json(json.loads(path.read_text()))
    value = make()
    atomic_write_json(path, value.to_json(), indent=None)
    return value


def target_response_items(
    target: PreTrainedModel, items: list[dict], opts: KDOptions, run: Run, accelerator: Accelerator, eos: int | None
) -> list[dict]:
    """`items` with the target's own continuations of their prompts as responses (generated once, kept in
    <output>/target_responses-<key>.json, named by the target and settings that made them). `opts` carries
    gen_max_new_tokens, gen_temperature, max_length, seed."""

    def target_responses() -> Continuations:
        seqs: list[list[int]] = []
        for s in range(0, len(items), opts.batch_size):
            made = generate_items(
                target,
                items[s : s + opts.batch_size],
                opts.gen_max_new_tokens,
                opts.max_length,
                opts.gen_temperature,
                eos,
                opts.seed + s,
            )
            seqs += [it["input_ids"] for it in made]
        return Continuations(seqs, [it["prompt_length"] for it in items])

    path = run.cache_name(
        "target_responses",
        target=run.fingerprint["target"],
        items=items_fingerprint(items),
        batch_size=opts.batch_size,
        seed=opts.seed,
        max_new_tokens=opts.gen_max_new_tokens,
        max_length=opts.max_length,
        temperature=opts.gen_temperature,
    )
    # the main process writes the file, the others then read it (no two writers, no half-read file)
    with accelerator.main_process_first():
        made = json_cached(path, target_responses)
    return [data_lib.with_response(it, seq) for it, seq in zip(items, made.sequences)]


def val_continuations(
    target: PreTrainedModel,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos: int | None,
    run: Run,
    accelerator: Accelerator,
) -> Continuations:
    """The target's greedy continuations of the validation prompts, cached in the output folder under a
    name keyed by the target's fingerprint and the prompts (a different target never reuses them)."""
    path = run.cache_name(
        "val_continuations",
        target=run.fingerprint["target"],
        max_new_tokens=max_new_tokens,
        eos=eos,
        prompts=hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
    )
    with accelerator.main_process_first():
        return json_cached(path, lambda: greedy_continuations(target, prompts, max_new_tokens, eos))


def cross_entropy_loss(
    model: torch.nn.Module, batch: dict, step: int
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
        batch = {k: v.to(device) for k, v in data_lib.collate(items[start : start + batch_size], pad_id).items()}
        per_token, mask, _ = cross_entropy_loss(model, batch, 0)
        total += float((per_token * mask).sum())
        n += int(mask.sum())
    return total / max(n, 1)


class StepGenerator:
    """The generator of a step's random draws (random selection, DFlash's anchors), seeded from --seed and the
    optimizer step alone, so a resumed run draws what the uninterrupted one drew."""

    def __init__(self, seed: int):
        self.seed, self.generator, self.step = seed, torch.Generator(), None

    def at(self, step: int) -> torch.Generator:
        """Seeded at the step's first micro-batch; its further micro-batches continue the same stream."""
        if step != self.step:
            self.restart(step)
            self.step = step
        return self.generator

    def restart(self, key: int) -> torch.Generator:
        """Seeded anew from `key` (a step, or a step and the micro-batch's first item), whatever came before."""
        self.step = None
        return self.generator.manual_seed((self.seed + 1) * 1_000_003 + key)


class RecipeSetup:
    """What `distill` and every `train-head` recipe set up alike: made inside the open run, it seeds torch, loads
    the frozen target (the model before its tokenizer: a missing directory is then reported as such, not as a
    bad hub id), encodes the training examples and fixes the run's budget; then `val_continuations`, the
    banner (`announce`) and `train`, which ends in the train summary. A recipe adds only its model, its loss
    and what it saves."""

    def __init__(self, opts: KDOptions, accelerator: Accelerator, run: Run):
        self.opts, self.accelerator, self.run = opts, accelerator, run
        torch.manual_seed(opts.seed)
        self.target: PreTrainedModel | None = self.frozen(opts.target)
        self.tokenizer: PreTrainedTokenizerBase = load_tokenizer(opts.target, chat_template=opts.chat_template)
        self.eos = self.tokenizer.eos_token_id
        self.items, self.report = train_items(opts, self.tokenizer, accelerator.print)
        self.budget = run_budget(opts, len(self.items))

    @classmethod
    @contextlib.contextmanager
    def open(cls, opts: KDOptions) -> Iterator[RecipeSetup]:
        """The run (`run_fingerprint.open_run`: the output checked against the inputs, locked, fingerprinted)
        and its set-up, made inside it."""
        accelerator = make_accelerator(opts)
        roles = {
            "target": opts.target,
            "reference": opts.ref,
            "draft initialisation": opts.draft_init,
            "teacher cache": opts.teacher_cache,
            "--data": opts.data,
            "--data-dir": opts.data_dir,
        }
        with open_run(opts, RUN_INPUTS, roles, accelerator.is_main_process, accelerator.wait_for_everyone) as run:
            yield cls(opts, accelerator, run)

    @staticmethod
    def load(path: str) -> PreTrainedModel:
        # models.load_model looked up here at call time (tests wrap it to count forwards)
        return load_checkpoint(path, load=load_model)

    def frozen(self, path: str) -> PreTrainedModel:
        """The model at `path` on the run's device, in eval mode, without gradients."""
        model = self.load(path).to(self.accelerator.device).eval()
        model.requires_grad_(False)
        return model

    def val_continuations(self) -> Continuations:
        """The target's greedy continuations of the validation prompts, which validation scores (made once,
        cached in the output folder; before `release_target`)."""
        examples = load_split(self.opts, "validation", self.opts.val_examples)
        prompts = [
            it["input_ids"][: it["prompt_length"]]
            for it in data_lib.encode(examples, self.tokenizer, self.opts.max_length)
        ]
        return val_continuations(
            self.target, prompts, self.opts.val_max_new_tokens, self.eos, self.run, self.accelerator
        )

    def release_target(self) -> None:
        """Give the target's memory back, once a teacher cache stands in for it."""
        self.target = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def kept_fraction(self, schedule: str = "constant") -> Callable[[int], float]:
        """The fraction of response tokens AdaSPEC keeps at each optimizer step: --k, on the k `schedule` or the
        cold start's ramp over the run's planned steps."""
        total = self.budget.steps(len(self.items), self.opts.grad_accum)
        schedule = cold_start.k_schedule(self.opts.cold_start, schedule)
        return lambda step: selection.scheduled_k(self.opts.k, schedule, step, total)

    def announce(self, model: str, noun: str, method_extra: str = "", cache: TeacherCache | None = None) -> None:
        """The run's banner: `model` ("draft: 1,234 parameters"), the method (and `method_extra`), the data and
        the budget, where the target's signal comes from with a teacher `cache`; then the cold start's line
        where one applies (`noun`: "draft" or "head")."""
        o, budget = self.opts, self.budget
        self.accelerator.print(
            f"{model}; {o.method}"
            + (f" k={o.k} {o.selection}" if o.method == "adaspec" else "")
            + method_extra
            + f"; {len(self.items)} examples, {budget.epochs:g} epochs, global batch {budget.batch_size}"
            + (f"; target signal from {o.teacher_cache} (top-{cache.top_k})" if cache else "")
        )
        if line := cold_start.announcement(o.cold_start, noun, o.k):
            self.accelerator.print(line)

    def train(
        self,
        model: torch.nn.Module,
        loss: TokenLoss,
        validate: Validate,
        best_key: str,
        summary: dict[str, Any],
        save: Callable[[], None] = lambda: None,
        normalize: Literal["response", "kept"] = "response",
        prepare_items: PrepareItems | None = None,
        on_step: OnStep | None = None,
    ) -> None:
        """Train `model` with the shared loop on the run's budget, keeping the best by `best_key` (higher is
        better), on the target's own responses with --data-source target. Then, on the main process, `save()`
        the recipe's files and write train_summary.json, last since it marks the run done: `summary`, the
        steps, the best metric, the budget, the cold start, the validation history and what fitting the data
        into --max-length did."""
        o = self.opts
        if o.data_source == "target":
            self.items = target_response_items(self.target, self.items, o, self.run, self.accelerator, self.eos)
        result = train_loop(
            o,
            self.accelerator,
            model,
            self.tokenizer,
            self.items,
            loss,
            validate,
            best_key=best_key,
            higher_is_better=True,
            budget=self.budget,
            normalize=normalize,
            prepare_items=prepare_items,
            on_step=on_step,
        )
        if self.accelerator.is_main_process:
            save()
            atomic_write_json(
                Path(o.output) / "train_summary.json",
                {
                    **summary,
                    "steps": result.steps,
                    f"best_{best_key}": result.best_metric,
                    "epochs": self.budget.epochs,
                    "batch_size": self.budget.batch_size,
                    "cold_start": o.cold_start,
                    "history": result.history,
                    **self.report.summary(),
                },
            )
