"""An installed wheel works outside the checkout: console script, task data, and the decode benchmark."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools writes build/ and *.egg-info beside the sources
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "adaspec", src / "adaspec", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # no build isolation: setuptools is already installed, and the machine may be offline
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
        check=True,
        cwd=root,
        capture_output=True,
    )
    wheel = next((root / "dist").glob("adaspec-*.whl"))
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)], check=True, capture_output=True
    )
    return root


def _run(installed: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(installed / "site"), "OMP_NUM_THREADS": "1"}
    env.pop("ADASPEC_DATA", None)
    return subprocess.run([sys.executable, *args], cwd=installed, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_runs_help_and_a_tiny_eval_from_outside_the_checkout(installed, tiny_target_dir, tiny_draft_dir):
    where = _run(installed, "-c", "import adaspec; print(adaspec.__file__)")
    assert where.stdout.strip().startswith(str(installed / "site")), where
    script = installed / "site" / "bin" / "adaspec"
    assert _run(installed, str(script), "--help").returncode == 0
    assert "--task" in _run(installed, str(script), "eval", "--help").stdout
    proc = _run(
        installed,
        str(script),
        "eval",
        "--target",
        str(tiny_target_dir),
        "--draft",
        str(tiny_draft_dir),
        "--task",
        "gsm8k",
        "--n-prompts",
        "1",
        "--max-new-tokens",
        "4",
        "--loss-examples",
        "1",
        "--no-cache",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "alpha = accepted/(accepted+rejected)" in proc.stdout
    # the decode benchmark `adaspec reproduce` runs on its drafts
    bench = _run(
        installed,
        "-c",
        "import sys; from adaspec.evaluation.speed import decode_benchmark, differing; "
        "r = decode_benchmark(sys.argv[1], sys.argv[2], n_prompts=1, max_new_tokens=4, repeats=1, "
        "methods=['sd']); print(sorted(r['methods']), differing(r))",
        str(tiny_target_dir),
        str(tiny_draft_dir),
    )
    assert bench.returncode == 0 and "['sd', 'target_only'] []" in bench.stdout, bench.stderr[-2000:]
