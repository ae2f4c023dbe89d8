"""Drafters: whatever proposes tokens for the target to verify. `FAMILIES` is the one registry of drafter
families (adaspec.drafters.family); `DRAFTERS` maps their `--drafter` names to drafter classes."""

from typing import Any

from adaspec.decoding.drafter import Drafter
from adaspec.drafters import dflash, eagle, lm, medusa, mtp
from adaspec.drafters.dflash import DFlashDrafter
from adaspec.drafters.eagle import EagleDrafter
from adaspec.drafters.family import Family
from adaspec.drafters.lm import LMDrafter
from adaspec.drafters.medusa import MedusaDrafter
from adaspec.drafters.mtp import MTPDrafter

# every drafter family, one line each, in the order `adaspec build` trains them
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        lm.FAMILY,
        eagle.FAMILY,
        medusa.FAMILY,
        mtp.FAMILY,
        dflash.FAMILY,
    )
}
DRAFTERS: dict[str, type] = {name: family.drafter for name, family in FAMILIES.items()}
HEADS = tuple(name for name, family in FAMILIES.items() if not family.is_draft_model)  # heads on the target


def drafter_family(drafter: Any) -> Family | None:
    """The family whose drafter class `drafter` is; None for anything else (a transformers model, say)."""
    return next((f for f in FAMILIES.values() if type(drafter) is f.drafter), None)


__all__ = [
    "DFlashDrafter",
    "DRAFTERS",
    "Drafter",
    "EagleDrafter",
    "FAMILIES",
    "Family",
    "HEADS",
    "LMDrafter",
    "MTPDrafter",
    "MedusaDrafter",
    "drafter_family",
]
