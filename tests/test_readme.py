"""The README's promises: short, the Quick start's two commands, generated tables up to date, links that
resolve, and a Python example whose imports exist."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import readme  # experiments/readme.py

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "README.md").read_text()


def test_readme_is_short_and_keeps_the_quick_start() -> None:
    assert len(TEXT.splitlines()) < 250
    assert "make demo" in TEXT and "make test" in TEXT
    assert "<!-- results:start -->" in TEXT and "<!-- results:end -->" in TEXT


def test_generated_tables_are_up_to_date() -> None:
    assert readme.main(["--check"]) == 0, "run `python experiments/readme.py`"


def test_relative_links_resolve() -> None:
    docs = [ROOT / "README.md", ROOT / "results/benchmarks/README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" not in target and not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_python_example_imports_exist() -> None:
    blocks = re.findall(r"```python\n(.*?)```", TEXT, re.S)
    assert blocks, "the README has a Python example"
    for node in ast.walk(ast.parse(blocks[0])):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adaspec"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
