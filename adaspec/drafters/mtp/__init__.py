"""The MTP family (DeepSeek-V3 multi-token prediction modules): model and drafter, checkpoint and the
DeepSeek-V3 naming export (no server runs these modules)."""

from adaspec.drafters.family import Family
from adaspec.drafters.head_checkpoint import adaspec_kind
from adaspec.drafters.mtp.export import export_command
from adaspec.drafters.mtp.model import MTPDrafter, MTPHeads, build_mtp
from adaspec.drafters.multi_token_loss import teacher_forced
from adaspec.models.servable import MTP_REASON

FAMILY = Family(
    name="mtp",
    drafter=MTPDrafter,
    head=MTPHeads,
    signal="final",
    recipe="multi_token",
    recognizes=lambda config: adaspec_kind(config) == "mtp",
    unserved={"vllm": MTP_REASON, "sglang": "no server runs adaspec's MTP modules"},
    export_command=export_command,
    train_options=lambda gamma, target: {"depth": gamma},
    train_shape=lambda gamma, unroll: {"depth": gamma},
    max_gamma=lambda heads: heads.cfg.depth,
    teacher_forced=teacher_forced,
    default_depth=3,
    takes_draft_init=True,
    takes_target_data=True,
    new_head=lambda target, opts: build_mtp(target, opts.depth, seed=opts.init_seed),
)

__all__ = ["FAMILY", "MTPDrafter", "MTPHeads"]
