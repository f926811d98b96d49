"""The package passes the Model Zoo's code-format check (black, isort, flake8 with the zoo's settings and plugins,
mirrored in ``pyproject.toml`` / ``setup.cfg``), so that a zoo export, which vendors it, passes unchanged; the zoo
unit-test files that an export places in the zoo's ``ci/unit_tests`` too."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["monai_moe_reg"]


@pytest.mark.parametrize("tool", [["black", "--check", "-q"], ["isort", "--check-only", "-q"], ["flake8"]])
def test_code_format_as_the_model_zoo_checks_it(tool):
    proc = subprocess.run([sys.executable, "-m", *tool, *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
