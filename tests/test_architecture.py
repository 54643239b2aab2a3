"""The layout of docs/architecture.md holds: imports run one way between the layers, and the
linter configured in pyproject.toml passes.

The contract lives in pyproject.toml (``[tool.importlinter]``); import-linter reads every
module's imports (function-level ones included) without running them.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_imports_run_one_way(capsys):
    cli = pytest.importorskip("importlinter.cli")
    code = cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def test_ruff_lint_passes():
    import shutil
    import subprocess

    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    out = subprocess.run([ruff, "check", "src", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run([ruff, "format", "--check", "src", "tests"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, "run `ruff format src tests`:\n" + out.stdout + out.stderr


def test_import_flashbone_leaves_transformers_for_later():
    """`import flashbone` (and so the CLI's start) does not pay for transformers' PreTrainedModel;
    the names from flashbone.model import it on first use."""
    import subprocess
    import sys

    code = (
        "import sys, flashbone; assert 'transformers' not in sys.modules, 'imported early'; "
        "from flashbone import BoneModel, get_bone_model; import transformers; "
        "assert issubclass(BoneModel, transformers.PreTrainedModel) and callable(get_bone_model); "
        "assert 'load_adapter' in dir(flashbone)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
