"""`adaspec eval`'s options (the command: adaspec.recipes.eval), in a module without torch so the command line's
parser and --help load fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adaspec import data as data_lib
from adaspec.data import chat
from adaspec.errors import AdaspecError
from adaspec.options import check_finite, helptext, strict_field

MAX_BATCH = 256  # requests vLLM holds at once: its max_num_seqs default


@dataclass(kw_only=True)
class EvalOptions:
    """Measure drafts against a target: empirical α (accepted/drafted and over judged tokens), τ, c and
    speed-up from real speculative decoding; analytic α from parallel forwards on the target's cached
    greedy continuations; the target's task quality and every model's response cross-entropy.
    Several --draft directories are compared side by side."""

    target: str = field(metadata=helptext("target model directory or hub id (its tokenizer is used)"))
    draft: list[str] | None = field(
        default=None, metadata=helptext("draft model directories; several are compared side by side")
    )
    head: list[str] | None = field(
        default=None,
        metadata=helptext(
            "heads trained by train-head, as KIND=DIR (KIND: a head family of `adaspec train-head --kind`), measured "
            "beside the drafts"
        ),
    )
    decode_path: Literal["auto", "lean", "hf"] = field(
        default="auto",
        metadata=helptext(
            "lean: adaspec's minimal forward (Llama, GPT-NeoX, GPT-2); hf: transformers'; auto: lean where the "
            "family supports it. The target alone and every draft use the same path"
        ),
    )
    compare: list[str] | None = field(
        default=None, metadata=helptext("more drafts to compare side by side (appended to --draft)")
    )
    task: str = field(default="gsm8k", metadata=helptext(f"task ({', '.join(data_lib.TASKS)})"))
    data: str | None = field(
        default=None,
        metadata=helptext(
            "a JSONL file of your own (or a folder of <split>.jsonl, or hub:<dataset>) instead of --task; "
            "it has no task score (quality metric none)"
        ),
    )
    prompt_field: str = field(default="prompt", metadata=helptext("prompt field of --data records"))
    response_field: str = field(default="response", metadata=helptext("response field of --data records"))
    chat_template: str | None = field(
        default=None,
        metadata=helptext(
            f"chat template for chat records: a Jinja file or a built-in name ({', '.join(chat.BUILTIN_TEMPLATES)}); "
            "replaces the target tokenizer's own"
        ),
    )
    split: Literal["train", "validation", "test"] = field(default="test", metadata=helptext("task split"))
    n_prompts: int = field(default=32, metadata=helptext("evaluate the first N prompts of the split"))
    gamma: int = field(default=5, metadata=helptext("draft tokens per speculative step (the max when adaptive)"))
    temperature: float = field(default=0.0, metadata=helptext("sampling temperature; 0 = greedy"))
    top_p: float = field(default=1.0, metadata=helptext("nucleus sampling mass in (0, 1] (the analytic α ignores it)"))
    max_new_tokens: int = field(default=128, metadata=helptext("tokens generated per prompt"))
    context: int | None = field(
        default=None,
        metadata=helptext(
            "positions a prompt plus its continuation may use (unset: the smallest model context); set it to the "
            "training --max-length so drafts are not measured at positions they never trained on"
        ),
    )
    adaptive_gamma: bool = field(
        default=False,
        metadata=helptext("choose gamma per step in [1, --gamma] from the running acceptance rate and measured cost"),
    )
    seed: int = field(default=0, metadata=helptext("sampling seed (prompt i uses seed + i)"))
    loss_examples: int = field(
        default=64,
        metadata=helptext("examples of the split whose reference responses score each model's cross-entropy"),
    )
    json: str | None = field(
        default=None,
        metadata=helptext("write every counter and derived value, per draft, and the command line to this JSON file"),
    )
    cache_dir: str | None = field(
        default=None,
        metadata=helptext(
            "folder for the target's greedy continuations (named by the target's fingerprint); unset: "
            "$XDG_CACHE_HOME/adaspec/eval, else ~/.cache/adaspec/eval"
        ),
    )
    cache: bool = field(default=True, metadata=helptext("reuse/store the target's continuations on disk"))
    data_dir: str | None = field(default=None, metadata=helptext("folder of the built-in task data"))
    device: str | None = field(default=None, metadata=helptext("torch device; unset: cuda when available"))
    trust_remote_code: bool = field(default=False, metadata=helptext("allow a hub model's own code to run"))
    strict: bool = strict_field()
    engine: Literal["adaspec", "vllm"] = field(
        default="adaspec",
        metadata=helptext(
            "vllm: also decode the same prompts in vLLM (its target alone and with each drafter, exported to the "
            "layout it loads) and report its own counters and tokens/s beside adaspec's; needs `make vllm`"
        ),
    )
    vllm_python: str | None = field(
        default=None, metadata=helptext("python of vLLM's environment (unset: $ADASPEC_VLLM_PYTHON, else .venv-vllm)")
    )
    batch_sizes: list[int] = field(
        default_factory=lambda: [1, 8],
        metadata=helptext("with --engine vllm: requests vLLM decodes together (1: one prompt at a time)"),
    )
    vllm_eager: bool = field(
        default=False,
        metadata=helptext(
            "with --engine vllm: skip vLLM's model compilation (starts ~45 s sooner per model, decodes slower than "
            "a server does)"
        ),
    )

    def __post_init__(self) -> None:
        from adaspec.core.sampling import check_sampling  # torch: loaded once options are made, not for --help
        from adaspec.core.tree_shape import MAX_TREE_DEPTH

        if not self.draft and not self.head:
            raise AdaspecError("give at least one --draft or --head")
        for spec in self.head or []:
            kind, sep, path = spec.partition("=")
            from adaspec.drafters import HEADS  # the registry loads torch: here, not at import (--help)

            if not sep or kind not in HEADS or not path:
                raise AdaspecError(
                    f"--head must be KIND=DIR with KIND {', '.join(HEADS[:-1])} or {HEADS[-1]}, got {spec!r}"
                )
        if self.data is None and self.task not in data_lib.TASKS:
            raise AdaspecError(f"unknown task {self.task!r}; choose one of {', '.join(data_lib.TASKS)}")
        if self.split not in data_lib.SPLITS:
            raise AdaspecError(f"unknown split {self.split!r}; choose one of {', '.join(data_lib.SPLITS)}")
        if self.context is not None and self.context <= self.max_new_tokens:
            raise AdaspecError(f"--context ({self.context}) must exceed --max-new-tokens ({self.max_new_tokens})")
        for name in ("n_prompts", "gamma", "max_new_tokens", "loss_examples"):
            if getattr(self, name) < 1:
                raise AdaspecError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.gamma > MAX_TREE_DEPTH:  # a chain is a tree of depth γ
            raise AdaspecError(f"--gamma must be in 1..{MAX_TREE_DEPTH}, got {self.gamma}")
        if not self.batch_sizes or any(not 1 <= b <= MAX_BATCH for b in self.batch_sizes):
            raise AdaspecError(f"--batch-sizes must be in 1..{MAX_BATCH}, got {self.batch_sizes}")
        check_finite(self)
        check_sampling(self.temperature, self.top_p)
        if self.chat_template is not None:
            chat.resolve_template(self.chat_template)

    @property
    def draft_paths(self) -> list[str]:
        return list(self.draft or []) + list(self.compare or [])
