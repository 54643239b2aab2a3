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


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (relative path -> sha256 of the bytes, or "dir")."""
    import hashlib

    root = Path(root)
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def one_line_error(rc: int, err: str, *words: str) -> str:
    """Assert the run ended with exit 2 and one error line holding ``words``; returns that line."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("flashbone ")
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]
