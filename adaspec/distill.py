"""The `distill` recipe: knowledge distillation of a draft from the target.

--method kd        every response token (DistillSpec; also how the AdaSPEC reference model is made)
--method adaspec   AdaSPEC (Hu et al., 2025): per token Δ = L(p_target‖q_draft) − L(p_target‖q_ref); train the
                   draft only on the top-k fraction of tokens by Δ, the tokens it can still learn.

Teacher signal comes from the target on the fly (the exact path, the default) or from an offline cache
(`adaspec cache`): then neither the target nor the reference runs during training. Training responses
come from the dataset (as in the paper), from the target, from the draft itself (on-policy, DistillSpec),
or a mixture.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from adaspec import losses, selection
from adaspec.acceptance import Continuations, generate_continuations, greedy_agreement, greedy_continuations
from adaspec.errors import AdaspecError
from adaspec.models import PRESETS, build_model, check_vocab_compatible, count_params, load_model, load_tokenizer
from adaspec.train import (TrainOptions, _help, encode, load_checkpoint, load_split, make_accelerator,
                           planned_steps, shifted_mask, train_loop)


@dataclass(kw_only=True)
class DistillOptions(TrainOptions):
    """Distil a draft model from a target: plain KD (DistillSpec, reference model) or AdaSPEC."""

    target: str = field(metadata=_help("target model directory (its tokenizer is used)"))
    method: Literal["kd", "adaspec"] = field(default="kd", metadata=_help(
        "kd: all response tokens; adaspec: selective KD against --ref"))
    ref: str | None = field(default=None, metadata=_help("reference model directory (required by adaspec)"))
    draft_init: str | None = field(default=None, metadata=_help(
        "initial draft checkpoint (default: build --preset with --init-seed)"))
    preset: str = field(default="neox-draft-xs", metadata=_help(f"draft architecture ({', '.join(PRESETS)})"))
    init_seed: int = field(default=0, metadata=_help("seed of a draft built from --preset"))
    k: float = field(default=0.4, metadata=_help("fraction of response tokens AdaSPEC trains on, in (0, 1]"))
    selection: Literal["top", "bottom", "random", "all"] = field(default="top", metadata=_help(
        "which tokens by Δ: top (AdaSPEC), bottom, random, all (= plain KD)"))
    per_sequence: bool = field(default=False, metadata=_help(
        "select the top-k within each sequence instead of over the micro-batch (paper)"))
    selection_group: int | None = field(default=None, metadata=_help(
        "select the top-k within each group of N consecutive sequences of a process's micro-batch (default: "
        "the whole micro-batch; the authors' 8 processes x 5 sequences are --selection-group 5 on one)"))
    normalize: Literal["response", "kept"] = field(default="response", metadata=_help(
        "loss = sum over kept tokens / response tokens (official code) or / kept tokens"))
    divergence: Literal["fkl", "rkl", "tvd", "jsd"] = field(default="fkl", metadata=_help(
        "per-token divergence between target and draft"))
    beta: float = field(default=0.5, metadata=_help("JSD mixture weight"))
    temperature: float = field(default=1.0, metadata=_help("distillation temperature"))
    data_source: Literal["dataset", "target", "draft", "mix"] = field(default="dataset", metadata=_help(
        "responses: dataset (paper), target-generated, draft-generated on-policy, or a mix"))
    mix_ratio: float = field(default=0.5, metadata=_help("with --data-source mix: share of on-policy batches"))
    gen_max_new_tokens: int = field(default=128, metadata=_help("length of generated responses"))
    gen_temperature: float = field(default=1.0, metadata=_help("sampling temperature of generated responses"))
    match_token_budget: bool = field(default=False, metadata=_help(
        "give this run at --k as many trained tokens as KD on every token at --batch-size and --epochs "
        "(with --method kd: KD shaped like that AdaSPEC run, the equal-steps control); see --budget-by"))
    budget_by: Literal["batch", "epochs"] = field(default="batch", metadata=_help(
        "how --match-token-budget matches: batch = batch/k and epochs/k at KD's optimizer steps (the authors' "
        "scripts: 16 -> 40 sequences, 3 -> 7.5 epochs); epochs = epochs/k at KD's batch, 1/k the steps "
        "(adaspec's protocol, the committed main table)"))
    teacher_cache: str | None = field(default=None, metadata=_help(
        "cache from `adaspec cache`: no target/reference forward during training"))
    val_max_new_tokens: int = field(default=96, metadata=_help("length of the target continuations for α"))

    def __post_init__(self) -> None:
        super().__post_init__()
        selection.check_k(self.k)
        if self.selection_group is not None and (self.selection_group < 1 or self.per_sequence):
            raise AdaspecError("--selection-group must be >= 1 and cannot be combined with --per-sequence")
        if self.method == "adaspec" and self.ref is None and self.teacher_cache is None:
            raise AdaspecError("--method adaspec needs --ref (the reference model) or a --teacher-cache with L_ref")
        if self.draft_init is None and self.preset not in PRESETS:
            raise AdaspecError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}")
        if self.temperature <= 0 or self.gen_temperature < 0:
            raise AdaspecError("--temperature must be > 0 and --gen-temperature >= 0")
        if not 0 <= self.beta <= 1 or not 0 <= self.mix_ratio <= 1:
            raise AdaspecError("--beta and --mix-ratio must be in [0, 1]")
        if self.teacher_cache and self.data_source in ("draft", "mix"):
            raise AdaspecError("on-policy responses (--data-source draft/mix) are generated during training "
                               "and cannot come from a --teacher-cache")


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


def _frozen(model: PreTrainedModel, device: torch.device) -> PreTrainedModel:
    model.to(device).eval()
    model.requires_grad_(False)
    return model


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
    out = []
    for it, seq, p in zip(items, gen.sequences, prompts):
        out.append({**it, "input_ids": seq, "labels": [-100] * len(p) + seq[len(p):]})
    return out


def _json_cached(path: Path, make: Callable[[], Continuations]) -> Continuations:
    if path.exists():
        return Continuations.from_json(json.loads(path.read_text()))
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    # written whole or not at all: a kill mid-write must not leave a file the next run cannot parse
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value.to_json()))
    tmp.replace(path)
    return value


def _load(path: str) -> PreTrainedModel:
    # models.load_model looked up here at call time (tests wrap it to count forwards)
    return load_checkpoint(path, load=load_model)


def _saved_tokenizer(path: str) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved beside a checkpoint, or None for weights saved without one (then only the
    vocabulary sizes are compared; AutoTokenizer would invent an empty tokenizer from the config)."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    if Path(path).is_dir() and not any((Path(path) / n).exists() for n in names):
        return None
    return load_tokenizer(path)


def run_distill(opts: DistillOptions) -> None:
    accelerator = make_accelerator(opts)
    device = accelerator.device
    torch.manual_seed(opts.seed)
    # the model first: a missing directory is then reported as such, not as a bad hub id for a tokenizer
    target = _frozen(_load(opts.target), device)
    tokenizer: PreTrainedTokenizerBase = load_tokenizer(opts.target)
    if opts.draft_init:
        draft = _load(opts.draft_init)
        check_vocab_compatible(target, draft, tokenizer, _saved_tokenizer(opts.draft_init))
    else:
        draft = build_model(opts.preset, len(tokenizer), seed=opts.init_seed,
                            bos_token_id=tokenizer.bos_token_id or 0, eos_token_id=tokenizer.eos_token_id or 0)
        check_vocab_compatible(target, draft, names=("target", "draft"))
    draft.to(device)
    ref = None
    if opts.method == "adaspec" and opts.ref and not opts.teacher_cache:
        ref = _frozen(_load(opts.ref), device)
        check_vocab_compatible(target, ref, tokenizer, _saved_tokenizer(opts.ref), names=("target", "reference"))
    vocab = min(target.get_output_embeddings().weight.shape[0], draft.get_output_embeddings().weight.shape[0])
    eos = tokenizer.eos_token_id
    out = Path(opts.output)

    items = encode(load_split(opts, "train", opts.limit), tokenizer, opts.max_length)
    if opts.data_source == "target":
        def target_responses() -> Continuations:
            seqs: list[list[int]] = []
            for s in range(0, len(items), opts.batch_size):
                made = generate_items(target, items[s:s + opts.batch_size], opts.gen_max_new_tokens,
                                      opts.max_length, opts.gen_temperature, eos, opts.seed + s)
                seqs += [it["input_ids"] for it in made]
            return Continuations(seqs, [it["prompt_length"] for it in items])

        # the main process writes the file, the others then read it (no two writers, no half-read file)
        with accelerator.main_process_first():
            made = _json_cached(out / "target_responses.json", target_responses)
        items = [{**it, "input_ids": seq, "labels": [-100] * it["prompt_length"] + seq[it["prompt_length"]:]}
                 for it, seq in zip(items, made.sequences)]
    val_examples = load_split(opts, "validation", opts.val_examples)
    val_prompts = [it["input_ids"][: it["prompt_length"]] for it in encode(val_examples, tokenizer, opts.max_length)]
    with accelerator.main_process_first():
        val = _json_cached(out / "val_continuations.json", lambda: greedy_continuations(
            target, val_prompts, opts.val_max_new_tokens, eos))

    cache = None
    if opts.teacher_cache:
        from adaspec.cache import TeacherCache
        cache = TeacherCache.open(opts.teacher_cache, target_path=opts.target, ref_path=opts.ref, items=items,
                                  divergence=opts.divergence, temperature=opts.temperature, beta=opts.beta,
                                  vocab=vocab)
        if opts.method == "adaspec" and not cache.has_ref:
            raise AdaspecError(f"{opts.teacher_cache} holds no reference divergence; rebuild it with --ref")
        target = None
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    selective = opts.method == "adaspec" and opts.selection != "all"
    sel_gen = torch.Generator()
    sel_step = [-1]

    def token_loss(model: torch.nn.Module, batch: dict, step: int):
        if step != sel_step[0]:
            # random selection seeded per step, so a resumed run draws what the uninterrupted one drew
            sel_step[0] = step
            sel_gen.manual_seed((opts.seed + 1) * 1_000_003 + step)
        mask = shifted_mask(batch)
        q_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1, :vocab]
        if cache is not None:
            c = cache.batch(batch["index"].tolist(), batch["input_ids"].shape[1], q_logits.device)
            div = losses.sparse_divergence(opts.divergence, c["topk_ids"], c["topk_logprobs"], q_logits,
                                           temperature=opts.temperature, beta=opts.beta)
            ref_div = c.get("ref_div")
        else:
            with torch.no_grad():
                p_logits = target(input_ids=batch["input_ids"],
                                  attention_mask=batch["attention_mask"]).logits[:, :-1, :vocab]
            div = losses.per_token_divergence(opts.divergence, p_logits, q_logits,
                                              temperature=opts.temperature, beta=opts.beta)
            ref_div = None
            if selective:
                with torch.no_grad():
                    r_logits = ref(input_ids=batch["input_ids"],
                                   attention_mask=batch["attention_mask"]).logits[:, :-1, :vocab]
                    ref_div = losses.per_token_divergence(opts.divergence, p_logits, r_logits,
                                                          temperature=opts.temperature, beta=opts.beta)
        if selective:
            kept = selection.select_tokens(div.detach() - ref_div, mask, opts.k, opts.selection,
                                           per_sequence=opts.per_sequence, generator=sel_gen,
                                           group=opts.selection_group)
        else:
            kept = mask
        n_resp = int(mask.sum())
        logs = {"kept_fraction": float(kept.sum()) / max(n_resp, 1),
                "divergence": float((div.detach() * mask).sum()) / max(n_resp, 1)}
        return div, kept.float(), logs

    on_policy = opts.data_source in ("draft", "mix")

    def prepare_items(chosen: list[dict], micro: int, model: PreTrainedModel) -> list[dict]:
        if not on_policy or (opts.data_source == "mix" and random.Random(opts.seed * 7919 + micro).random()
                             >= opts.mix_ratio):
            return chosen
        return generate_items(model, chosen, opts.gen_max_new_tokens, opts.max_length, opts.gen_temperature,
                              eos, opts.seed * 100003 + micro)

    def validate(model: PreTrainedModel) -> dict[str, float]:
        return {"alpha_greedy": greedy_agreement(model, val)}

    epochs = opts.epochs
    if opts.match_token_budget:
        batch_size, epochs, steps = matched_budget(len(items), opts.batch_size, opts.grad_accum, opts.epochs,
                                                   opts.k, opts.budget_by)
        opts = replace(opts, batch_size=batch_size, epochs=epochs, max_steps=opts.max_steps or steps)
    accelerator.print(f"draft: {count_params(draft):,} parameters; {opts.method}"
                      + (f" k={opts.k} {opts.selection}" if selective else "")
                      + f"; {len(items)} examples, {epochs:g} epochs, global batch {opts.batch_size}")
    result = train_loop(opts, accelerator, draft, tokenizer, items, token_loss, validate,
                        best_key="alpha_greedy", higher_is_better=True, epochs=epochs,
                        normalize=opts.normalize, prepare_items=prepare_items if on_policy else None)
    if accelerator.is_main_process:
        tokenizer.save_pretrained(opts.output)
        summary = {"params": count_params(draft), "steps": result.steps, "best_alpha_greedy": result.best_metric,
                   "epochs": epochs, "batch_size": opts.batch_size, "history": result.history}
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1))

