"""The layout of docs/architecture.md holds: imports run one way between the layers.

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

