"""The package's layer contract: each layer imports only the layers below it (function-level and
type-checking imports included), so no two packages import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adaspec"

# bottom to top; a module belongs to the first entry its name starts with
LAYERS = (
    ("adaspec.errors", "adaspec.io", "adaspec.safety", "adaspec.options", "adaspec.presets"),
    ("adaspec.core",),
    ("adaspec.data",),
    ("adaspec.models",),
    ("adaspec.distill",),
    ("adaspec.decoding",),
    ("adaspec.training",),
    ("adaspec.drafters",),
    ("adaspec.serving",),
    ("adaspec.evaluation",),
    ("adaspec.recipes",),
    ("adaspec.config", "adaspec.cli", "adaspec"),
)


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, unit) of a module; a unit is a package or base module, the granularity of the contract."""
    for i, units in enumerate(LAYERS):
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                return i, unit
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every adaspec import in a file, wherever it stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "adaspec":  # `from adaspec import data`: the submodule is what is imported
                found += [(node.lineno, f"adaspec.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return [(line, m) for line, m in found if m == "adaspec" or m.startswith("adaspec.")]


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here, unit = layer_of(module_name(path))
        for line, target in imported(path):
            there, other = layer_of(target)
            if there > here or (there == here and other != unit and here not in (0, len(LAYERS) - 1)):
                bad.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} "
                    f"(layer {there}, {other}) from layer {here} ({unit})"
                )
    return bad


def test_layers_import_only_downward() -> None:
    assert violations() == []


@pytest.mark.parametrize("module", ["adaspec.core.verify", "adaspec.recipes.distill", "adaspec"])
def test_every_module_has_a_layer(module: str) -> None:
    assert layer_of(module)[0] >= 0
