"""Shared helpers of the CLI tests: run `flashbone ...` in-process, tiny settings."""

from __future__ import annotations

import json
from pathlib import Path

from flashbone import cli

# a few steps on the built-in tiny base; no evaluation
TINY = ["--max-samples", "8", "--batch-size", "4", "--max-steps", "2", "--eval-task", "none", "--no-progress"]


def flashbone(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``flashbone argv...``; returns (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def train(capsys, out: Path, *extra: str) -> tuple[int, str, str]:
    return flashbone(capsys, "train", *TINY, "--out", out, *extra)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
