"""The draft-model family ("lm"): a separate small causal LM (adaspec.decoding.lm.LMDrafter), trained by
`adaspec distill`, served by vLLM and SGLang as it is saved."""

from adaspec.decoding.lm import LMDrafter
from adaspec.drafters.family import Family
from adaspec.drafters.lm.export import serve
from adaspec.models.servable import head_size_problem

FAMILY = Family(
    name="lm",
    drafter=LMDrafter,
    signal="none",
    recipe="distill",
    exports={
        "vllm": lambda path, target, out: serve("vllm", path, out),
        "sglang": lambda path, target, out: serve("sglang", path, out),
    },
    # a draft adaspec builds always has a servable head size; a given one (--draft-init) may not
    target_problem=lambda target, drafter: head_size_problem(drafter) if drafter is not None else None,
    keep_tree_rows=lambda drafter: LMDrafter(drafter.model, drafter.vocab, keep_tree_rows=True),
)

__all__ = ["FAMILY", "LMDrafter"]
