"""The training loop shared by every recipe, and the `train-target` recipe (SFT of the target).

One loop, read top to bottom: build the global batch schedule from the seed, split each global batch
across processes, forward, per-token loss, normalise by the number of response tokens of the whole global
batch (so 1 process and N processes compute the same gradient), step, log, validate, checkpoint.
A recipe supplies only `token_loss(model, batch, step) -> (per-token loss, tokens kept, logs)`.

Multi-process runs go through `accelerate launch` / `torchrun` (DDP; FSDP and DeepSpeed through an
accelerate config). Checkpoints are safetensors directories that `AutoModelForCausalLM.from_pretrained`
loads; `last/` holds the optimizer state for resume, written atomically so a kill loses at most one save
interval and never a finished save.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from transformers import (PreTrainedModel, PreTrainedTokenizerBase, get_constant_schedule_with_warmup,
                          get_cosine_schedule_with_warmup)
from transformers.utils import logging as hf_logging

from adaspec import data as data_lib
from adaspec.errors import AdaspecError
from adaspec.models import PRESETS, build_model, count_params, load_model, load_tokenizer


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass(kw_only=True)
class DataOptions:
    """Which examples a command encodes; `distill` and `cache` must agree on them, so they share this."""

    task: str | None = field(default="gsm8k", metadata=_help(f"built-in task ({', '.join(data_lib.TASKS)})"))
    data: str | None = field(default=None, metadata=_help(
        "a JSONL file of your own (or hub:<dataset> when online) instead of --task"))
    prompt_field: str = field(default="prompt", metadata=_help("prompt field of --data records"))
    response_field: str = field(default="response", metadata=_help("response field of --data records"))
    data_dir: str | None = field(default=None, metadata=_help("folder of the built-in task data"))
    limit: int | None = field(default=None, metadata=_help("use only the first N training examples"))
    max_length: int = field(default=256, metadata=_help("truncate prompt+response to this many tokens"))

    def __post_init__(self) -> None:
        if self.task is None and self.data is None:
            raise AdaspecError("give --task or --data")
        if self.task is not None and self.data is None and self.task not in data_lib.TASKS:
            raise AdaspecError(f"unknown task {self.task!r}; choose one of {', '.join(data_lib.TASKS)}")
        if self.max_length < 2:
            raise AdaspecError(f"--max-length must be >= 2 (a prompt and a response token), got {self.max_length}")
        if self.limit is not None and self.limit < 1:
            raise AdaspecError(f"--limit must be >= 1, got {self.limit}")


@dataclass(kw_only=True)
class TrainOptions(DataOptions):
    """Options every training recipe shares."""

    output: str = field(metadata=_help("output directory: the final/best model, last/ for resume, logs/"))
    batch_size: int = field(default=16, metadata=_help("global micro-batch size, split across processes"))
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimizer step"))
    epochs: float = field(default=1.0, metadata=_help("passes over the training data"))
    max_steps: int | None = field(default=None, metadata=_help("stop after this many optimizer steps"))
    lr: float = field(default=1e-3, metadata=_help("peak learning rate (AdamW)"))
    schedule: Literal["cosine", "constant"] = field(default="cosine", metadata=_help(
        "after the warm-up: cosine decay to 0, or constant (the AdaSPEC authors' scripts)"))
    warmup_steps: int = field(default=20, metadata=_help("linear warm-up steps"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    grad_clip: float = field(default=1.0, metadata=_help("clip the gradient norm to this (0: off)"))
    seed: int = field(default=0, metadata=_help("seed of data order and sampling"))
    precision: Literal["no", "bf16", "fp16"] = field(default="no", metadata=_help(
        "mixed precision (bf16/fp16 on GPU)"))
    save_every: int = field(default=200, metadata=_help("write last/ every N steps"))
    val_every: int = field(default=100, metadata=_help("validate every N steps (0: only at the end)"))
    val_examples: int = field(default=64, metadata=_help("validation examples"))
    resume: bool = field(default=True, metadata=_help("continue from <output>/last if present"))
    progress: bool = field(default=True, metadata=_help("show a progress bar"))

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("batch_size", "grad_accum", "save_every", "val_examples"):
            if getattr(self, name) < 1:
                raise AdaspecError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.epochs <= 0:
            raise AdaspecError(f"--epochs must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise AdaspecError(f"--max-steps must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise AdaspecError(f"--lr must be > 0, got {self.lr}")
        if self.val_every < 0:
            raise AdaspecError(f"--val-every must be >= 0, got {self.val_every}")


def load_split(opts: DataOptions, split: str, limit: int | None = None) -> list[data_lib.Example]:
    examples = data_lib.load_examples(task=None if opts.data else opts.task, data_path=opts.data,
                                      split=split, prompt_field=opts.prompt_field,
                                      response_field=opts.response_field, limit=limit,
                                      data_dir=opts.data_dir)
    if not examples:
        raise AdaspecError(f"no {split} examples for {opts.data or opts.task}")
    return examples


def encode(examples: list[data_lib.Example], tokenizer: PreTrainedTokenizerBase,
           max_length: int) -> list[dict]:
    items = data_lib.encode_examples(examples, tokenizer, max_length)
    if not items:
        raise AdaspecError("no example has a response token left after truncation; raise --max-length")
    for i, item in enumerate(items):
        item["index"] = i
        item["prompt_length"] = next(j for j, lab in enumerate(item["labels"]) if lab != -100)
    return items


def shifted_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Response positions: logits at t score labels[t+1]."""
    return batch["labels"][:, 1:] != -100


def micro_batches(n_items: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's global micro-batches (incomplete last one dropped), the same on every process."""
    order = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [order[i:i + batch_size] for i in range(0, n_items - batch_size + 1, batch_size)]


def planned_steps(n_items: int, batch_size: int, grad_accum: int, epochs: float) -> int:
    """Optimizer steps of `epochs` passes over `n_items` in global micro-batches of `batch_size` (the
    incomplete last micro-batch dropped), `grad_accum` micro-batches a step."""
    return max(1, math.ceil(epochs * max(1, (n_items // batch_size) // grad_accum)))


TokenLoss = Callable[[torch.nn.Module, dict, int], tuple[torch.Tensor, torch.Tensor, dict[str, float]]]
PrepareItems = Callable[[list[dict], int, PreTrainedModel], list[dict]]
Validate = Callable[[PreTrainedModel], dict[str, float]]


@dataclass
class LoopResult:
    steps: int
    best_metric: float | None
    history: list[dict]


def _atomic_save(accelerator: Accelerator, model: torch.nn.Module, path: Path,
                 extra: dict[str, Any] | None = None, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.unwrap_model(model).save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    for name, obj in (extra or {}).items():
        if name.endswith(".json"):
            (tmp / name).write_text(json.dumps(obj, indent=1))
        else:
            torch.save(obj, tmp / name)
    # at every instant `path` or `path.old` is a finished save (a kill between the renames leaves only
    # `.old`, which resume falls back to, and which is not deleted until the new save is in place)
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _publish(src: Path, dst: Path) -> None:
    """Copy a saved model's files to the output directory, the checkpoint users load."""
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("trainer_state"):
            shutil.copy2(f, dst / f.name)


def train_loop(opts: TrainOptions, accelerator: Accelerator, model: PreTrainedModel,
               tokenizer: PreTrainedTokenizerBase, items: list[dict], token_loss: TokenLoss,
               validate: Validate, best_key: str, higher_is_better: bool, epochs: float,
               normalize: Literal["response", "kept"] = "response",
               config: dict | None = None, prepare_items: PrepareItems | None = None) -> LoopResult:
    """Train `model` on `items` with the recipe's per-token loss; returns the step count and best metric."""
    out = Path(opts.output)
    hf_logging.disable_progress_bar()  # one save bar per checkpoint drowns the training bar
    world, rank = accelerator.num_processes, accelerator.process_index
    if opts.batch_size % world:
        raise AdaspecError(f"--batch-size {opts.batch_size} is not divisible by {world} processes")
    pad_id = data_lib.pad_id(tokenizer)
    per_epoch = len(items) // opts.batch_size
    if per_epoch == 0:
        raise AdaspecError(f"{len(items)} examples are fewer than one batch of {opts.batch_size}")
    total = opts.max_steps or planned_steps(len(items), opts.batch_size, opts.grad_accum, epochs)

    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    warmup = min(opts.warmup_steps, total // 2)
    if opts.schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, warmup)
    else:
        scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, total)
    model, optimizer = accelerator.prepare(model, optimizer)

    step, best, history = 0, None, []
    last = out / "last"
    saved = next((d for d in (last, out / "last.old") if (d / "trainer_state.json").exists()), None)
    if opts.resume and saved is not None:
        state = torch.load(saved / "trainer_state.pt", weights_only=True)
        # through from_pretrained: saved names can differ from module names (transformers 5 saves GPT-NeoX's
        # lm_head as embed_out), and a raw load_state_dict(strict=False) silently skipped such weights
        unwrapped = accelerator.unwrap_model(model)
        restored = type(unwrapped).from_pretrained(str(saved), dtype=next(unwrapped.parameters()).dtype)
        unwrapped.load_state_dict(restored.state_dict())
        del restored
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        meta = json.loads((saved / "trainer_state.json").read_text())
        step, best, history = meta["step"], meta["best"], meta["history"]
        accelerator.print(f"resumed from {saved} at step {step}/{total}")

    writer = None
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "run_config.json").write_text(json.dumps(config or asdict(opts), indent=1, default=str))
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "logs"))
        except ImportError:
            writer = None
    bar = None
    if opts.progress and accelerator.is_main_process:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=step, desc=out.name, dynamic_ncols=True)

    def save_last() -> None:
        _atomic_save(accelerator, model, last, {
            "trainer_state.pt": {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            "trainer_state.json": {"step": step, "best": best, "history": history, "total": total}})

    def validate_and_keep() -> None:
        nonlocal best
        model.eval()
        metrics = validate(accelerator.unwrap_model(model))
        model.train()
        metrics["step"] = step
        history.append(metrics)
        if writer:
            for k, v in metrics.items():
                writer.add_scalar(f"val/{k}", v, step)
        value = metrics[best_key]
        improved = best is None or (value > best if higher_is_better else value < best)
        if improved:
            best = value
            _atomic_save(accelerator, model, out / "best", {"metrics.json": metrics}, tokenizer)
        accelerator.print(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()
                                                      if k != "step") + (" (best)" if improved else ""))

    model.train()
    t0, tokens_seen = time.perf_counter(), 0
    while step < total:
        window = [step * opts.grad_accum + j for j in range(opts.grad_accum)]
        batches = []
        for m in window:
            epoch, pos = divmod(m, per_epoch)
            idx = micro_batches(len(items), opts.batch_size, opts.seed, epoch)[pos][rank::world]
            chosen = [items[i] for i in idx]
            if prepare_items is not None:
                chosen = prepare_items(chosen, m, accelerator.unwrap_model(model))
            batch = data_lib.collate(chosen, pad_id)
            batch["index"] = torch.tensor([it["index"] for it in chosen])
            batches.append(batch)
        # normalise by the response tokens of the whole global batch, so the gradient does not depend on
        # how the batch is split over processes and micro-batches (DDP averages over processes: × world)
        local = torch.tensor(float(sum(int(shifted_mask(b).sum()) for b in batches)), device=accelerator.device)
        n_global = accelerator.reduce(local, reduction="sum").item()
        logs: dict[str, float] = {"loss": 0.0}
        for j, batch in enumerate(batches):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            ctx = accelerator.no_sync(model) if j < len(batches) - 1 else contextlib.nullcontext()
            with ctx, accelerator.autocast():
                per_token, kept, extra = token_loss(model, batch, step)
                if normalize == "response":
                    loss = (per_token * kept).sum() * world / max(n_global, 1.0)
                else:
                    # the kept tokens of the whole global micro-batch, for the same reason
                    n_kept = accelerator.reduce(kept.sum().detach().float(), reduction="sum").clamp(min=1)
                    loss = (per_token * kept).sum() * world / n_kept / len(batches)
                accelerator.backward(loss)
            logs["loss"] += loss.item() / world
            for k, v in extra.items():
                logs[k] = logs.get(k, 0.0) + v / len(batches)
            tokens_seen += int(batch["attention_mask"].sum())
        if world > 1:
            # log the global batch, not the main process's shard: loss shares add up, the rest is averaged
            keys = sorted(logs)
            vals = accelerator.reduce(torch.tensor([logs[k] for k in keys], device=accelerator.device),
                                      reduction="sum").tolist()
            logs = {k: v if k == "loss" else v / world for k, v in zip(keys, vals)}
        if opts.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), opts.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        logs["lr"] = scheduler.get_last_lr()[0]
        if writer:
            for k, v in logs.items():
                writer.add_scalar(f"train/{k}", v, step)
        if bar:
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items() if k != "lr"})
        if opts.val_every and step % opts.val_every == 0 and step < total:
            validate_and_keep()
        if step % opts.save_every == 0 or step == total:
            save_last()
    if not history or history[-1]["step"] != step:
        validate_and_keep()
        save_last()
    if bar:
        bar.close()
    if writer:
        writer.add_scalar("train/tokens_per_s", tokens_seen / max(time.perf_counter() - t0, 1e-9), step)
        writer.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _publish(out / "best", out)
    return LoopResult(step, best, history)


def make_accelerator(opts: TrainOptions) -> Accelerator:
    # accelerate only starts a CPU process group (gloo) when told it runs on CPU (`accelerate launch --cpu`);
    # under plain `torchrun` without a GPU every process would otherwise train alone on its shard
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    return Accelerator(mixed_precision=opts.precision, cpu=cpu)


@dataclass(kw_only=True)
class TrainTargetOptions(TrainOptions):
    """Fine-tune a target model on a task (or build one from a preset and train it from scratch).

    With no --model, a tokenizer is trained on the task's training text (or taken from --tokenizer) and a
    model is built from --preset: the offline path used by tests and the CPU-scale reproduction.
    """

    model: str | None = field(default=None, metadata=_help("pretrained model directory or hub id to fine-tune"))
    preset: str = field(default="neox-target-m", metadata=_help(
        f"architecture to build when --model is absent ({', '.join(PRESETS)})"))
    tokenizer: str | None = field(default=None, metadata=_help(
        "tokenizer directory (default: the model's, or train one from the task data)"))
    vocab_size: int = field(default=4096, metadata=_help("vocabulary of a tokenizer trained here"))
    init_seed: int = field(default=0, metadata=_help("seed of a model built from --preset"))
    train_on_prompt: bool = field(default=False, metadata=_help(
        "also train on prompt tokens (language modelling from scratch needs the extra text)"))
    trust_remote_code: bool = field(default=False, metadata=_help("allow a hub model's own code to run"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model is None and self.preset not in PRESETS:
            raise AdaspecError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.vocab_size < 300:
            raise AdaspecError(f"--vocab-size must be >= 300 (byte-level BPE needs 256 bytes), got {self.vocab_size}")


def load_checkpoint(path: str, trust_remote_code: bool = False,
                    load: Callable[..., PreTrainedModel] = load_model) -> PreTrainedModel:
    """`load` (models.load_model), with a corrupt weights file reported as one line, not a traceback."""
    from safetensors import SafetensorError
    try:
        return load(path, trust_remote_code=trust_remote_code)
    except SafetensorError as exc:
        raise AdaspecError(f"could not load model from {path}: corrupt safetensors file ({exc})") from exc


def prepare_tokenizer(opts: TrainTargetOptions) -> PreTrainedTokenizerBase:
    if opts.tokenizer:
        return load_tokenizer(opts.tokenizer)
    if opts.model:
        return load_tokenizer(opts.model, trust_remote_code=opts.trust_remote_code)
    texts = (f"{e.prompt}{e.response}" for e in load_split(opts, "train"))
    return data_lib.train_tokenizer(texts, opts.vocab_size)


def cross_entropy_loss(model: torch.nn.Module, batch: dict, step: int
                       ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    per_token = F.cross_entropy(logits.float().transpose(1, 2), labels.clamp(min=0), reduction="none")
    return per_token, (labels != -100).float(), {}


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


def run_train_target(opts: TrainTargetOptions) -> None:
    accelerator = make_accelerator(opts)
    torch.manual_seed(opts.seed)
    # the model before its tokenizer: a missing directory is then reported as such, not as a bad hub id
    model = load_checkpoint(opts.model, trust_remote_code=opts.trust_remote_code) if opts.model else None
    tokenizer = prepare_tokenizer(opts)
    items = encode(load_split(opts, "train", opts.limit), tokenizer, opts.max_length)
    val_items = encode(load_split(opts, "validation", opts.val_examples), tokenizer, opts.max_length)
    if model is None:
        model = build_model(opts.preset, len(tokenizer), seed=opts.init_seed,
                            bos_token_id=tokenizer.bos_token_id or 0, eos_token_id=tokenizer.eos_token_id or 0)
    model.to(accelerator.device)
    if opts.train_on_prompt:
        for item in items:
            item["labels"] = [t if i > 0 else -100 for i, t in enumerate(item["input_ids"])]
    pad_id = data_lib.pad_id(tokenizer)
    accelerator.print(f"model: {count_params(model):,} parameters, {len(items)} training examples")

    def validate(m: PreTrainedModel) -> dict[str, float]:
        return {"val_loss": validation_loss(m, val_items, pad_id)}

    result = train_loop(opts, accelerator, model, tokenizer, items, cross_entropy_loss, validate,
                        best_key="val_loss", higher_is_better=False, epochs=opts.epochs)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(opts.output)
        summary = {"params": count_params(model), "steps": result.steps, "best_val_loss": result.best_metric}
        Path(opts.output, "train_summary.json").write_text(json.dumps(summary, indent=1))
        accelerator.print(json.dumps(summary))
