"""What `adaspec reproduce` runs, as data: the scales (presets) and the training protocols.

PRESETS: sizes and budgets of each reproduction scale. ABLATIONS / LONG_ABLATIONS: the extra distillations
of `--ablations` / `--long-ablations` (overrides of the AdaSPEC run). OFFICIAL_*: the authors' protocol
(`--protocol official`), its controls, ablations and `--variants`. HEADS: the drafter heads of `--heads`.
A run's overrides are DistillOptions fields (`method`, `selection`, `k`, ...) plus `epochs_scale`, which
multiplies the preset's distillation epochs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from adaspec.errors import AdaspecError


@dataclass(frozen=True)
class Preset:
    """Sizes and budgets of one reproduction scale."""

    vocab_size: int
    target: str
    draft: str
    max_length: int
    train_limit: int | None
    target_epochs: float
    target_lr: float
    draft_init_epochs: float
    distill_epochs: float
    distill_lr: float
    batch_size: int
    eval_prompts: int
    eval_max_new_tokens: int
    gamma: int
    top_k: int
    seeds: tuple[int, ...]
    # a task with fewer training examples gets proportionally more epochs in every training stage, so each
    # stage sees at least this many examples (0: epochs as written); the target keeps its best validation
    # checkpoint, so the extra epochs cannot leave an overfitted target
    min_train_examples: int = 0
    # --heads: epochs of a KD head (AdaSPEC heads: that / k) and EAGLE's training-time-test unroll steps
    # (MTP and Medusa get `gamma` depths, all a step drafts). Measured on the small GSM8K target, 1 thread
    # (benchmarks/head_training_cost.py, results/benchmarks/head_training_cost.json): CPU seconds per step
    # of batch 16 EAGLE-3 3.1 (AdaSPEC 4.1), EAGLE-1 3.3, MTP 2.4 (AdaSPEC 2.9), Medusa 1.4, ~10 more per
    # run. 0.05 epochs (23 steps) left every head below the draft models; 0.15 (67 steps, AdaSPEC 168) puts
    # all 16 head runs of 3 seeds at ~90 CPU minutes, what one session on 2 cores can hold beside the drafts
    head_epochs: float = 0.15
    head_ttt_steps: int = 3
    # epochs on the corpus before the task (0: none, the models start from their initialisation): the
    # target's, after which it trains `target_epochs` on the task, and the draft's, which is then the
    # initial draft as it is
    pretrain_epochs: float = 0.0
    draft_pretrain_epochs: float = 0.0

    def __post_init__(self) -> None:
        if self.draft_pretrain_epochs and not self.pretrain_epochs:  # the draft reads the pretrained tokenizer
            raise AdaspecError("a preset that pretrains the draft must pretrain the target too")

    def for_task(self, n_train: int) -> Preset:
        """This preset with its epochs scaled for a training split of `n_train` examples."""
        scale = max(1.0, self.min_train_examples / max(1, n_train))
        # a pretrained target is fine-tuned as many epochs as the paper's, whatever the task's size
        return replace(
            self,
            target_epochs=self.target_epochs * (1.0 if self.pretrain_epochs else scale),
            draft_init_epochs=self.draft_init_epochs * scale,
            distill_epochs=self.distill_epochs * scale,
            head_epochs=self.head_epochs * scale,
        )


# the committed science tables (results/<task>/, results/pretrained/): ~16x parameter gap, full training
# split, on the GPT-NeoX pair they were measured on (a 16-wide draft head no server takes; kept so they
# reproduce)
_SMALL_NEOX = Preset(
    vocab_size=2048,
    target="neox-target-s",
    draft="neox-draft-xxs",
    max_length=256,
    train_limit=None,
    target_epochs=1.0,
    target_lr=2e-3,
    draft_init_epochs=0.25,
    distill_epochs=1.0,
    distill_lr=2e-3,
    batch_size=16,
    eval_prompts=50,
    eval_max_new_tokens=96,
    gamma=3,
    top_k=64,
    seeds=(0, 1, 2),
    min_train_examples=7000,
)

PRESETS: dict[str, Preset] = {
    # `make demo`: the whole pipeline on a Llama pair every vLLM drafter method serves (head size 32). Smaller
    # models than `small` on the same data and epochs: a demo that also cut the data (1,200 examples) left
    # both drafts at their first checkpoint with identical alpha, which demonstrates nothing
    "demo": replace(
        _SMALL_NEOX,
        vocab_size=1024,
        target="llama-demo-target",
        draft="llama-demo-draft",
        eval_prompts=30,
        eval_max_new_tokens=64,
        seeds=(0,),
    ),
    # the same scale as the science tables on a servable Llama pair
    "small": replace(_SMALL_NEOX, target="llama-target-s", draft="llama-draft-xxs"),
    "small-neox": _SMALL_NEOX,
    # nearer the paper's regime: a capacity-bound draft pretrained to its plateau on the corpus (the validation
    # loss stops falling within 4 epochs), and a target pretrained one epoch on it and then fine-tuned 3 epochs
    # on the task, as the paper's target is (the committed tables' NeoX pair)
    "pretrained": replace(_SMALL_NEOX, pretrain_epochs=1.0, draft_pretrain_epochs=4.0, target_epochs=3.0),
}

# --ablations, first seed: AdaSPEC variants, each against the seed's reference, and plain KD for as many steps
# as AdaSPEC takes at k = 0.4 with the matched token budget, to separate "selective" from "trained longer"
ABLATIONS: dict[str, dict] = {
    "distillspec_long": {"method": "kd", "epochs_scale": 1 / 0.4},
    "adaspec_bottom": {"selection": "bottom"},
    "adaspec_random": {"selection": "random"},
    **{f"adaspec_k{k}": {"k": k} for k in (1.0, 0.8, 0.6, 0.2)},
}
# --long-ablations, first seed: the equal-steps comparison again at 4x AdaSPEC's steps, nearer convergence,
# where the paper's capacity argument says dropping hard tokens should matter most
LONG_ABLATIONS: dict[str, dict] = {
    "distillspec_long4": {"method": "kd", "epochs_scale": 4 / 0.4},
    "adaspec_long4": {"epochs_scale": 4.0},
}


# The authors' optimiser settings (yuezhouhu/adaspec, run_train.sh of branches
# gsm8k-target-pythia-1.4b-{ref,draft}-pythia-31m-3epoch; Trainer defaults: no warm-up, grad-norm clip 1);
# the preset keeps its batch (small: 16 = their 8 processes x 2) and DistillSpec epochs
OFFICIAL_SETTINGS: dict = {"lr": 3e-4, "weight_decay": 0.1, "schedule": "constant", "warmup_steps": 0}
# their AdaSPEC run: per-device batch 5, the Δ-quantile taken on each device's micro-batch
OFFICIAL_GROUP = 5
# controls at DistillSpec's optimizer steps: every seed for the two that separate selection from the larger
# batch, the first seed for the rest
OFFICIAL_CONTROLS: dict[str, dict] = {
    "kd_big_batch": {"method": "kd", "k": 0.4, "match_token_budget": True},
    "random_big_batch": {"selection": "random"},
}
# --ablations under the official protocol, first seed: the selection's other end and other k, at equal steps
OFFICIAL_ABLATIONS: dict[str, dict] = {
    "adaspec_bottom": {"selection": "bottom"},
    **{f"adaspec_k{k}": {"k": k} for k in (0.2, 0.6, 0.8, 1.0)},
}
# --variants, every seed: acceptance-aligned rules at DistillSpec's optimizer steps. The LK losses train every
# token at AdaSPEC's batch, so kd_big_batch is their control (only the loss differs); the others are AdaSPEC
# with one change each (docs/variants.md)
OFFICIAL_VARIANTS: dict[str, dict] = {
    "lk": {"method": "kd", "k": 0.4, "match_token_budget": True, "divergence": "lk"},
    "lk_kl": {"method": "kd", "k": 0.4, "match_token_budget": True, "divergence": "lk_kl"},
    "adaspec_tvd": {"delta_divergence": "tvd"},
    "adaspec_soft": {"selection": "soft"},
    "adaspec_ksched": {"k_schedule": "linear"},
}


# --heads: heads trained on the frozen target (shared by the seeds) after each seed's drafts, in this order.
# "ref": the KD head an AdaSPEC head selects against (the drafts' DistillSpec reference, for heads);
# "first_seed": trained once
HEADS: dict[str, dict] = {
    "eagle": {"kind": "eagle", "label": "EAGLE-3 head, KD"},
    "eagle_adaspec": {"kind": "eagle", "ref": "eagle", "label": "EAGLE-3 head, AdaSPEC"},
    "eagle1": {"kind": "eagle", "variant": "eagle1", "first_seed": True, "label": "EAGLE-1 head, KD"},
    "mtp": {"kind": "mtp", "label": "MTP modules, KD"},
    "mtp_adaspec": {"kind": "mtp", "ref": "mtp", "label": "MTP modules, AdaSPEC"},
    "medusa": {"kind": "medusa", "label": "Medusa heads, KD"},
}
HEAD_KINDS = ("eagle", "mtp", "medusa")
# report.md's EAGLE-3 − EAGLE-1 line: the runs of HEADS that differ in the variant alone (EAGLE-1: first seed)
VARIANT_RUNS = ("eagle", "eagle1")
