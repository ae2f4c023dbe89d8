"""Drafters: whatever proposes tokens for the target to verify. `DRAFTERS` maps `--drafter` names to classes."""

from adaspec.decoding.drafter import Drafter
from adaspec.drafters.dflash import DFlashDrafter
from adaspec.drafters.eagle.drafter import EagleDrafter
from adaspec.decoding.lm import LMDrafter
from adaspec.drafters.medusa.model import MedusaDrafter
from adaspec.drafters.mtp.model import MTPDrafter

DRAFTERS: dict[str, type] = {"lm": LMDrafter, "eagle": EagleDrafter, "mtp": MTPDrafter, "medusa": MedusaDrafter,
                      "dflash": DFlashDrafter}

__all__ = ["DFlashDrafter", "DRAFTERS", "Drafter", "EagleDrafter", "LMDrafter", "MTPDrafter", "MedusaDrafter"]
