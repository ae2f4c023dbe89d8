"""The Medusa family (Medusa-1 heads on a frozen target): model and drafter, and vLLM's MedusaModel layout,
which is also the checkpoint."""

from adaspec.drafters.family import Family
from adaspec.drafters.head_checkpoint import adaspec_kind
from adaspec.drafters.medusa.export import export_command, serve_vllm
from adaspec.drafters.medusa.model import MedusaDrafter, MedusaHeads
from adaspec.drafters.multi_token_loss import teacher_forced

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
    max_gamma=lambda heads: heads.cfg.heads,
    teacher_forced=teacher_forced,
)

__all__ = ["FAMILY", "MedusaDrafter", "MedusaHeads"]
