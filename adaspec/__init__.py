"""adaspec: selective distillation of draft models and lossless speculative decoding."""

from adaspec.errors import AdaspecError

__all__ = [
    "AdaspecError",
    "SpecStats",
    "load_drafter",
    "load_model",
    "load_tokenizer",
    "speculative_generate",
    "tree_speculative_generate",
]
_PUBLIC = {
    "speculative_generate": "adaspec.decoding.generate",
    "tree_speculative_generate": "adaspec.decoding.tree_generate",
    "SpecStats": "adaspec.core.metrics",
    "load_model": "adaspec.models",
    "load_tokenizer": "adaspec.models",
    "load_drafter": "adaspec.drafters.loading",
}
__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy, so `import adaspec` stays cheap and a half-built package still imports
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(name)
