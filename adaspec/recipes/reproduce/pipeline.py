"""`adaspec reproduce`: the AdaSPEC paper's pipeline, from nothing, at a scale this machine can run.

Stages (each skipped when its output is complete, so a killed run resumes where it stopped):
  0. pretrain     (presets with pretraining, `pretrained`) the target and the draft built from their presets
                  and trained on the corpus of every task's training text (`--task corpus`), the tokenizer
                  trained there with the target; in runs/corpus/<preset>/, shared by every task
  1. target       tokenizer trained on the task, target built from a preset and trained (once, reused); with
                  pretraining: the pretrained target fine-tuned on the task's responses
  2. draft_init   the small model's starting point: briefly trained on the task (the paper starts from a
                  pretrained Pythia-31M); with pretraining: the pretrained draft as it is, as in the paper;
                  reference and every draft start from this same checkpoint
  3. cache        the target's top-K distribution per response token (`adaspec cache`)
  4. distillspec  FKL on all tokens (DistillSpec); it is also the reference model of stage 6, which is
                  what the paper's reference is: the draft's initialisation distilled with forward KL
  5. cache_ref    the same cache plus the reference's per-token divergence L_ref
  6. adaspec      selective KD, k = 0.4, top tokens by Δ, matched token budget (epochs / k)
  7. ablations    (--ablations, first seed) selection bottom / random, k ∈ {0.2, 0.6, 0.8, 1.0}, and
                  DistillSpec trained as many steps as AdaSPEC (separates selection from training longer);
                  (--long-ablations) DistillSpec and AdaSPEC both at 4x those steps
  8. heads        (--heads eagle mtp medusa) drafter heads on the same frozen target (`adaspec train-head`),
                  per seed in seed<s>/heads/<name>: EAGLE-3 and MTP with plain KD and with AdaSPEC against
                  that KD head (k = 0.4, matched token budget as the drafts), Medusa with KD, and on the
                  first seed EAGLE-1 (the final state as its feature) to compare with EAGLE-3
  9. eval         empirical greedy α from real speculative decoding on the test split, analytic α,
                  speed, target quality, drafts and heads in one evaluation per seed;
                  results/<task>/{results.json, report.md, *.png}

`--protocol official` runs stages 4 to 9 as the authors' scripts do (constant lr 3e-4, weight decay 0.1,
AdaSPEC at batch / k and epochs / k, so at DistillSpec's optimizer steps, its quantile over groups of 5
sequences as on their 8 processes x 5; AdaSPEC heads at batch / k and epochs / k too), with the controls at
those equal steps, in runs/<task>/<preset>/
official/ beside the shared target, initial draft and cache; results go to results.json's
"official_protocol" (no speed benchmark: the architectures, hence the speed per α, are the same).
`--variants` adds the acceptance-aligned variants (OFFICIAL_VARIANTS, docs/variants.md) there, every seed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from adaspec import data as data_lib
from adaspec.errors import AdaspecError
from adaspec.io import atomic_write_json
from adaspec.recipes.reproduce.options import ReproduceOptions, command_line
from adaspec.recipes.reproduce.protocols import (
    ABLATIONS,
    HEADS,
    LONG_ABLATIONS,
    OFFICIAL_ABLATIONS,
    OFFICIAL_CONTROLS,
    OFFICIAL_GROUP,
    OFFICIAL_SETTINGS,
    OFFICIAL_VARIANTS,
    PRESETS,
)
from adaspec.safety import check_output, guarded_output

if TYPE_CHECKING:
    from adaspec.recipes.train_head.options import TrainHeadOptions


def _done(path: Path) -> bool:
    return (path / "train_summary.json").exists()


def _log(msg: str) -> None:
    print(f"[reproduce {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Pipeline:
    def __init__(self, opts: ReproduceOptions) -> None:
        self.opts = opts
        self.n_train = len(data_lib.load_task(opts.task, "train", limit=PRESETS[opts.preset].train_limit))
        self.p = PRESETS[opts.preset].for_task(self.n_train)
        self.root = Path(opts.runs_dir) / opts.task / opts.preset
        self.official = opts.protocol == "official"
        # the target, initial draft and target cache are shared; everything distilled is per protocol
        self.runs = self.root / "official" if self.official else self.root
        self.seeds = list(opts.seeds) if opts.seeds else list(self.p.seeds)

    def _common(self, output: Path, seed: int = 0) -> dict:
        return dict(
            output=str(output),
            task=self.opts.task,
            limit=self.p.train_limit,
            max_length=self.p.max_length,
            batch_size=self.p.batch_size,
            seed=seed,
            progress=self.opts.progress,
            val_every=0,
            save_every=100,
        )

    def pretrained(self, role: Literal["target", "draft"]) -> Path:
        """The preset's target or draft trained on the corpus, shared by every task (the draft reads the
        target's tokenizer, trained on the corpus)."""
        from adaspec.recipes.train_target import TrainTargetOptions, run_train_target

        out = Path(self.opts.runs_dir) / data_lib.CORPUS / self.opts.preset / role
        if not _done(out):
            tokenizer = str(self.pretrained("target")) if role == "draft" else None
            epochs = self.p.pretrain_epochs if role == "target" else self.p.draft_pretrain_epochs
            preset = self.p.target if role == "target" else self.p.draft
            _log(f"pretraining the {role} ({preset}) on the corpus -> {out}")
            n = len(data_lib.load_corpus("train", limit=self.p.train_limit))
            total = max(1, n // self.p.batch_size) * epochs
            run_train_target(
                TrainTargetOptions(
                    **{**self._common(out), "task": data_lib.CORPUS, "val_every": max(1, int(total) // 8)},
                    preset=preset,
                    tokenizer=tokenizer,
                    vocab_size=self.p.vocab_size,
                    epochs=epochs,
                    lr=self.p.target_lr if role == "target" else self.p.distill_lr,
                    train_on_prompt=True,
                )
            )
        return out

    def target(self) -> Path:
        from adaspec.recipes.train_target import TrainTargetOptions, run_train_target

        out = self.root / "target"
        if not _done(out):
            # from scratch the prompts are extra text to learn the language from; a pretrained target has it
            model = (
                {"model": str(self.pretrained("target")), "train_on_prompt": False}
                if self.p.pretrain_epochs
                else {"preset": self.p.target, "vocab_size": self.p.vocab_size, "train_on_prompt": True}
            )
            _log(f"training the target ({self.p.target}) -> {out}")
            total = self._steps_per_epoch() * self.p.target_epochs
            run_train_target(
                TrainTargetOptions(
                    **{**self._common(out), "val_every": max(1, int(total) // 8)},
                    epochs=self.p.target_epochs,
                    lr=self.p.target_lr,
                    **model,
                )
            )
        return out

    def draft_init(self, target: Path) -> Path:
        from adaspec.recipes.train_target import TrainTargetOptions, run_train_target

        if self.p.draft_pretrain_epochs:
            return self.pretrained("draft")
        out = self.root / "draft_init"
        if not _done(out):
            _log(f"training the initial draft ({self.p.draft}) -> {out}")
            run_train_target(
                TrainTargetOptions(
                    **self._common(out),
                    preset=self.p.draft,
                    tokenizer=str(target),
                    epochs=self.p.draft_init_epochs,
                    lr=self.p.distill_lr,
                    train_on_prompt=True,
                )
            )
        return out

    def cache(self, target: Path, ref: Path | None, out: Path, divergence: str = "fkl") -> Path | None:
        """The target's top-K (and with `ref` its L_ref, in `divergence`) at `out`, built unless complete."""
        if not self.opts.use_cache:
            return None
        from adaspec.recipes.cache import CacheOptions, run_cache

        if not (out / "manifest.json").exists() or not json.loads((out / "manifest.json").read_text()).get(
            "complete", True
        ):
            _log(
                f"caching the target's top-{self.p.top_k}"
                + (f" and L_ref ({divergence})" if ref else "")
                + f" -> {out}"
            )
        run_cache(
            CacheOptions(
                target=str(target),
                ref=str(ref) if ref else None,
                task=self.opts.task,
                limit=self.p.train_limit,
                max_length=self.p.max_length,
                top_k=self.p.top_k,
                divergence=divergence,
                output=str(out),
                progress=self.opts.progress,
            )
        )
        return out

    def _run_cache(
        self, overrides: dict, seed: int, target: Path, ref: Path, cache: Path | None, ref_cache: Path | None
    ) -> Path | None:
        """The cache a run reads: the target's alone for KD, else one whose L_ref is in the run's Δ divergence
        (a variant measuring Δ in another divergence gets its own, cache_ref_<divergence>)."""
        if overrides.get("method") == "kd":
            return cache
        kind = overrides.get("delta_divergence")
        if kind is None or kind == "fkl":
            return ref_cache
        return self.cache(target, ref, self.runs / f"seed{seed}" / f"cache_ref_{kind}", divergence=kind)

    def distill(
        self,
        name: str,
        target: Path,
        init: Path,
        seed: int,
        cache: Path | None,
        ref: Path | None = None,
        **overrides: object,
    ) -> Path:
        from adaspec.recipes.distill import DistillOptions, run_distill

        out = self.runs / f"seed{seed}" / name
        if not _done(out):
            _log(f"distilling {name} (seed {seed}) -> {out}")
            method = "adaspec" if ref is not None else "kd"
            kwargs = dict(
                self._common(out, seed),
                target=str(target),
                draft_init=str(init),
                method=method,
                epochs=self.p.distill_epochs,
                lr=self.p.distill_lr,
                teacher_cache=str(cache) if cache else None,
                top_k=self.p.top_k if cache else None,
                val_every=max(1, int(self._steps_per_epoch() * self.p.distill_epochs) // 4),
                val_examples=48,
            )
            if self.official:
                kwargs.update(OFFICIAL_SETTINGS, budget_by="batch")
            else:
                kwargs.update(budget_by="epochs")
            if ref is not None:
                kwargs.update(ref=str(ref), k=0.4, match_token_budget=True)
                if self.official:
                    kwargs.update(selection_group=OFFICIAL_GROUP)
            overrides = dict(overrides)
            kwargs["epochs"] = kwargs["epochs"] * float(overrides.pop("epochs_scale", 1.0))
            if overrides.get("method") == "kd":
                kwargs.update(ref=None, match_token_budget=False)
            kwargs.update(overrides)
            run_distill(DistillOptions(**kwargs))
        return out

    def head_options(self, name: str, target: Path, seed: int, ref: Path | None) -> TrainHeadOptions:
        """The train-head run `name` of HEADS on the frozen target, with the drafts' protocol and token budget."""
        from adaspec.drafters import FAMILIES
        from adaspec.recipes.train_head.options import TrainHeadOptions

        out = self.runs / f"seed{seed}" / "heads" / name
        spec = {k: v for k, v in HEADS[name].items() if k not in ("ref", "first_seed", "label")}
        # sized to draft γ per step (MTP and Medusa depths); EAGLE's training-time test unrolls head_ttt_steps
        shape = FAMILIES[spec["kind"]].train_shape(self.p.gamma, self.p.head_ttt_steps)  # type: ignore[misc]
        kwargs = dict(
            self._common(out, seed),
            target=str(target),
            **spec,
            **shape,
            init_seed=seed,
            epochs=self.p.head_epochs,
            lr=self.p.distill_lr,
            val_examples=48,
            val_max_new_tokens=self.p.eval_max_new_tokens,
            val_every=max(1, int(self._steps_per_epoch() * self.p.head_epochs) // 4),
        )
        if self.official:
            kwargs.update(OFFICIAL_SETTINGS, budget_by="batch")
        else:
            kwargs.update(budget_by="epochs")
        if ref is not None:  # the AdaSPEC head starts where its reference did: the same init seed
            # at the matched token budget, as results/heads was made (a cold start would change the protocol)
            kwargs.update(method="adaspec", ref=str(ref), k=0.4, match_token_budget=True, cold_start="off")
        return TrainHeadOptions(**kwargs)

    def head(self, name: str, target: Path, seed: int, ref: Path | None) -> Path:
        from adaspec.recipes.train_head.options import run_train_head

        opts = self.head_options(name, target, seed, ref)
        if not _done(Path(opts.output)):
            _log(f"training head {name} (seed {seed}) -> {opts.output}")
            run_train_head(opts)
        return Path(opts.output)

    def _heads_of_seed(self, seed: int) -> list[str]:
        kinds = self.opts.heads or []
        return [
            n
            for n, spec in HEADS.items()
            if spec["kind"] in kinds and (not spec.get("first_seed") or seed == self.seeds[0])
        ]

    def _steps_per_epoch(self) -> int:
        return max(1, self.n_train // self.p.batch_size)

    def run(self) -> dict:
        target = self.target()
        init = self.draft_init(target)
        cache = self.cache(target, None, self.root / "cache")
        drafts: dict[str, dict[int, Path]] = {"distillspec": {}, "adaspec": {}}
        extra = {**(ABLATIONS if self.opts.ablations else {}), **(LONG_ABLATIONS if self.opts.long_ablations else {})}
        if self.official:
            extra = OFFICIAL_ABLATIONS if self.opts.ablations else {}
        for seed in self.seeds:
            ds = self.distill("distillspec", target, init, seed, cache)
            ref_cache = self.cache(target, ds, self.runs / f"seed{seed}" / "cache_ref")
            drafts["distillspec"][seed] = ds
            drafts["adaspec"][seed] = self.distill("adaspec", target, init, seed, ref_cache, ref=ds)
            runs = {
                **(OFFICIAL_CONTROLS if self.official else {}),
                **(OFFICIAL_VARIANTS if self.opts.variants else {}),
                **(extra if seed == self.seeds[0] else {}),
            }
            for name, overrides in runs.items():
                kd = overrides.get("method") == "kd"
                drafts.setdefault(name, {})[seed] = self.distill(
                    name,
                    target,
                    init,
                    seed,
                    self._run_cache(overrides, seed, target, ds, cache, ref_cache),
                    ref=None if kd else ds,
                    **overrides,
                )
            for name in self._heads_of_seed(seed):
                ref = HEADS[name].get("ref")
                drafts.setdefault(name, {})[seed] = self.head(name, target, seed, drafts[ref][seed] if ref else None)
        return self.evaluate(target, init, drafts)

    def evaluate(self, target_dir: Path, init: Path, drafts: dict[str, dict[int, Path]]) -> dict:
        """One `evaluate` call per seed over all of that seed's drafts (the target-alone runs are shared)."""
        from adaspec.drafters.loading import load_drafter
        from adaspec.evaluation.evaluate import EvalSettings, evaluate
        from adaspec.models import load_model, load_tokenizer, model_fingerprint
        from adaspec.recipes.reproduce.report import write_results
        from adaspec.recipes.reproduce.report_official import write_official

        tokenizer = load_tokenizer(target_dir)
        target = load_model(target_dir)
        evals: dict[int, dict] = {}
        for seed in self.seeds:
            cached = self.runs / f"seed{seed}" / f"eval_{self.opts.task}.json"
            paths = {name: by_seed[seed] for name, by_seed in drafts.items() if seed in by_seed}
            if seed == self.seeds[0]:
                paths = {"draft_init": init, **paths}
            old = json.loads(cached.read_text()) if cached.exists() else {"drafts": {}}
            if not self._within_training_length(old):
                old = {"drafts": {}}  # measured before evaluation kept to the training length: redo it all
            missing = {n: p for n, p in paths.items() if n not in old["drafts"]}
            if missing:
                # only the drafts not yet measured; each is timed against the target alone in its own call
                _log(f"evaluating seed {seed}: {', '.join(missing)}")
                settings = EvalSettings(
                    self.opts.task,
                    "test",
                    self.p.eval_prompts,
                    self.p.gamma,
                    0.0,
                    self.p.eval_max_new_tokens,
                    seed,
                    context=self.p.max_length,
                )
                loaded = {
                    n: load_drafter(HEADS[n]["kind"], p, target) if n in HEADS else load_model(p)
                    for n, p in missing.items()
                }
                new = evaluate(
                    target,
                    loaded,
                    tokenizer,
                    settings,
                    cache_dir=str(self.root / "eval_cache"),
                    target_fingerprint=model_fingerprint(target_dir),
                    log=_log,
                ).to_json()
                old = {**new, "drafts": {**old["drafts"], **new["drafts"]}}
                atomic_write_json(cached, old)
            evals[seed] = {**old, "drafts": {n: old["drafts"][n] for n in paths}}
        summaries = {
            name: {s: json.loads((p / "train_summary.json").read_text()) for s, p in by_seed.items()}
            for name, by_seed in drafts.items()
        }
        summaries["target"] = {0: json.loads((target_dir / "train_summary.json").read_text())}
        summaries["draft_init"] = {0: json.loads((init / "train_summary.json").read_text())}
        # heads are no language models: no response cross-entropy
        val_ce = self.validation_ce(target_dir, init, {n: d for n, d in drafts.items() if n not in HEADS}, tokenizer)
        heads = {n: {k: v for k, v in HEADS[n].items() if k != "first_seed"} for n in drafts if n in HEADS}
        if self.official:
            return write_official(
                command_line(self.opts),
                self.opts.task,
                self.opts.preset,
                self.p,
                evals,
                summaries,
                Path(self.opts.results_dir) / self.opts.task,
                val_ce,
                {**OFFICIAL_SETTINGS, "selection_group": OFFICIAL_GROUP},
                heads,
            )
        speed = self.speed_benchmark(target_dir, drafts)
        return write_results(
            command_line(self.opts),
            self.opts.task,
            self.opts.preset,
            self.p,
            evals,
            summaries,
            speed,
            Path(self.opts.results_dir) / self.opts.task,
            val_ce,
            heads,
        )

    def _within_training_length(self, measured: dict) -> bool:
        """Whether a stored evaluation kept prompt + continuation within the training length."""
        context = measured.get("config", {}).get("context")
        return context is not None and context <= self.p.max_length

    def validation_ce(
        self, target_dir: Path, init: Path, drafts: dict[str, dict[int, Path]], tokenizer: object
    ) -> dict[str, list[float]]:
        """Response cross-entropy on the validation split, per model and seed.

        The validation split comes from the training distribution, so it shows the capacity gap even where
        the test responses do not (CNN/DM's test responses are the original highlights, its training and
        validation responses GPT-4 summaries).
        """
        from adaspec.models import load_model
        from adaspec.training.setup import validation_loss

        path = self.runs / "validation_ce.json"
        done = json.loads(path.read_text()) if path.exists() else {}
        models = {
            "target": target_dir,
            "draft_init": init,
            **{f"{name}/seed{s}": p for name, by_seed in drafts.items() for s, p in by_seed.items()},
        }
        missing = [k for k in models if k not in done]
        if missing:
            _log(f"validation cross-entropy: {len(missing)} model(s)")
            examples = data_lib.load_task(self.opts.task, "validation", limit=self.p.eval_prompts)
            items = data_lib.encode_examples(examples, tokenizer, self.p.max_length)
            pad = data_lib.pad_id(tokenizer)
            for key in missing:
                done[key] = validation_loss(load_model(models[key]), items, pad)
            atomic_write_json(path, done)
        out = {"target": [done["target"]], "draft_init": [done["draft_init"]]}
        for name, by_seed in drafts.items():
            out[name] = [done[f"{name}/seed{s}"] for s in sorted(by_seed)]
        return out

    def speed_benchmark(self, target_dir: Path, drafts: dict[str, dict[int, Path]]) -> dict | None:
        """The decode benchmark (adaspec.evaluation.speed) on the first seed's drafts: target alone, ours, HF
        assisted generation; an error after writing it if an output differed from the target alone's."""
        if not self.opts.speed_benchmark:
            return None
        from adaspec.evaluation.speed import decode_benchmark, differing, format_report

        seed = self.seeds[0]
        out: dict[str, dict] = {}
        for name in ("distillspec", "adaspec"):
            path = self.root / f"seed{seed}" / f"speed_{name}.json"
            if not path.exists() or not self._within_training_length(json.loads(path.read_text())):
                _log(f"speed benchmark: {name}")
                report = decode_benchmark(
                    str(target_dir),
                    str(drafts[name][seed]),
                    prompts_task=self.opts.task,
                    n_prompts=min(self.p.eval_prompts, 10),
                    max_new_tokens=self.p.eval_max_new_tokens,
                    gamma=self.p.gamma,
                    context=self.p.max_length,
                    repeats=3,
                )
                print(format_report(report), flush=True)
                atomic_write_json(path, report, indent=2)
                if bad := differing(report):
                    raise AdaspecError(
                        f"speed benchmark of {name}: {', '.join(bad)} decoded differently from the "
                        f"target alone (see {path})"
                    )
            out[name] = json.loads(path.read_text())
        return out


def run_reproduce(opts: ReproduceOptions) -> None:
    t0 = time.perf_counter()
    check_output(opts.runs_dir, {}, flag="--runs-dir")
    check_output(opts.results_dir, {}, flag="--results-dir")
    pipeline = Pipeline(opts)
    with guarded_output(pipeline.root, {}, flag="--runs-dir"):
        results = pipeline.run()
    _log(
        f"done in {(time.perf_counter() - t0) / 60:.1f} min; "
        f"greedy α: " + ", ".join(f"{k} {v:.3f}" for k, v in results["alpha_greedy"].items())
    )
