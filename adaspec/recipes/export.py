"""`adaspec export`: a trained head checkpoint (`adaspec train-head`) in a serving engine's layout."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from adaspec.drafters.dflash.export import export_command as export_dflash_command
from adaspec.drafters.dflash.model import CHECKPOINT_KEY as DFLASH_KEY
from adaspec.drafters.eagle.model import CHECKPOINT_KEY, EagleHead
from adaspec.drafters.head_checkpoint import check_finite, read_weights
from adaspec.drafters.loading import saved_kind
from adaspec.errors import AdaspecError
from adaspec.drafters.eagle.export import export_eagle1, export_eagle3
from adaspec.drafters.medusa.export import load_medusa, save_medusa
from adaspec.drafters.mtp.export import export_mtp_deepseek, load_mtp
from adaspec.recipes.export_options import ExportOptions
from adaspec.safety import guarded_output
from adaspec.models.servable import MTP_REASON, eagle3_target_problem, head_size_problem, warn_unservable

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def head_kind(path: str) -> str:
    """"eagle", "dflash", "medusa" or "mtp": what train-head wrote in `path`."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdaspecError(f"{path} is not a head checkpoint (no readable config.json)") from exc
    if DFLASH_KEY in config:
        return "dflash"
    return "eagle" if CHECKPOINT_KEY in config else saved_kind(path)


def run_export(opts: ExportOptions) -> int:
    with guarded_output(opts.output, {"--head": opts.head, "--target": opts.target}):
        return _export(opts)


def _target_config(opts: ExportOptions) -> dict | None:
    if opts.target is None:
        return None
    try:
        return json.loads((Path(opts.target) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise AdaspecError(f"--target {opts.target} has no readable config.json") from exc


def _export(opts: ExportOptions) -> int:
    kind = head_kind(opts.head)
    check_finite(read_weights(opts.head), opts.head)
    if kind == "dflash":
        if opts.format is not None or opts.server != "vllm":
            raise AdaspecError("a DFlash head is exported in vLLM's layout only (no --format, --server vllm)")
        export_dflash_command(opts.head, opts.output, DTYPES[opts.dtype], _target_config(opts))
        return 0
    if kind != "eagle":
        return _export_multi_token(opts, kind)
    head = EagleHead.from_pretrained(opts.head)
    fmt = opts.format or head.config.variant
    if fmt != head.config.variant:
        raise AdaspecError(f"{opts.head} is an {head.config.variant} head; it cannot be exported as {fmt}")
    write = export_eagle3 if fmt == "eagle3" else export_eagle1
    out = write(head, opts.output, DTYPES[opts.dtype], server=opts.server)
    target_config = _target_config(opts)
    if opts.server == "vllm":
        problems = [head_size_problem({"head_dim": head.config.head_dim})]
        if fmt == "eagle3" and target_config is not None:
            problems.append(eagle3_target_problem(target_config))
        warn_unservable(f"this {fmt} head", problems)
    print(f"wrote {fmt} head ({opts.server} layout) to {out}")
    return 0


def _export_multi_token(opts: ExportOptions, kind: str) -> int:
    if opts.format is not None:
        raise AdaspecError(f"--format is for EAGLE heads; {opts.head} holds {kind} heads")
    from adaspec.models import load_model  # transformers' model code only when a target is needed

    target = load_model(opts.target) if opts.target is not None else None
    if kind == "medusa":
        heads = load_medusa(opts.head).to(DTYPES[opts.dtype])
        if heads.cfg.shared_head and target is None:
            raise AdaspecError("these Medusa heads share the target's lm_head, which vLLM reads from the export: "
                               "pass --target")
        save_medusa(heads, opts.output, target.to(DTYPES[opts.dtype]) if target is not None else None)
        print(f"wrote Medusa heads (vLLM's MedusaModel) to {opts.output}")
        return 0
    if target is None:
        raise AdaspecError("MTP modules are exported with their target's shared embedding, norm and head: "
                           "pass --target")
    export_mtp_deepseek(load_mtp(opts.head), target, opts.output)
    warn_unservable("these MTP modules", [MTP_REASON])
    print(f"wrote MTP modules under DeepSeek-V3's MTP-layer names to {opts.output}")
    return 0
