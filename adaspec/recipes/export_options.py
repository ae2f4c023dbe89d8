"""`adaspec export`'s options (the command: adaspec.recipes.export), in a module without torch so the command line's
parser and --help load fast."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adaspec.options import helptext


@dataclass(kw_only=True)
class ExportOptions:
    """Write a trained head as a serving engine loads it: EAGLE-3 / EAGLE-1 heads as vLLM's
    Eagle3LlamaForCausalLM / EagleLlamaForCausalLM (or SGLang's LlamaForCausalLMEagle3 / LlamaForCausalLMEagle),
    Medusa heads as vLLM's MedusaModel, MTP modules under DeepSeek-V3's MTP-layer names (for conversion
    tools: no server runs them), DFlash heads as vLLM's DFlashDraftModel. Warns in one line when vLLM cannot
    serve the result."""

    head: str = field(metadata=helptext("head checkpoint directory (the output of `adaspec train-head`)"))
    output: str = field(metadata=helptext("directory to write the exported head to"))
    format: Literal["eagle3", "eagle1"] | None = field(
        default=None, metadata=helptext("EAGLE heads: eagle3 or eagle1 (default: the head's own variant)")
    )
    server: Literal["vllm", "sglang"] = field(
        default="vllm",
        metadata=helptext(
            "the engine whose loader the layout follows (they differ for EAGLE-1, and for EAGLE-3 at full vocabulary)"
        ),
    )
    target: str | None = field(
        default=None,
        metadata=helptext(
            "the head's target model directory: needed for Medusa heads sharing its lm_head and for MTP modules, "
            "and to check that vLLM can serve an EAGLE-3 head on it"
        ),
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="bfloat16", metadata=helptext("weight dtype of the export")
    )
