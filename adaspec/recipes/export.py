"""`adaspec export`: a trained head checkpoint (`adaspec train-head`) in a serving engine's layout."""

from __future__ import annotations

import torch

from adaspec.drafters.family import ExportRequest
from adaspec.drafters.head_checkpoint import check_finite, read_weights
from adaspec.drafters.loading import saved_family
from adaspec.recipes.export_options import ExportOptions
from adaspec.safety import guarded_output

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_export(opts: ExportOptions) -> int:
    with guarded_output(opts.output, {"--head": opts.head, "--target": opts.target}):
        return _export(opts)


def _export(opts: ExportOptions) -> int:
    family = saved_family(opts.head)  # every family train-head writes has an export_command (tests/drafters)
    check_finite(read_weights(opts.head), opts.head)
    family.export_command(
        ExportRequest(opts.head, opts.output, opts.format, opts.server, DTYPES[opts.dtype], opts.target)
    )
    return 0
