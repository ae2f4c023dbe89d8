"""The Medusa family (Medusa-1 heads on a frozen target): model and drafter, and vLLM's MedusaModel layout,
which is also the checkpoint."""

from transformers import PreTrainedModel

from adaspec.drafters.family import Family
from adaspec.drafters.head_checkpoint import adaspec_kind
from adaspec.drafters.medusa.export import export_command, load_medusa, save_medusa, serve_vllm
from adaspec.drafters.medusa.model import MedusaDrafter, MedusaHeads, build_medusa
from adaspec.drafters.multi_token_loss import teacher_forced
from adaspec.models import output_vocab_size


def _misfit(heads: MedusaHeads, target: PreTrainedModel) -> str | None:
    """Why saved heads do not fit `target` beyond their hidden size: their output rows are its vocabulary,
    padding included."""
    rows = output_vocab_size(target)
    return f"has {heads.cfg.vocab} output rows, the target has {rows}" if heads.cfg.vocab != rows else None


FAMILY = Family(
    name="medusa",
    drafter=MedusaDrafter,
    head=MedusaHeads,
    signal="final",
    recipe="multi_token",
    recognizes=lambda config: adaspec_kind(config) == "medusa",
    exports={"vllm": serve_vllm},
    unserved={"sglang": "SGLang serves no Medusa heads"},
    export_command=export_command,
    train_options=lambda gamma, target: {"depth": gamma},
    train_shape=lambda gamma, unroll: {"depth": gamma},
    max_gamma=lambda heads: heads.cfg.heads,
    teacher_forced=teacher_forced,
    default_depth=4,
    takes_draft_init=True,
    takes_target_data=True,
    new_head=lambda target, opts: build_medusa(target, opts.depth, opts.medusa_layers, shared_head=opts.shared_head),
    misfit=_misfit,
    store_target_head=lambda path, target: save_medusa(load_medusa(path), path, target),
)

__all__ = ["FAMILY", "MedusaDrafter", "MedusaHeads"]
