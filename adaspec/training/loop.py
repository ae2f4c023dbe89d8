"""The training loop shared by every recipe, read top to bottom.

Build the global batch schedule from the seed, split each global batch across processes, forward, per-token
loss, reduce it with `selection.reduce_loss` over the whole global batch's response (or kept) tokens (so 1
process and N processes compute the same gradient), step, log, validate, checkpoint. A recipe supplies only
its `TokenLoss` (the contract below, one for drafts and heads), a `validate(model)` and the run's `Budget`.

Multi-process runs go through `accelerate launch` / `torchrun` (DDP; FSDP and DeepSpeed through an
accelerate config). Checkpoints: adaspec.training.checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
from accelerate import Accelerator
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
)
from transformers.utils import logging as hf_logging

from adaspec import data as data_lib
from adaspec.distill.selection import reduce_loss
from adaspec.errors import AdaspecError
from adaspec.io import atomic_write_json
from adaspec.training.checkpoint import atomic_save, publish, restore, resumable
from adaspec.training.options import TrainOptions


class TokenLoss(Protocol):
    """A recipe's per-token loss: one contract for draft models (distill) and heads (train-head).

    `loss(model, batch, step)` takes one micro-batch (the collated tensors, plus "index": the items' positions)
    and the optimizer step it belongs to (0-based, the same for every micro-batch of a step), and returns
    `(per_token, kept, logs)`:

    per_token  [B, T-1] float: the loss at position t, which scores token t+1 (the shifted alignment of
               `data.response_mask`). A model proposing several tokens per position (a head's unroll steps,
               depths or block slots) adds each proposal's weighted term at the position of the token it
               predicts.
    kept       [B, T-1]: the positions that count, bool or float weights (soft selection). A draft returns its
               AdaSPEC selection; a head selects per step, depth or slot, folds that into per_token and
               returns the response mask.
    logs       scalars to log, averaged over the step's micro-batches.

    The loop minimises Σ kept · per_token over the response positions divided by the global batch's
    response tokens (normalize="response"), or by the sum of kept (normalize="kept": only meaningful
    where kept holds the selection, so for drafts).
    """

    def __call__(
        self, model: torch.nn.Module, batch: data_lib.Batch, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]: ...


PrepareItems = Callable[[list[data_lib.Item], int, PreTrainedModel], list[data_lib.Item]]
Validate = Callable[[PreTrainedModel], dict[str, float]]
OnStep = Callable[[int, list[data_lib.Batch]], None]  # (step about to run, its local micro-batches)
# optimizer steps timed before --max-minutes fixes how many fit (the first ones include warm-up costs)
TIMED_STEPS = 3


def micro_batches(n_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global micro-batches (incomplete last one dropped), the same on every process."""
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [order[i : i + batch_size] for i in range(0, n_items - batch_size + 1, batch_size)]


def planned_steps(n_items: int, batch_size: int, grad_accum: int, epochs: float) -> int:
    """Optimizer steps of `epochs` passes over `n_items` in global micro-batches of `batch_size` (the
    incomplete last micro-batch dropped), `grad_accum` micro-batches a step."""
    return max(1, math.ceil(epochs * max(1, (n_items // batch_size) // grad_accum)))


def make_accelerator(opts: TrainOptions) -> Accelerator:
    # accelerate only starts a CPU process group (gloo) when told it runs on CPU (`accelerate launch --cpu`);
    # under plain `torchrun` without a GPU every process would otherwise train alone on its shard
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=opts.precision, cpu=cpu)


@dataclass(frozen=True)
class Budget:
    """How long a run trains: the global micro-batch, the passes over the data and the optimizer steps (None:
    as many as `epochs` take). Derived from the options, which never change after parsing: `of(opts)` is
    theirs, `training.setup.run_budget` reshapes it for --match-token-budget."""

    batch_size: int
    epochs: float
    max_steps: int | None

    @classmethod
    def of(cls, opts: TrainOptions) -> Budget:
        return cls(opts.batch_size, opts.epochs, opts.max_steps)

    def steps(self, n_items: int, grad_accum: int) -> int:
        """The optimizer steps planned (--max-minutes may cut them once the first steps are timed)."""
        return self.max_steps or planned_steps(n_items, self.batch_size, grad_accum, self.epochs)


@dataclass
class LoopResult:
    steps: int
    best_metric: float | None
    history: list[dict]


@dataclass
class _State:
    step: int = 0
    best: float | None = None
    history: list[dict] = field(default_factory=list)


class _Log:
    """Tensorboard (when installed) and the progress bar, on the main process only."""

    def __init__(self, accelerator: Accelerator, opts: TrainOptions, out: Path, total: int, step: int):
        self.writer = self.bar = None
        if not accelerator.is_main_process:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "logs"))
        except ImportError:
            pass
        if opts.progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=step, desc=out.name, dynamic_ncols=True)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def shorten(self, total: int) -> None:
        if self.bar:
            self.bar.total = total
            self.bar.refresh()

    def advance(self, logs: dict[str, float]) -> None:
        if self.bar:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k != "lr"})

    def close(self, tokens_per_s: float, step: int) -> None:
        if self.bar:
            self.bar.close()
        if self.writer:
            self.writer.add_scalar("train/tokens_per_s", tokens_per_s, step)
            self.writer.close()


def _global_batch(
    items: list[data_lib.Item],
    opts: TrainOptions,
    batch_size: int,
    step: int,
    per_epoch: int,
    rank: int,
    world: int,
    prepare_items: PrepareItems | None,
    model: PreTrainedModel,
    pad_id: int,
) -> list[data_lib.Batch]:
    """This process's share of the micro-batches (of `batch_size` in all) of optimizer step `step`."""
    batches = []
    for m in range(step * opts.grad_accum, (step + 1) * opts.grad_accum):
        epoch, pos = divmod(m, per_epoch)
        idx = micro_batches(len(items), batch_size, opts.seed, epoch)[pos][rank::world]
        chosen = [items[i] for i in idx]
        if prepare_items is not None:
            chosen = prepare_items(chosen, m, model)
        batch = data_lib.collate(chosen, pad_id)
        batch["index"] = torch.tensor([it["index"] for it in chosen])
        batches.append(batch)
    return batches


def _accumulate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    batches: list[data_lib.Batch],
    token_loss: TokenLoss,
    step: int,
    normalize: Literal["response", "kept"],
) -> tuple[dict[str, float], int]:
    """Forward and backward of every micro-batch of one optimizer step; (logs, tokens seen)."""
    world = accelerator.num_processes
    # the loss is normalised by the response tokens of the whole global batch, so the gradient does not
    # depend on how the batch is split over processes and micro-batches (DDP averages over processes)
    local = torch.tensor(
        float(sum(int(data_lib.response_mask(b["labels"]).sum()) for b in batches)), device=accelerator.device
    )
    n_global = accelerator.reduce(local, reduction="sum").item()
    logs: dict[str, float] = {"loss": 0.0}
    tokens = 0
    for j, batch in enumerate(batches):
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        ctx = accelerator.no_sync(model) if j < len(batches) - 1 else contextlib.nullcontext()
        with ctx, accelerator.autocast():
            per_token, kept, extra = token_loss(model, batch, step)
            mask = data_lib.response_mask(batch["labels"])
            if normalize == "response":
                loss = reduce_loss(per_token, mask, kept, normalize, num_items=max(n_global, 1.0) / world)
            else:
                # the kept tokens of the whole global micro-batch, for the same reason
                n_kept = accelerator.reduce(kept.sum().detach().float(), reduction="sum").clamp(min=1)
                loss = reduce_loss(per_token, mask, kept, normalize, num_selected=n_kept * len(batches) / world)
            accelerator.backward(loss)
        logs["loss"] += loss.item() / world
        for k, v in extra.items():
            logs[k] = logs.get(k, 0.0) + v / len(batches)
        tokens += int(batch["attention_mask"].sum())
    if world > 1:
        # log the global batch, not the main process's shard: loss shares add up, the rest is averaged
        keys = sorted(logs)
        vals = accelerator.reduce(
            torch.tensor([logs[k] for k in keys], device=accelerator.device), reduction="sum"
        ).tolist()
        logs = {k: v if k == "loss" else v / world for k, v in zip(keys, vals)}
    return logs, tokens


# One function on purpose (as nanoGPT's loop): set-up, resume, the step, validation and saving read top to
# bottom; its pieces that stand alone (_global_batch, _reduce_logs, checkpointing) live beside it.
def train_loop(
    opts: TrainOptions,
    accelerator: Accelerator,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: list[data_lib.Item],
    token_loss: TokenLoss,
    validate: Validate,
    best_key: str,
    higher_is_better: bool,
    budget: Budget | None = None,
    normalize: Literal["response", "kept"] = "response",
    prepare_items: PrepareItems | None = None,
    on_step: OnStep | None = None,
) -> LoopResult:
    """Train `model` on `items` with the recipe's per-token loss for `budget` (default: the options' own);
    returns the step count and best metric.

    `on_step(step, batches)` is called before each optimizer step (for benchmarks and tests)."""
    out = Path(opts.output)
    budget = budget or Budget.of(opts)
    hf_logging.disable_progress_bar()  # one save bar per checkpoint drowns the training bar
    world, rank = accelerator.num_processes, accelerator.process_index
    if budget.batch_size % world:
        raise AdaspecError(f"--batch-size {budget.batch_size} is not divisible by {world} processes")
    pad_id = data_lib.pad_id(tokenizer)
    per_epoch = len(items) // budget.batch_size
    if per_epoch == 0:
        raise AdaspecError(f"{len(items)} examples are fewer than one batch of {budget.batch_size}")
    total = budget.steps(len(items), opts.grad_accum)

    saved = resumable(out)
    if opts.max_minutes is not None and opts.resume and saved is not None:
        # the horizon --max-minutes chose before the interruption, so the resumed lr schedule is the same one
        total = min(total, json.loads((saved / "trainer_state.json").read_text()).get("total", total))
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    warmup = min(opts.warmup_steps, total // 2)

    def make_scheduler(steps: int, last: int = -1) -> torch.optim.lr_scheduler.LambdaLR:
        if opts.schedule == "constant":
            return get_constant_schedule_with_warmup(optimizer, warmup, last_epoch=last)
        return get_cosine_schedule_with_warmup(optimizer, warmup, steps, last_epoch=last)

    scheduler = make_scheduler(total)
    model, optimizer = accelerator.prepare(model, optimizer)
    state = _State()
    if opts.resume and saved is not None:
        meta = restore(saved, accelerator.unwrap_model(model), optimizer, scheduler)
        state = _State(meta["step"], meta["best"], meta["history"])
        accelerator.print(f"resumed from {saved} at step {state.step}/{total}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        # the options with the budget the run trains for (--match-token-budget reshapes the options' own)
        atomic_write_json(out / "run_config.json", {**asdict(opts), **asdict(budget)})
    log = _Log(accelerator, opts, out, total, state.step)

    def check_finite_weights(where: str) -> None:
        # a non-finite model must never replace a good checkpoint
        bad = next(
            (n for n, p in accelerator.unwrap_model(model).named_parameters() if not torch.isfinite(p).all()), None
        )
        if bad is not None:
            raise AdaspecError(
                f"step {state.step}: weight {bad} is not finite; {where} kept as it was (lower --lr or set --grad-clip)"
            )

    def save_last() -> None:
        check_finite_weights(f"{out / 'last'}")
        atomic_save(
            accelerator,
            model,
            out / "last",
            {
                "trainer_state.pt": {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                "trainer_state.json": {
                    "step": state.step,
                    "best": state.best,
                    "history": state.history,
                    "total": total,
                },
            },
        )

    def validate_and_keep() -> None:
        model.eval()
        metrics = validate(accelerator.unwrap_model(model))
        model.train()
        metrics["step"] = state.step
        state.history.append(metrics)
        log.scalars("val", metrics, state.step)
        value = metrics[best_key]
        improved = state.best is None or (value > state.best if higher_is_better else value < state.best)
        if improved:
            state.best = value
            check_finite_weights(f"{out / 'best'}")
            atomic_save(accelerator, model, out / "best", {"metrics.json": metrics}, tokenizer)
        accelerator.print(
            f"step {state.step}: "
            + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "step")
            + (" (best)" if improved else "")
        )

    model.train()
    t0, tokens_seen = time.perf_counter(), 0
    first_step = state.step
    while state.step < total:
        batches = _global_batch(
            items,
            opts,
            budget.batch_size,
            state.step,
            per_epoch,
            rank,
            world,
            prepare_items,
            accelerator.unwrap_model(model),
            pad_id,
        )
        if on_step is not None:
            on_step(state.step, batches)
        logs, tokens = _accumulate(accelerator, model, batches, token_loss, state.step, normalize)
        tokens_seen += tokens
        # inf does not clip, it only measures: a non-finite norm stops the run before the step applies it.
        # fp16's loss scaler overflows on purpose and skips those steps itself; DeepSpeed returns no norm
        norm = accelerator.clip_grad_norm_(model.parameters(), opts.grad_clip if opts.grad_clip > 0 else math.inf)
        norm = float(norm) if norm is not None and opts.precision != "fp16" else 0.0
        if not (math.isfinite(logs["loss"]) and math.isfinite(norm)):
            what = f"loss {logs['loss']}" if not math.isfinite(logs["loss"]) else f"gradient norm {norm}"
            raise AdaspecError(
                f"step {state.step + 1}: the {what} is not finite; stopped before applying it, "
                f"checkpoints in {out} kept as they were (lower --lr or set --grad-clip)"
            )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        logs["lr"] = scheduler.get_last_lr()[0]
        log.scalars("train", logs, state.step)
        log.advance(logs)
        if opts.max_minutes is not None and state.step - first_step == TIMED_STEPS:
            fits = first_step + int(opts.max_minutes * 60 / ((time.perf_counter() - t0) / TIMED_STEPS))
            if fits < total:
                # the lr schedule is redrawn over the steps that fit, so the run still ends decayed
                accelerator.print(f"--max-minutes {opts.max_minutes:g}: {fits} of {total} steps fit")
                total = max(fits, state.step)
                scheduler = make_scheduler(total, last=state.step - 1)
                log.shorten(total)
        if opts.val_every and state.step % opts.val_every == 0 and state.step < total:
            validate_and_keep()
        if state.step % opts.save_every == 0 or state.step == total:
            save_last()
    if not state.history or state.history[-1]["step"] != state.step:
        validate_and_keep()
        save_last()
    log.close(tokens_seen / max(time.perf_counter() - t0, 1e-9), state.step)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish(out / "best", out)
    return LoopResult(state.step, state.best, state.history)
