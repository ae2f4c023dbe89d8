"""Drafters: whatever proposes tokens for the target to verify. `DRAFTERS` maps `--drafter` names to classes."""

from adaspec.drafters.base import Drafter
from adaspec.drafters.dflash import DFlashDrafter
from adaspec.drafters.eagle_drafter import EagleDrafter
from adaspec.drafters.lm import LMDrafter
from adaspec.drafters.medusa import MedusaDrafter
from adaspec.drafters.mtp import MTPDrafter

DRAFTERS: dict[str, type] = {"lm": LMDrafter, "eagle": EagleDrafter, "mtp": MTPDrafter, "medusa": MedusaDrafter,
                      "dflash": DFlashDrafter}

__all__ = ["DFlashDrafter", "DRAFTERS", "Drafter", "EagleDrafter", "LMDrafter", "MTPDrafter", "MedusaDrafter"]
