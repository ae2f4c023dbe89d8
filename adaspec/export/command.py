"""`adaspec export`: a trained head checkpoint (`adaspec train-head`) in a serving engine's layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from adaspec.drafters.eagle import EagleHead
from adaspec.errors import AdaspecError
from adaspec.export.eagle import export_eagle1, export_eagle3
from adaspec.options import helptext
from adaspec.safety import guarded_output

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(kw_only=True)
class ExportOptions:
    """Write a trained EAGLE head as vLLM / SGLang load it (LlamaForCausalLMEagle3 or LlamaForCausalLMEagle)."""

    head: str = field(metadata=helptext("head checkpoint directory (the output of `adaspec train-head`)"))
    output: str = field(metadata=helptext("directory to write the exported head to"))
    format: Literal["eagle3", "eagle1"] | None = field(default=None, metadata=helptext(
        "eagle3 or eagle1 (default: the head's own variant)"))
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="bfloat16", metadata=helptext(
        "weight dtype of the export"))


def run_export(opts: ExportOptions) -> int:
    with guarded_output(opts.output, {"--head": opts.head}):
        return _export(opts)


def _export(opts: ExportOptions) -> int:
    head = EagleHead.from_pretrained(opts.head)
    fmt = opts.format or head.config.variant
    if fmt != head.config.variant:
        raise AdaspecError(f"{opts.head} is an {head.config.variant} head; it cannot be exported as {fmt}")
    write = export_eagle3 if fmt == "eagle3" else export_eagle1
    out = write(head, opts.output, DTYPES[opts.dtype])
    print(f"wrote {fmt} head to {out}")
    return 0
