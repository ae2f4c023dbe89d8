"""`adaspec export`: a trained head checkpoint (`adaspec train-head`) in a serving engine's layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from adaspec.drafters.family import ExportRequest
from adaspec.drafters.head_checkpoint import check_finite, read_weights
from adaspec.drafters.loading import saved_family
from adaspec.options import helptext
from adaspec.safety import guarded_output

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(kw_only=True)
class ExportOptions:
    """Write a trained head as a serving engine loads it: EAGLE-3 / EAGLE-1 heads as vLLM's
    Eagle3LlamaForCausalLM / EagleLlamaForCausalLM (or SGLang's LlamaForCausalLMEagle3 / LlamaForCausalLMEagle),
    Medusa heads as vLLM's MedusaModel, MTP modules under DeepSeek-V3's MTP-layer names (for conversion
    tools: no server runs them), DFlash heads as vLLM's DFlashDraftModel. Warns in one line when vLLM cannot
    serve the result."""

    head: str = field(metadata=helptext("head checkpoint directory (the output of `adaspec train-head`)"))
    output: str = field(metadata=helptext("directory to write the exported head to"))
    format: Literal["eagle3", "eagle1"] | None = field(default=None, metadata=helptext(
        "EAGLE heads: eagle3 or eagle1 (default: the head's own variant)"))
    server: Literal["vllm", "sglang"] = field(default="vllm", metadata=helptext(
        "the engine whose loader the layout follows (they differ for EAGLE-1, and for EAGLE-3 at full vocabulary)"))
    target: str | None = field(default=None, metadata=helptext(
        "the head's target model directory: needed for Medusa heads sharing its lm_head and for MTP modules, "
        "and to check that vLLM can serve an EAGLE-3 head on it"))
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="bfloat16", metadata=helptext(
        "weight dtype of the export"))


def run_export(opts: ExportOptions) -> int:
    with guarded_output(opts.output, {"--head": opts.head, "--target": opts.target}):
        return _export(opts)


def _export(opts: ExportOptions) -> int:
    family = saved_family(opts.head)  # every family train-head writes has an export_command (tests/drafters)
    check_finite(read_weights(opts.head), opts.head)
    family.export_command(ExportRequest(opts.head, opts.output, opts.format, opts.server, DTYPES[opts.dtype],
                                        opts.target))
    return 0
