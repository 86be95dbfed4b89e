"""Packaging and hygiene: import cost, lazy heavy imports, lint, README and CI in step."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def test_import_does_not_load_model_libraries():
    loaded = run_python(
        "import sys, layerdecay; "
        "print(','.join(m for m in ('timm', 'torchvision', 'transformers', 'matplotlib', 'rich') if m in sys.modules))"
    )
    assert loaded == ""


def test_planning_with_a_torch_optimizer_does_not_import_timm():
    loaded = run_python(
        "import sys, torch, layerdecay\n"
        "m = torch.nn.Sequential(torch.nn.Linear(2, 2))\n"
        "layerdecay.build_optimizer(m, 'adamw', lr=0.1, layer_decay=1.0)\n"
        "print('timm' in sys.modules)"
    )
    assert loaded == "False"


def test_public_api_is_typed():
    assert (ROOT / "src" / "layerdecay" / "py.typed").exists()
    for family in ("convnext", "vit", "swin"):
        assert (ROOT / "plugins" / family / "src" / f"layerdecay_{family}" / "py.typed").exists()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    needle = 'python3 -m venv .venv && .venv/bin/pip install -e ".[test]"'
    assert needle in ci
    line = next(line for line in readme.splitlines() if line.startswith(needle))
    assert line.endswith(".venv/bin/pytest")
    for family in ("convnext", "vit", "swin"):
        assert f"-e plugins/{family}" in line


@pytest.mark.skipif(shutil.which("ruff") is None and not (Path(sys.executable).parent / "ruff").exists(),
                    reason="ruff is not installed")
def test_ruff_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    result = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
