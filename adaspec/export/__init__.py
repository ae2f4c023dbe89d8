"""Export trained drafters in the layouts serving engines load (vLLM, SGLang)."""

from adaspec.export.eagle import export_eagle1, export_eagle3, load_exported

__all__ = ["export_eagle1", "export_eagle3", "load_exported"]
