"""The model presets `build_model` builds from (adaspec.models), apart from it so the options that name a preset
(train-target's, distill's --preset) list them without importing torch or transformers."""

from __future__ import annotations

from adaspec.errors import AdaspecError

# name -> (architecture, hidden size, layers, heads, context). Intermediate size is 4x hidden. Every preset
# here has a head size (hidden / heads) that vLLM's attention backends take (SERVABLE_HEAD_SIZES), so a
# model built from one can be served with its drafter
PRESETS: dict[str, tuple[str, int, int, int, int]] = {
    # unit tests: a few thousand parameters (one 32-wide head: the smallest size a server takes)
    "tiny-neox": ("gpt_neox", 32, 2, 1, 256),
    "tiny-llama": ("llama", 32, 2, 1, 256),
    "tiny-gpt2": ("gpt2", 32, 2, 1, 256),
    # the `demo` reproduction pair (1k vocabulary). The target is deep and narrow: a decode forward this
    # small costs per layer called, not per weight (8 x 96 measured 1.5x the time of 4 x 128 at the same
    # size), so the draft costs a small fraction of it, as a real drafter of a many-layer target does. Llama,
    # so every vLLM drafter method (draft model, EAGLE-1/3, Medusa) serves it
    "llama-demo-target": ("llama", 96, 8, 3, 512),
    "llama-demo-draft": ("llama", 32, 2, 1, 512),
    # the `small` reproduction pair (~16x parameter gap at a 2k vocabulary)
    "llama-target-s": ("llama", 192, 4, 6, 1024),
    "llama-draft-xxs": ("llama", 32, 2, 1, 1024),
    "llama-draft-xs": ("llama", 64, 2, 2, 1024),  # `distill`'s default draft
    # the earlier 4 x 128 demo target, kept for the forward-cost and crossover benchmarks committed with it
    "neox-demo-target": ("gpt_neox", 128, 4, 4, 512),
    # CPU-scale experiments (parameter counts at a 4k vocabulary)
    "neox-target-s": ("gpt_neox", 192, 4, 6, 1024),  # ~2.6M at a 2k vocabulary
    "neox-draft-s": ("gpt_neox", 128, 2, 4, 1024),  # ~1.4M
    "neox-target-m": ("gpt_neox", 256, 6, 8, 1024),  # ~6.8M
    "neox-target-xl": ("gpt_neox", 512, 8, 8, 1024),  # ~27M
    "neox-target-xxl": ("gpt_neox", 768, 8, 12, 1024),  # ~60M
    "llama-draft-s": ("llama", 128, 2, 4, 1024),
    "llama-target-m": ("llama", 256, 6, 8, 1024),
}
# Models the committed science tables and benchmarks were measured on (results/<task>/, results/pretrained/,
# the crossover benchmark, the demo run before the Llama pair): kept so those results reproduce, but their
# head sizes (16, 24, 48) no server takes
LEGACY_PRESETS: dict[str, tuple[str, int, int, int, int]] = {
    "neox-demo-deep": ("gpt_neox", 96, 8, 4, 512),
    "neox-demo-draft": ("gpt_neox", 32, 2, 2, 512),
    "neox-draft-xxs": ("gpt_neox", 32, 2, 2, 1024),  # ~0.16M at a 2k vocabulary
    "neox-draft-xs": ("gpt_neox", 64, 2, 4, 1024),  # ~0.6M
    "neox-target-l": ("gpt_neox", 384, 8, 8, 1024),  # ~17M (the crossover benchmark's)
}


def check_preset(preset: str) -> None:
    """Refuse an unknown preset in one line (the legacy ones stay buildable, unlisted)."""
    if preset not in PRESETS and preset not in LEGACY_PRESETS:
        raise AdaspecError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
