"""One benchmark of every drafter, side by side: the same prompts, one run, the methods in a rotating order,
medians over repeats (`benchmarks/drafters.py` is the command line).

Rows per prompt set and temperature: the target alone (adaspec's loop, the baseline every ratio is taken
against), the target alone through transformers' `generate`, adaspec speculative decoding with each
drafter (draft models and heads, chain of γ), transformers' assisted generation with the first draft model
and its prompt-lookup decoding as the peers. Per row: tokens/s, ratio to the target alone, α, τ, c,
the measured cost of verifying γ+1 tokens relative to one target forward, the speed-up predicted from the
run's own measured forward costs (τ · t₁ / (draft time + verification time per step)) and measured /
predicted (what the loop around the forwards costs).
"""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import torch
import transformers
from transformers import PreTrainedModel

from adaspec import data
from adaspec.core.metrics import SpecStats
from adaspec.decoding.drafter import Drafter
from adaspec.decoding.generate import speculative_generate, target_only_generate
from adaspec.drafters.loading import load_drafter
from adaspec.errors import AdaspecError
from adaspec.evaluation.speed import Run, forward_ms, timed_rounds
from adaspec.models import check_vocab_compatible, count_params, load_model, saved_tokenizer
from adaspec.models.lean import LeanLM, lean_supported
from adaspec.models.target import Clock

BASELINE = "target"


def build_runs(
    target: PreTrainedModel,
    drafters: dict[str, PreTrainedModel | Drafter],
    gamma: int,
    temperature: float,
    max_new_tokens: int,
    eos: int | None,
    seed: int = 0,
) -> dict[str, Run]:
    """name -> function(ids) returning (output ids [1, n], SpecStats or None)."""
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        if temperature > 0
        else {"do_sample": False}
    )

    def hf(ids: torch.Tensor, **kw: Any) -> tuple[torch.Tensor, None]:
        out = target.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=eos or 0,
            **sampling,
            **kw,
        )
        return out, None

    def sd(drafter: PreTrainedModel | Drafter) -> Run:
        return lambda ids: speculative_generate(
            target, drafter, ids, max_new_tokens, gamma=gamma, temperature=temperature, eos_token_id=eos, seed=seed
        )

    runs: dict[str, Run] = {
        BASELINE: lambda ids: target_only_generate(
            target, ids, max_new_tokens, eos_token_id=eos, temperature=temperature, seed=seed
        ),
        "hf_generate": hf,
    }
    runs.update({f"sd_{name}": sd(d) for name, d in drafters.items()})
    assistant = next((d for d in drafters.values() if isinstance(d, PreTrainedModel)), None)
    if assistant is not None:
        # assisted generation drafting exactly γ tokens per step, like adaspec's chain
        assistant.generation_config.num_assistant_tokens = gamma
        assistant.generation_config.num_assistant_tokens_schedule = "constant"
        assistant.generation_config.assistant_confidence_threshold = 0.0
        runs["hf_assisted"] = lambda ids: hf(ids, assistant_model=assistant)
    if temperature == 0:  # transformers' prompt lookup is greedy only
        runs["hf_prompt_lookup"] = lambda ids: hf(ids, prompt_lookup_num_tokens=gamma)
    return runs


def _rate(x: float) -> float | None:
    return None if x is None or x != x else float(x)


def rows(rounds: Any, names: list[str], verify_ratio: float) -> list[dict[str, Any]]:
    """One row per method from the timed rounds (ratios per repeat, then the median)."""
    base_tps = [n / t for n, t in zip(rounds.tokens[BASELINE], rounds.times[BASELINE])]
    base: SpecStats = rounds.stats[BASELINE]
    t1 = base.decode_time_s / max(base.emitted, 1)  # target-alone seconds per token
    reference = rounds.outputs[BASELINE]
    out = []
    for name in names:
        tps = [n / t for n, t in zip(rounds.tokens[name], rounds.times[name])]
        row: dict[str, Any] = {
            "method": name,
            "tokens_per_s": statistics.median(tps),
            "vs_target": statistics.median(a / b for a, b in zip(tps, base_tps)),
            "alpha": None,
            "alpha_drafted": None,
            "tau": None,
            "c": None,
            "verify_cost_ratio": None,
            "predicted_speedup": None,
            "measured_over_predicted": None,
            "position_acceptance": None,
            "outputs_differing": sum(a != b for a, b in zip(rounds.outputs[name], reference)),
        }
        s: SpecStats = rounds.stats[name]
        if name.startswith("sd_") and s.steps:
            step_s = (s.draft_time_s + s.target_time_s) / s.steps
            predicted = s.tau * t1 / step_s if step_s > 0 else float("nan")
            row.update(
                alpha=_rate(s.alpha),
                alpha_drafted=_rate(s.alpha_drafted),
                tau=_rate(s.tau),
                c=_rate(s.c),
                position_acceptance=[_rate(a) for a in s.position_acceptance],
                verify_cost_ratio=verify_ratio,
                predicted_speedup=_rate(predicted),
                measured_over_predicted=_rate(row["vs_target"] / predicted),
            )
        out.append(row)
    return out


@torch.inference_mode()
def decode_forward_ms(
    model: PreTrainedModel, ids: torch.Tensor, sizes: tuple[int, ...], reps: int = 30
) -> dict[int, float]:
    """Median milliseconds of one cached forward of n tokens after the prompt `ids` [1, T], for each n in
    `sizes`, on the decode path the runs use (lean where supported, else transformers')."""
    if lean_supported(model) is not None:
        return {n: forward_ms(model, ids, n, reps) for n in sizes}
    lm = LeanLM(model, model.get_output_embeddings().weight.shape[0], "model")
    lm.forward(ids[0])
    clock, times = Clock(ids.device), {n: [] for n in sizes}
    for _ in range(reps):
        for k in sizes:
            t0 = clock()
            lm.forward(ids[0, -k:] if ids.shape[1] >= k else ids[0, :1].repeat(k), keep=k)
            times[k].append(clock() - t0)
            lm.crop(lm.seen - k)
    return {n: 1e3 * statistics.median(t) for n, t in times.items()}


def verify_cost(target: PreTrainedModel, ids: torch.Tensor, n: int, reps: int = 30) -> float:
    """Time of one cached forward of `n` tokens over one of 1 token, on the decode path the runs use."""
    ms = decode_forward_ms(target, ids, (1, n), reps)
    return ms[n] / ms[1]


def task_prompts(task: str, tokenizer: Any, n: int, room: int, device: torch.device) -> list[torch.Tensor]:
    """The first `n` test prompts of `task` as token ids [1, T] on `device`, cut from the left to `room`."""
    examples = data.load_task(task, "test", limit=n)
    return [torch.tensor([data.encode_prompt(ex, tokenizer, room)], device=device) for ex in examples]


def benchmark(
    target: PreTrainedModel,
    tokenizer: Any,
    drafters: dict[str, PreTrainedModel | Drafter],
    tasks: list[str],
    n_prompts: int,
    max_new_tokens: int,
    gamma: int,
    temperatures: list[float],
    repeats: int,
    context: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Every method on every task's test prompts at every temperature; a JSON-ready result."""
    device = next(target.parameters()).device
    eos = tokenizer.eos_token_id
    room = context - max_new_tokens
    if room < 1:
        raise AdaspecError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in {context} positions")
    verify_ratio = None
    load_before = os.getloadavg()[0]  # a shared machine's other work slows both sides, not alike
    all_rows: list[dict[str, Any]] = []
    for task in tasks:
        prompts = task_prompts(task, tokenizer, n_prompts, room, device)
        if verify_ratio is None:
            verify_ratio = verify_cost(target, prompts[0], gamma + 1)
        for temperature in temperatures:
            runs = build_runs(target, drafters, gamma, temperature, max_new_tokens, eos, seed)
            names = list(runs)
            print(f"--- {task}, temperature {temperature}: {', '.join(names)}", flush=True)
            rounds = timed_rounds(runs, names, prompts, repeats, device)
            for row in rows(rounds, names, verify_ratio):
                all_rows.append({"prompts": f"{task}:test", "temperature": temperature, **row})
    return {
        "target_params": count_params(target),
        "gamma": gamma,
        "n_prompts": n_prompts,
        "max_new_tokens": max_new_tokens,
        "repeats": repeats,
        "context": context,
        "verify_cost_ratio": verify_ratio,
        "decode_path": lean_supported(target) or "lean",
        "threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": str(next(target.parameters()).dtype),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.processor() or platform.machine(),
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "rows": all_rows,
    }


def format_rows(result: dict[str, Any]) -> str:
    """The terminal / README table of a result."""

    def f(x: Any, spec: str = ".2f") -> str:
        return "-" if x is None else format(x, spec)

    lines = [
        "| prompts | T | method | tokens/s | vs target | α | τ | c | predicted | measured / predicted |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['prompts']} | {r['temperature']:g} | {r['method']} | {r['tokens_per_s']:.1f} | "
            f"{r['vs_target']:.2f}× | {f(r['alpha'])} | {f(r['tau'])} | {f(r['c'], '.3f')} | "
            f"{f(r['predicted_speedup'])} | {f(r['measured_over_predicted'])} |"
        )
    return "\n".join(lines)


def named_paths(values: list[str], what: str) -> dict[str, str]:
    """NAME=DIR command-line values as {NAME: DIR} (one-line error naming the flag otherwise)."""
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise AdaspecError(f"{what} must be NAME=DIR, got {v!r}")
        out[name] = path
    return out


def named_sources(drafts: list[str], heads: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (drafter family, folder) of --draft NAME=DIR models ("lm") and --head KIND[:NAME]=DIR heads."""
    sources = {name: ("lm", path) for name, path in named_paths(drafts, "--draft").items()}
    for spec, path in named_paths(heads, "--head").items():
        kind, _, name = spec.partition(":")
        sources[name or kind] = (kind, path)
    return sources


def load_named_drafters(
    drafts: list[str],
    heads: list[str],
    target: PreTrainedModel,
    tokenizer: Any,
    device: torch.device,
    dtype: torch.dtype | None = None,
) -> dict[str, PreTrainedModel | Drafter]:
    """--draft NAME=DIR models (vocabulary checked against the target) and --head KIND[:NAME]=DIR drafters."""
    drafters: dict[str, PreTrainedModel | Drafter] = {}
    for name, (kind, path) in named_sources(drafts, heads).items():
        if kind == "lm":
            model = load_model(path, device=device, dtype=dtype)
            check_vocab_compatible(target, model, tokenizer, saved_tokenizer(path), names=("target", name))
            drafters[name] = model
        else:
            drafters[name] = load_drafter(kind, path, target)
    return drafters
