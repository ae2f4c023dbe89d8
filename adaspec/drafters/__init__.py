"""Drafters: whatever proposes tokens for the target to verify. `DRAFTERS` maps `--drafter` names to classes."""

from adaspec.drafters.base import Drafter
from adaspec.drafters.lm import LMDrafter

DRAFTERS: dict[str, type] = {"lm": LMDrafter}

__all__ = ["DRAFTERS", "Drafter", "LMDrafter"]
