"""The DFlash parallel block drafter family: model, drafter, training recipe and vLLM export."""

from adaspec.drafters.dflash.drafter import DFlashDrafter
from adaspec.drafters.dflash.export import export_command, serve_vllm, target_problem
from adaspec.drafters.dflash.model import CHECKPOINT_KEY, DFlashConfig, DFlashHead
from adaspec.drafters.family import Family

FAMILY = Family(
    name="dflash",
    drafter=DFlashDrafter,
    head=DFlashHead,
    signal="layers",
    recipe="dflash",
    recognizes=lambda config: CHECKPOINT_KEY in config,
    exports={"vllm": serve_vllm},
    unserved={"sglang": "adaspec writes DFlash heads in vLLM's layout only"},
    target_problem=target_problem,
    export_command=export_command,
    train_options=lambda gamma, target: {"block_size": gamma + 1},
    train_shape=lambda gamma, unroll: {"block_size": gamma + 1},
    max_gamma=lambda head: head.config.max_gamma,
    build_opt_in="trained only when --drafters names it: its heads learn slowly at this scale (greedy α about "
    "0.1 after 150 steps on the demo target, docs/dflash.md)",
)

__all__ = ["DFlashConfig", "DFlashDrafter", "DFlashHead", "FAMILY"]
