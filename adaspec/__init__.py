"""adaspec: selective distillation of draft models and lossless speculative decoding."""

from adaspec.errors import AdaspecError

__all__ = ["AdaspecError", "speculative_generate", "SpecStats"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy, so `import adaspec` stays cheap and a half-built package still imports
    if name == "speculative_generate":
        from adaspec.decoding.generate import speculative_generate
        return speculative_generate
    if name == "SpecStats":
        from adaspec.metrics import SpecStats
        return SpecStats
    raise AttributeError(name)
