"""`adaspec build`: your target and your data in; every drafter family trained, measured, the best exported.

Stages, each skipped when its output in --output is complete, so a killed build resumes where it stopped:
  1. data     the records of --data split once (seeded) into data/{train,validation,test}.jsonl: the test
              prompts are never trained or validated on
  2. cache    the target's top-K per response token of the training split (`adaspec cache`), read by the
              draft model's KD run; then the same with the KD draft's L_ref, read by its AdaSPEC run
  3. train    per family of --drafters: KD on every token (the reference), then AdaSPEC against it at the
              same optimizer steps (`distill`, `train-head`), under runs/<family>_<method>/
  4. eval     every drafter on the held-out test prompts at each γ of --gammas in adaspec's engine (α, τ,
              per-position acceptance, speed against the target alone), eval/gamma<γ>.json; with vLLM
              installed (--engine auto) each drafter again in vLLM at its best γ, eval/vllm_gamma<γ>.json
  5. export   the fastest drafter in the layouts vLLM and SGLang load, export/{vllm,sglang}
  6. report   results.json, report.md and speed_vs_gamma.png, ending with the commands that serve it
(adaspec.recipes.build.plan holds the pure choices: families, draft architecture, splits, the winner.)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from adaspec.errors import AdaspecError
from adaspec.io import atomic_write_json
from adaspec.options import check_range, helptext
from adaspec.recipes.build import plan
from adaspec.safety import guarded_output
from adaspec.training.options import TrainOptions

ENGINES = ("auto", "adaspec", "vllm")


@dataclass(kw_only=True)
class BuildOptions(TrainOptions):
    """Turn your own target and data into the drafter that serves it best: split the data, train a KD and an
    AdaSPEC drafter of every family the target's server can load, measure each on held-out prompts, export
    the fastest for vLLM and SGLang and write a report. --max-steps / --epochs are the budget of each training
    run; --max-minutes is the whole build's training time, shared equally by its runs (every KD and AdaSPEC
    run gets the same budget)."""

    # build reads only --data: the built-in tasks are `adaspec reproduce`'s
    task: str | None = field(default=None, metadata={"cli": False, "help": "unused: build trains on --data"})
    data: str | None = field(
        default=None,
        metadata=helptext(
            "your data: a JSONL file of prompt/response records or chat `messages`/`conversations`, split here; or "
            "a folder of train/validation/test.jsonl, whose splits are kept (or hub:<name>)"
        ),
    )
    target: str = field(metadata=helptext("your target: a model directory or hub id (its tokenizer is used)"))
    drafters: list[str] | None = field(
        default=None,
        metadata=helptext(
            "drafter families to train (lm = a small draft model, or a head family: the README's drafter table); "
            "default: every family vLLM can serve on this target, but the opt-in ones (DFlash) only when named"
        ),
    )
    draft_init: str | None = field(
        default=None,
        metadata=helptext(
            "a small draft model (directory or hub id) sharing the target's tokenizer to start the lm drafters "
            "from; default: one built for the target (--preset)"
        ),
    )
    preset: str | None = field(
        default=None,
        metadata=helptext(
            "architecture of the draft built when there is no --draft-init (default: the largest servable Llama "
            "draft preset at most a quarter of the target's width)"
        ),
    )
    test_examples: int = field(
        default=32,
        metadata=helptext("records held out as test prompts (--val-examples more are held out for validation)"),
    )
    gammas: list[int] = field(
        default_factory=lambda: [1, 2, 3, 4],
        metadata=helptext("draft lengths γ each drafter is measured at (heads are trained for the largest)"),
    )
    max_new_tokens: int = field(default=64, metadata=helptext("tokens generated per test prompt"))
    top_k: int = field(default=64, metadata=helptext("target probabilities cached per response token"))
    engine: Literal["auto", "adaspec", "vllm"] = field(
        default="auto",
        metadata=helptext(
            "where speed is measured: adaspec's engine always; vllm also in vLLM (auto: when `make vllm` was run)"
        ),
    )
    vllm_python: str | None = field(
        default=None, metadata=helptext("python of vLLM's environment (unset: $ADASPEC_VLLM_PYTHON, else .venv-vllm)")
    )
    vllm_eager: bool = field(
        default=False,
        metadata=helptext(
            "vLLM without model compilation (starts ~45 s sooner per drafter, decodes slower than a server does)"
        ),
    )
    trust_remote_code: bool = field(default=False, metadata=helptext("allow a hub model's own code to run"))

    def __post_init__(self) -> None:
        if self.data is None:
            raise AdaspecError(
                "adaspec build needs --data: your JSONL file (the built-in tasks are for `adaspec reproduce`)"
            )
        super().__post_init__()
        if self.drafters is not None:
            from adaspec.drafters import FAMILIES  # torch: here, not at import (--help)

            unknown = [d for d in self.drafters if d not in FAMILIES]
            if unknown or not self.drafters:
                raise AdaspecError(
                    f"--drafters takes {', '.join(FAMILIES)}; got {' '.join(self.drafters) or 'nothing'}"
                )
            self.drafters = [f for f in FAMILIES if f in self.drafters]
        if not self.gammas or any(not 1 <= g <= plan.MAX_GAMMA for g in self.gammas):
            raise AdaspecError(f"--gammas must be in 1..{plan.MAX_GAMMA}, got {self.gammas}")
        self.gammas = sorted(set(self.gammas))
        check_range(self, "test_examples", 1, plan.MAX_HELD_OUT)
        check_range(self, "val_examples", 1, plan.MAX_HELD_OUT)
        check_range(self, "max_new_tokens", 1, self.max_length - 1)
        check_range(self, "top_k", 1, 1 << 16)
        if self.preset is not None:
            from adaspec.models import check_preset  # transformers only once a preset is named

            check_preset(self.preset)


def _log(msg: str) -> None:
    print(f"[build {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _done(path: Path) -> bool:
    return (path / "train_summary.json").exists()


# the options whose change makes another build; the rest (progress, engine, resume, ...) only change how
# this one runs or is measured, and --drafters only which of its runs are trained and reported: a family
# added later trains beside the ones already done, with the same settings
_NOT_FINGERPRINTED = (
    "progress",
    "resume",
    "overwrite",
    "engine",
    "vllm_python",
    "vllm_eager",
    "save_every",
    "output",
    "drafters",
)


class Build:
    def __init__(self, opts: BuildOptions) -> None:
        self.opts = opts
        self.out = Path(opts.output)
        self.data_dir = self.out / "data"
        self.run_minutes: float | None = None  # --max-minutes shared by the training runs

    @functools.cached_property
    def target_config(self) -> dict[str, Any]:
        """The target's config, read once: the families, the draft preset and the EAGLE variant all ask it."""
        return plan.read_config(self.opts.target, self.opts.trust_remote_code)

    # ---- stage 0: inputs checked before anything is trained ----

    def fingerprint(self) -> dict[str, Any]:
        from adaspec.training.run_fingerprint import path_fingerprint

        options = {
            f.name: getattr(self.opts, f.name)
            for f in dataclasses.fields(self.opts)
            if f.name not in _NOT_FINGERPRINTED
        }
        options["target"] = path_fingerprint(self.opts.target)
        options["data"] = path_fingerprint(self.opts.data)
        options["draft_init"] = path_fingerprint(self.opts.draft_init) if self.opts.draft_init else None
        return options

    def claim_output(self) -> None:
        """Refuse an --output holding another build; resume one whose fingerprint matches."""
        record = self.out / "build.json"
        mine = json.loads(json.dumps(self.fingerprint()))
        if record.exists() and self.opts.overwrite:
            for name in plan.BUILD_FOLDERS:
                shutil.rmtree(self.out / name, ignore_errors=True)
            record.unlink()
        if record.exists():
            theirs = json.loads(record.read_text())
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if differ:
                raise AdaspecError(
                    f"--output {self.out} holds another build (it differs in {', '.join(differ)}); "
                    f"give another --output, or --overwrite to replace it"
                )
            _log(f"resuming the build in {self.out}")
        elif self.out.exists() and any(not p.name.startswith(".") for p in self.out.iterdir()):
            raise AdaspecError(f"--output {self.out} is not empty and holds no build; give an empty or new folder")
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(record, mine)

    # ---- stage 1: data ----

    def split(self) -> dict[str, Any]:
        path = self.data_dir / "split.json"
        if path.exists():
            return json.loads(path.read_text())
        from adaspec import data as data_lib

        def read(split: str, limit: int | None) -> list:
            return data_lib.load_examples(
                data_path=self.opts.data,
                split=split,
                limit=limit,
                prompt_field=self.opts.prompt_field,
                response_field=self.opts.response_field,
            )

        if Path(self.opts.data).is_dir():  # the user's own splits (train/validation/test.jsonl), kept as given
            splits = {
                "train": read("train", self.opts.limit),
                "validation": read("validation", self.opts.val_examples),
                "test": read("test", self.opts.test_examples),
            }
            plan.check_train_batch(len(splits["train"]), self.opts.batch_size)
        else:
            splits = plan.split_examples(
                read("train", self.opts.limit),
                self.opts.test_examples,
                self.opts.val_examples,
                self.opts.batch_size,
                self.opts.seed,
            )
        examples = [ex for part in splits.values() for ex in part]
        for name, part in splits.items():
            rows = [json.dumps(plan.example_record(ex), ensure_ascii=False) for ex in part]
            (self.data_dir / f"{name}.jsonl").parent.mkdir(parents=True, exist_ok=True)
            (self.data_dir / f"{name}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
        info = {
            "source": self.opts.data,
            **{name: len(part) for name, part in splits.items()},
            "chat": sum("messages" in ex.meta for ex in examples),
        }
        atomic_write_json(path, info)
        _log(
            f"data: {info['train']} train, {info['validation']} validation, {info['test']} test records "
            f"({info['chat']} chats) -> {self.data_dir}"
        )
        return info

    def check_inputs(self, split: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        """(families to train, why each other family is left out); every refusal happens here, before training."""
        from adaspec.models import load_tokenizer

        config = self.target_config
        tokenizer = load_tokenizer(
            self.opts.target, trust_remote_code=self.opts.trust_remote_code, chat_template=self.opts.chat_template
        )
        if split["chat"] and not getattr(tokenizer, "chat_template", None):
            raise AdaspecError(
                f"{self.opts.data} holds chats but the target's tokenizer has no chat template; "
                f"pass --chat-template FILE or a built-in name (e.g. chatml)"
            )
        draft_config = (
            plan.read_config(self.opts.draft_init, self.opts.trust_remote_code) if self.opts.draft_init else None
        )
        problems = plan.serve_problems(config, draft_config)
        families, left_out = plan.choose_families(self.opts.drafters, problems)
        return families, left_out

    # ---- stages 2-3: teacher cache and training ----

    def _shared(self, output: Path) -> dict[str, Any]:
        shared = {
            f.name: getattr(self.opts, f.name)
            for f in dataclasses.fields(TrainOptions)
            if f.name
            not in ("output", "task", "data", "prompt_field", "response_field", "limit", "data_dir", "overwrite")
        }
        return {**shared, "output": str(output), "data": str(self.data_dir), "max_minutes": self.run_minutes}

    def cache(self, name: str, ref: Path | None, reader: Path) -> Path:
        """The teacher cache `reader` trains from, built unless that run is already done."""
        from adaspec.recipes.cache import CacheOptions, run_cache

        out = self.out / "cache" / name
        if _done(reader):
            return out
        _log(
            f"caching the target's top-{self.opts.top_k}" + (" and the reference's L_ref" if ref else "") + f" -> {out}"
        )
        run_cache(
            CacheOptions(
                target=self.opts.target,
                ref=str(ref) if ref else None,
                data=str(self.data_dir),
                max_length=self.opts.max_length,
                top_k=self.opts.top_k,
                output=str(out),
                progress=self.opts.progress,
                chat_template=self.opts.chat_template,
            )
        )
        return out

    def train_lm(self, method: str, ref: Path | None, cache: Path) -> Path:
        from adaspec.recipes.distill import DistillOptions, run_distill

        out = self.out / "runs" / f"lm_{method}"
        if not _done(out):
            _log(f"training the draft model with {method} -> {out}")
            start = (
                {"draft_init": self.opts.draft_init}
                if self.opts.draft_init
                else {"preset": self.draft_preset(), "init_seed": self.opts.seed}
            )
            run_distill(
                DistillOptions(
                    **self._shared(out),
                    target=self.opts.target,
                    method=method,
                    ref=str(ref) if ref else None,
                    teacher_cache=str(cache),
                    top_k=self.opts.top_k,
                    val_max_new_tokens=self.opts.max_new_tokens,
                    **start,
                )
            )
        return out

    def train_head(self, family: str, method: str, ref: Path | None) -> Path:
        from adaspec.recipes.train_head.options import TrainHeadOptions, run_train_head

        out = self.out / "runs" / f"{family}_{method}"
        if not _done(out):
            _log(f"training {family} heads with {method} -> {out}")
            # heads shaped for the largest γ measured
            from adaspec.drafters import FAMILIES

            shape = FAMILIES[family].train_options(max(self.opts.gammas), self.target_config)  # type: ignore[misc]
            run_train_head(
                TrainHeadOptions(
                    **self._shared(out),
                    target=self.opts.target,
                    kind=family,
                    method=method,
                    ref=str(ref) if ref else None,
                    init_seed=self.opts.seed,
                    val_max_new_tokens=self.opts.max_new_tokens,
                    **shape,
                )
            )
        return out

    def draft_preset(self) -> str:
        return self.opts.preset or plan.draft_preset_for(self.target_config)

    def train(self, families: list[str]) -> dict[str, Path]:
        """name ("<family>_<method>") -> trained drafter folder."""
        from adaspec.drafters import FAMILIES

        runs: dict[str, Path] = {}
        for family in families:
            if FAMILIES[family].is_draft_model:
                kd = self.train_lm("kd", None, self.cache("target", None, self.out / "runs" / "lm_kd"))
                cache = self.cache("target_ref", kd, self.out / "runs" / "lm_adaspec")
                runs["lm_kd"], runs["lm_adaspec"] = kd, self.train_lm("adaspec", kd, cache)
            else:
                kd = self.train_head(family, "kd", None)
                runs[f"{family}_kd"], runs[f"{family}_adaspec"] = kd, self.train_head(family, "adaspec", kd)
        return runs

    # ---- stages 4-6 ----

    def run(self) -> dict[str, Any]:
        from adaspec.recipes.build import measure, report

        self.claim_output()
        split = self.split()
        families, left_out = self.check_inputs(split)
        for family, why in left_out.items():
            _log(f"not training {family}: {why}")
        runs = 2 * len(families)  # a KD and an AdaSPEC run per family
        if self.opts.max_minutes is not None:
            self.run_minutes = self.opts.max_minutes / runs
            _log(
                f"{runs} training runs of about {self.run_minutes:.2f} minutes each (--max-minutes "
                f"{self.opts.max_minutes:g} in all)"
            )
        python = measure.vllm_python(self)  # before training: a vLLM asked for and missing is refused now
        measure.check_budget(self)
        runs = self.train(families)
        sweep = measure.adaspec_sweep(self, runs)
        served = measure.vllm_rows(self, runs, sweep, python)
        result = report.assemble(self, split, runs, sweep, served, left_out)
        report.export_winner(self, result)
        report.write(self, result)
        print(report.summary_table(result))
        return result


def run_build(opts: BuildOptions) -> int:
    t0 = time.perf_counter()
    with guarded_output(opts.output, {"--target": opts.target, "--data": opts.data, "--draft-init": opts.draft_init}):
        result = Build(opts).run()
    best = result["best"]
    _log(
        f"done in {(time.perf_counter() - t0) / 60:.1f} min: best {best['name']} at γ = {best['gamma']}, "
        f"{best['speedup']:.2f}x the target alone in {best['engine']}'s engine; report in "
        f"{Path(opts.output) / 'report.md'}"
    )
    sys.stdout.flush()
    return 0
