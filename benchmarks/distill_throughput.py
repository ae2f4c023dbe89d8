"""Draft-training throughput of distillation: target + reference on the fly vs an offline teacher cache.

Variants, each run in a fresh subprocess (so peak RSS is its own):
  (a) onthefly: the official AdaSPEC trainer's approach, the target and the reference run forward on every
      step (`distill` without --teacher-cache);
  (b) cached:   `adaspec cache` once (its own subprocess: build time and peak RSS reported separately),
      then `distill --teacher-cache`: no target or reference forward during training;
  (c) draft_alone: for scale, the same draft trained by plain cross-entropy on the same data
      (`train-target --model`), i.e. training the draft with no teacher at all.
(a) and (b) start from the same draft (the reference, as in the paper), see the same batches in the same
order and run the same number of steps. Their drafts are scored by the analytic greedy and sampling α
(acceptance.analytic_alpha) on the target's greedy continuations of validation prompts, and on the
validation prompts followed by the dataset's responses (a briefly trained target's greedy continuations
are repetitive, which makes α on them close to 1 for any draft).

Throughput is steady-state draft-training tokens (attention-mask tokens, as train_loop counts them) per
second between the second and the last step: model loading, validation continuations and saving are
outside it. Each measured process runs torch on --threads threads (default 1) and the headline figure is
tokens per CPU-second of that process: on an idle machine it equals wall-clock, and unlike wall-clock it
does not depend on what else shares the CPU. Wall-clock tokens/s are reported beside it. The cache's build
(CPU) time is amortised over the epochs trained on it (figures for 1, 3 and 10 epochs too).
Also reported: the cached divergence's error against the exact one at several K on the real target.

Without --target/--ref this builds its own small setup first: a 4k BPE tokenizer on the task's training
text, the target (preset neox-target-m) trained briefly, and a reference (neox-draft-xs) trained briefly
by SFT on the same data. The paper's reference is a KD-distilled draft; an SFT one has the same cost
profile, which is what is measured here, and both variants use the same one.

    python benchmarks/distill_throughput.py                    # the default run, ~10 min on 2 CPU cores
    python benchmarks/distill_throughput.py --target T --ref R --limit 1024 --epochs 3 --top-k 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaspec import data as data_lib  # noqa: E402
from adaspec.decoding.acceptance import Continuations, analytic_alpha, greedy_continuations  # noqa: E402
from adaspec.distill import losses  # noqa: E402
from adaspec.models import load_model, load_tokenizer  # noqa: E402

# ------------------------------------------------------------------------------------------ child side


def _peak_rss_mib(reset: bool = False) -> float:
    """Peak RSS of this process. ru_maxrss alone would carry the parent's size over fork + exec, so the
    child resets the kernel's high-water mark first (/proc/self/clear_refs) and reads VmHWM."""
    try:
        if reset:
            Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(spec_path: str) -> None:
    _peak_rss_mib(reset=True)
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    result: dict = {"threads": torch.get_num_threads()}
    t0, c0 = time.perf_counter(), time.process_time()
    if spec["kind"] == "cache":
        from adaspec.recipes.cache import CacheOptions, run_cache

        manifest = run_cache(CacheOptions(**spec["options"]))
        result.update(
            build_seconds=manifest["build_seconds"],
            build_cpu_seconds=time.process_time() - c0,
            size_bytes=manifest["size_bytes"],
        )
    else:
        from adaspec.recipes.distill import DistillOptions, run_distill
        from adaspec.recipes.train_target import TrainTargetOptions, run_train_target

        starts: list[float] = []
        cpu: list[float] = []
        tokens: list[int] = []
        response: list[int] = []

        def timed(step: int, batches: list[dict]) -> None:
            starts.append(time.perf_counter())
            cpu.append(time.process_time())
            tokens.append(sum(int(b["attention_mask"].sum()) for b in batches))
            response.append(sum(int(data_lib.response_mask(b["labels"]).sum()) for b in batches))

        # "sft" is the draft trained alone (cross-entropy on the same data): the cost floor of any recipe
        if spec["kind"] == "sft":
            run_train_target(TrainTargetOptions(**spec["options"]), on_step=timed)
        else:
            run_distill(DistillOptions(**spec["options"]), on_step=timed)
        # interval i..i+1 is step i's forward, backward and optimizer step; the first is warm-up
        span, cpu_span, n = starts[-1] - starts[1], cpu[-1] - cpu[1], sum(tokens[1:-1])
        result.update(
            steps=len(starts),
            train_seconds=starts[-1] - starts[0],
            tokens_per_cpu_s=n / cpu_span,
            tokens_per_s=n / span,
            response_tokens_per_cpu_s=sum(response[1:-1]) / cpu_span,
            cpu_seconds_per_step=cpu_span / (len(starts) - 2),
            seconds_per_step=span / (len(starts) - 2),
            median_seconds_per_step=statistics.median(b - a for a, b in zip(starts[1:], starts[2:])),
            tokens_per_step=sum(tokens) / len(tokens),
        )
    result["wall_seconds"] = time.perf_counter() - t0
    result["peak_rss_mib"] = _peak_rss_mib()
    Path(spec["result"]).write_text(json.dumps(result, indent=1))


def _spawn(work: Path, name: str, kind: str, options: dict, threads: int) -> dict:
    spec = {"kind": kind, "options": options, "threads": threads, "result": str(work / f"{name}.result.json")}
    spec_path = work / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    print(f"--- {name}: {kind} in a fresh process", flush=True)
    proc = subprocess.run([sys.executable, __file__, "--child", str(spec_path)], cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {proc.returncode}")
    return json.loads(Path(spec["result"]).read_text())


# ------------------------------------------------------------------------------------------ parent side


def _setup(args: argparse.Namespace, work: Path) -> tuple[str, str, float | None]:
    """A briefly trained target and reference (reused from an earlier run with the same settings)."""
    from adaspec.recipes.train_target import TrainTargetOptions, run_train_target

    settings = {k: getattr(args, k) for k in ("task", "max_length", "target_steps", "ref_steps", "seed", "setup_limit")}
    stamp = work / "setup.json"
    target, ref = work / "target", work / "ref"
    if stamp.exists() and json.loads(stamp.read_text()) == settings and (ref / "config.json").exists():
        print(f"reusing the target and reference in {work}")
        return str(target), str(ref), None
    shutil.rmtree(target, ignore_errors=True)
    shutil.rmtree(ref, ignore_errors=True)
    common = dict(
        task=args.task,
        limit=args.setup_limit,
        max_length=args.max_length,
        batch_size=16,
        val_every=0,
        val_examples=16,
        save_every=10**6,
        warmup_steps=10,
        seed=args.seed,
        train_on_prompt=True,
        progress=args.progress,
        lr=2e-3,
    )
    t0 = time.perf_counter()
    run_train_target(
        TrainTargetOptions(output=str(target), preset="neox-target-m", max_steps=args.target_steps, **common)
    )
    run_train_target(
        TrainTargetOptions(
            output=str(ref), preset="neox-draft-xs", tokenizer=str(target), max_steps=args.ref_steps, **common
        )
    )
    seconds = time.perf_counter() - t0
    print(f"setup: target and reference trained in {seconds:.0f}s")
    stamp.write_text(json.dumps(settings))
    return str(target), str(ref), seconds


def _val_sets(args: argparse.Namespace, target_dir: str) -> tuple[Continuations, Continuations]:
    """Validation prompts with the target's greedy continuations, and with the dataset's responses.

    A briefly trained target's greedy continuations are repetitive, so α on them says little; α on the
    reference responses (argmax agreement and Σ min(p, q) at the same positions) tells the drafts apart.
    """
    from adaspec.data.options import load_split

    ns = argparse.Namespace(task=args.task, data=None, prompt_field="prompt", response_field="response", data_dir=None)
    tok = load_tokenizer(target_dir)
    items = data_lib.encode(load_split(ns, "validation", args.val_examples), tok, args.max_length)
    prompts = [it["input_ids"][: it["prompt_length"]] for it in items]
    continuations = greedy_continuations(load_model(target_dir), prompts, args.val_max_new_tokens, tok.eos_token_id)
    reference = Continuations([it["input_ids"] for it in items], [it["prompt_length"] for it in items])
    return continuations, reference


def _topk_error(args: argparse.Namespace, target_dir: str, drafts: dict[str, str], ks: list[int]) -> dict:
    """Mean |cached - exact| per-token divergence to the target on training tokens, per model and K.

    For the reference it is the error of the cached L_ref; for a draft, of its training loss."""
    from adaspec.data.options import load_split

    ns = argparse.Namespace(task=args.task, data=None, prompt_field="prompt", response_field="response", data_dir=None)
    tok = load_tokenizer(target_dir)
    items = data_lib.encode(load_split(ns, "train", 32), tok, args.max_length)
    target = load_model(target_dir)
    report = {"divergence": args.divergence, "examples": len(items)}
    for name, path in drafts.items():
        draft = load_model(path)
        err = {k: 0.0 for k in ks}
        exact_sum, n = 0.0, 0
        with torch.inference_mode():
            for s in range(0, len(items), 16):
                batch = data_lib.collate(items[s : s + 16], tok.pad_token_id or 0)
                mask = data_lib.response_mask(batch["labels"])
                x = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                p, q = target(**x).logits[:, :-1][mask], draft(**x).logits[:, :-1][mask]
                exact = losses.per_token_divergence(args.divergence, p, q)
                exact_sum += float(exact.sum())
                n += int(mask.sum())
                for k in ks:
                    ids, lps = losses.topk_teacher(p, k)
                    err[k] += float((losses.sparse_divergence(args.divergence, ids, lps, q) - exact).abs().sum())
        report[name] = {
            "tokens": n,
            "exact_mean": exact_sum / n,
            "mean_abs_error": {str(k): v / n for k, v in err.items()},
            "relative_error": {str(k): v / exact_sum for k, v in err.items()},
        }
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--target", help="trained target directory (default: build and train one)")
    p.add_argument("--ref", help="reference model directory (default: build and train one)")
    p.add_argument("--draft-init", help="initial draft (default: the reference, as in the paper)")
    p.add_argument("--task", default="gsm8k")
    p.add_argument("--limit", type=int, default=384, help="training examples distilled on")
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=float, default=2.0, help="distillation epochs over --limit examples")
    p.add_argument("--method", choices=["adaspec", "kd"], default="adaspec")
    p.add_argument("--k", type=float, default=0.4, help="AdaSPEC token fraction")
    p.add_argument("--divergence", default="fkl", choices=list(losses.KINDS))
    p.add_argument("--top-k", type=int, default=64, help="K of the cache")
    p.add_argument("--error-ks", type=int, nargs="+", default=[20, 64, 256])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--target-steps", type=int, default=60, help="setup: target training steps")
    p.add_argument("--ref-steps", type=int, default=60, help="setup: reference training steps")
    p.add_argument("--setup-limit", type=int, default=2000, help="setup: training examples")
    p.add_argument("--val-examples", type=int, default=48)
    p.add_argument("--val-max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_distill_throughput"))
    p.add_argument("--output", default=str(ROOT / "results" / "benchmarks" / "distill_throughput.json"))
    p.add_argument("--threads", type=int, default=1, help="torch threads of each measured process")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False)
    args = p.parse_args()
    if args.child:
        _child(args.child)
        return

    t_start = time.perf_counter()
    load_before = os.getloadavg()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    setup_seconds = None
    if args.target and args.ref:
        target_dir, ref_dir = args.target, args.ref
    elif args.target or args.ref:
        raise SystemExit("give both --target and --ref, or neither")
    else:
        target_dir, ref_dir, setup_seconds = _setup(args, work)
    draft_init = args.draft_init or ref_dir
    ref = ref_dir if args.method == "adaspec" else None

    val, val_reference = _val_sets(args, target_dir)
    data_opts = dict(task=args.task, limit=args.limit, max_length=args.max_length)
    cache_dir = work / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cache = _spawn(
        work,
        "cache",
        "cache",
        dict(
            target=target_dir,
            ref=ref,
            output=str(cache_dir),
            batch_size=args.batch_size,
            top_k=args.top_k,
            divergence=args.divergence,
            progress=args.progress,
            **data_opts,
        ),
        args.threads,
    )

    variants = {}
    for name, extra in (("onthefly", {}), ("cached", {"teacher_cache": str(cache_dir)})):
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        # the same validation continuations for both, made once here rather than inside the timed runs
        (out / "val_continuations.json").write_text(json.dumps(val.to_json()))
        variants[name] = _spawn(
            work,
            name,
            "distill",
            dict(
                output=str(out),
                target=target_dir,
                ref=ref,
                draft_init=draft_init,
                method=args.method,
                k=args.k,
                divergence=args.divergence,
                batch_size=args.batch_size,
                epochs=args.epochs,
                lr=args.lr,
                warmup_steps=5,
                val_every=0,
                save_every=10**6,
                val_examples=args.val_examples,
                val_max_new_tokens=args.val_max_new_tokens,
                seed=args.seed,
                progress=args.progress,
                resume=False,
                **extra,
                **data_opts,
            ),
            args.threads,
        )

    out = work / "draft_alone"
    shutil.rmtree(out, ignore_errors=True)
    variants["draft_alone"] = _spawn(
        work,
        "draft_alone",
        "sft",
        dict(
            output=str(out),
            model=draft_init,
            tokenizer=target_dir,
            batch_size=args.batch_size,
            epochs=args.epochs,
            lr=args.lr,
            warmup_steps=5,
            val_every=0,
            save_every=10**6,
            val_examples=8,
            seed=args.seed,
            progress=args.progress,
            resume=False,
            **data_opts,
        ),
        args.threads,
    )

    target = load_model(target_dir)
    alphas = {}
    for name, path in {"init": draft_init, "onthefly": str(work / "onthefly"), "cached": str(work / "cached")}.items():
        draft = load_model(path)
        on_cont = analytic_alpha(target, draft, val)
        on_ref = analytic_alpha(target, draft, val_reference)
        alphas[name] = {
            "alpha_greedy": on_cont["alpha_greedy"],
            "alpha_sampling": on_cont["alpha_sampling"],
            "alpha_greedy_reference_text": on_ref["alpha_greedy"],
            "alpha_sampling_reference_text": on_ref["alpha_sampling"],
            "n_tokens": on_cont["n_tokens"],
            "n_tokens_reference_text": on_ref["n_tokens"],
        }
    errors = _topk_error(
        args,
        target_dir,
        {"reference": ref_dir, "cached_draft": str(work / "cached")},
        sorted(set(args.error_ks + [args.top_k])),
    )

    a, b = variants["onthefly"], variants["cached"]
    ratio_cpu = b["tokens_per_cpu_s"] / a["tokens_per_cpu_s"]
    ratio_wall = b["tokens_per_s"] / a["tokens_per_s"]
    tokens_per_epoch = a["tokens_per_step"] * (args.limit // args.batch_size)
    amortised = {}
    for epochs in sorted({1, 3, 10, args.epochs}):
        t_a = epochs * tokens_per_epoch / a["tokens_per_cpu_s"]
        t_b = epochs * tokens_per_epoch / b["tokens_per_cpu_s"] + cache["build_cpu_seconds"]
        amortised[f"{epochs:g}"] = round(t_a / t_b, 3)
    loss = {
        key: round(100 * (alphas["onthefly"][key] - alphas["cached"][key]), 3)
        for key in ("alpha_greedy", "alpha_sampling", "alpha_greedy_reference_text", "alpha_sampling_reference_text")
    }
    command = "python benchmarks/distill_throughput.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    rnd = lambda d: {k: (round(v, 5) if isinstance(v, float) else v) for k, v in d.items()}  # noqa: E731
    report = {
        "command": command.strip(),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads_per_variant": args.threads,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "child"},
            "target": target_dir,
            "ref": ref_dir,
            "draft_init": draft_init,
            "vocab": len(load_tokenizer(target_dir)),
        },
        "cache": rnd({**cache, "size_mib": cache["size_bytes"] / 2**20}),
        "variants": {k: rnd(v) for k, v in variants.items()},
        "alpha": {k: rnd(v) for k, v in alphas.items()},
        "alpha_loss_points": loss,
        "throughput_ratio_cpu": round(ratio_cpu, 3),
        "cached_cost_vs_draft_alone_cpu": round(variants["draft_alone"]["tokens_per_cpu_s"] / b["tokens_per_cpu_s"], 3),
        "throughput_ratio_wall": round(ratio_wall, 3),
        # both variants see the same batches: the ratio of median step times, robust to bursts of other load
        "throughput_ratio_median_step_wall": round(a["median_seconds_per_step"] / b["median_seconds_per_step"], 3),
        "throughput_ratio_cpu_with_build_amortised_over_epochs": amortised,
        "topk_error": errors,
        "goal": {
            "throughput_ratio_cpu_at_least_3": ratio_cpu >= 3.0,
            "alpha_greedy_loss_at_most_half_point": loss["alpha_greedy"] <= 0.5,
            "alpha_greedy_reference_text_loss_at_most_half_point": loss["alpha_greedy_reference_text"] <= 0.5,
        },
        "total_seconds": round(time.perf_counter() - t_start, 1),
        # None: the target and reference came from --target/--ref or an earlier run (see `settings`)
        "setup_seconds": setup_seconds and round(setup_seconds, 1),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k not in ("machine", "settings")}, indent=1))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
