"""Drafters: whatever proposes tokens for the target to verify. `DRAFTERS` maps `--drafter` names to classes."""

from adaspec.drafters.base import Drafter
from adaspec.drafters.lm import LMDrafter
from adaspec.drafters.medusa import MedusaDrafter
from adaspec.drafters.mtp import MTPDrafter

DRAFTERS: dict[str, type] = {"lm": LMDrafter, "mtp": MTPDrafter, "medusa": MedusaDrafter}

__all__ = ["DRAFTERS", "Drafter", "LMDrafter", "MTPDrafter", "MedusaDrafter"]
