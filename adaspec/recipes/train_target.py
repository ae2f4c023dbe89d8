"""The `train-target` recipe: SFT of the target (or build one from a preset and train it from scratch)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec import data as data_lib
from adaspec.data.options import load_split, train_items
from adaspec.io import atomic_write_json
from adaspec.models import build_model, count_params, load_tokenizer
from adaspec.recipes.train_target_options import TrainTargetOptions
from adaspec.training.checkpoint import load_checkpoint
from adaspec.training.loop import OnStep, make_accelerator, train_loop
from adaspec.training.run_fingerprint import open_run, path_fingerprint
from adaspec.training.setup import cross_entropy_loss, validation_loss


def prepare_tokenizer(opts: TrainTargetOptions) -> PreTrainedTokenizerBase:
    if opts.tokenizer:
        return load_tokenizer(opts.tokenizer, chat_template=opts.chat_template)
    if opts.model:
        return load_tokenizer(opts.model, trust_remote_code=opts.trust_remote_code, chat_template=opts.chat_template)
    texts = (f"{e.prompt}{e.response}" for e in load_split(opts, "train"))
    return data_lib.train_tokenizer(texts, opts.vocab_size, chat_template=opts.chat_template)


# options naming an input: their fingerprint (not their path) defines the run
RUN_INPUTS = {"model": path_fingerprint, "tokenizer": path_fingerprint}


def run_train_target(opts: TrainTargetOptions, on_step: OnStep | None = None) -> None:
    accelerator = make_accelerator(opts)
    roles = {"--model": opts.model, "--tokenizer": opts.tokenizer, "--data": opts.data, "--data-dir": opts.data_dir}
    with open_run(opts, RUN_INPUTS, roles, accelerator.is_main_process, accelerator.wait_for_everyone):
        _train_target(opts, accelerator, on_step)


def _train_target(opts: TrainTargetOptions, accelerator: Accelerator, on_step: OnStep | None) -> None:
    torch.manual_seed(opts.seed)
    # the model before its tokenizer: a missing directory is then reported as such, not as a bad hub id
    model = load_checkpoint(opts.model, trust_remote_code=opts.trust_remote_code) if opts.model else None
    tokenizer = prepare_tokenizer(opts)
    items, report = train_items(opts, tokenizer, accelerator.print)
    val_items = data_lib.encode(load_split(opts, "validation", opts.val_examples), tokenizer, opts.max_length)
    if model is None:
        model = build_model(
            opts.preset,
            len(tokenizer),
            seed=opts.init_seed,
            bos_token_id=tokenizer.bos_token_id or 0,
            eos_token_id=tokenizer.eos_token_id or 0,
        )
    model.to(accelerator.device)
    if opts.train_on_prompt:
        for item in items:
            item["labels"] = [t if i > 0 else data_lib.IGNORE_INDEX for i, t in enumerate(item["input_ids"])]
    pad_id = data_lib.pad_id(tokenizer)
    accelerator.print(f"model: {count_params(model):,} parameters, {len(items)} training examples")

    def validate(m: PreTrainedModel) -> dict[str, float]:
        return {"val_loss": validation_loss(m, val_items, pad_id)}

    result = train_loop(
        opts,
        accelerator,
        model,
        tokenizer,
        items,
        cross_entropy_loss,
        validate,
        best_key="val_loss",
        higher_is_better=False,
        on_step=on_step,
    )
    if accelerator.is_main_process:
        tokenizer.save_pretrained(opts.output)
        summary = {
            "params": count_params(model),
            "steps": result.steps,
            "best_val_loss": result.best_metric,
            **report.summary(),
        }
        atomic_write_json(Path(opts.output, "train_summary.json"), summary)
        accelerator.print(json.dumps(summary))
