"""The DFlash parallel block drafter family: model, drafter, training recipe and vLLM export."""

from adaspec.drafters.dflash.drafter import DFlashDrafter
from adaspec.drafters.dflash.model import DFlashConfig, DFlashHead

__all__ = ["DFlashConfig", "DFlashDrafter", "DFlashHead"]
