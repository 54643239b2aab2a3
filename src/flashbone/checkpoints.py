"""Checkpoints of the training loop: written atomically, read back for an exact resume.

    DIR/checkpoints/step-00000040/{trainable.safetensors, trainer.pt, state.json}

``trainable.safetensors``: the trainable tensors (full tensors, one-process format); ``trainer.pt``:
optimizer and scheduler states and the RNG states; ``state.json``: the step, the run's
fingerprint (the settings a resumed run must share) and its number of processes. A checkpoint is
written into ``.tmp-step-...``, fsynced, then renamed: a kill during a save leaves only a temp
folder, which resume ignores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import BoneError

_CKPT_RE = re.compile(r"^step-(\d{8})$")


class CheckpointError(BoneError):
    """A checkpoint that is missing, unreadable or from a run with other settings."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    root: Path, step: int, params: dict[str, torch.Tensor], trainer: dict, state: dict, keep: int
) -> Path:
    """Write ``root/step-NNNNNNNN`` atomically (temp folder, fsync, rename) and keep the last ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({n: p.detach().to("cpu").contiguous() for n, p in params.items()}, str(tmp / "trainable.safetensors"))
    torch.save(trainer, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    mask = os.umask(0)
    os.umask(mask)
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~mask)  # safetensors creates its file 0600; a saved file gets the umask's mode
        _fsync(f)
    _fsync(tmp)
    if final.exists():  # the same step saved before (e.g. --stop-after at a --save-every step)
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(root)
    done = sorted(p for p in root.iterdir() if _CKPT_RE.match(p.name))
    for old in done[: max(0, len(done) - max(1, keep))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint (temp folders of an interrupted save are ignored)."""
    if not root.is_dir():
        return None
    done = sorted(
        p
        for p in root.iterdir()
        if _CKPT_RE.match(p.name)
        and all((p / f).is_file() for f in ("trainable.safetensors", "trainer.pt", "state.json"))
    )
    return done[-1] if done else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict, dict]:
    try:
        tensors = load_file(str(path / "trainable.safetensors"))
        trainer = torch.load(path / "trainer.pt", weights_only=True, map_location="cpu")
        state = json.loads((path / "state.json").read_text())
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to resume from the one before"
        ) from None
    return tensors, trainer, state


def check_resume(root: Path, fingerprint: dict, world: int = 1) -> Path:
    """The checkpoint to resume from; raises if there is none or its run had other settings
    (or another number of processes)."""
    path = latest_checkpoint(root)
    if path is None:
        raise CheckpointError(
            f"--resume: no complete checkpoint under {root}; run without --resume to start "
            "(and with --save-every N to write some)"
        )
    try:
        state = json.loads((path / "state.json").read_text())
        saved = state.get("fingerprint", {})
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({e}); delete it to resume from the one before"
        ) from None
    finished = int(state.get("step", 0)) >= int(state.get("total_steps") or 0) > 0
    for k, v in fingerprint.items():
        if saved.get(k) != v:
            if k == "max_steps" and finished and isinstance(v, int) and v > int(state["step"]):
                continue  # a finished run extended with a larger --max-steps
            raise CheckpointError(
                f"--resume: {path} was written with {k}={saved.get(k)!r}, this run has "
                f"{k}={v!r}; resume with the same settings"
            )
    if state.get("world", 1) != world:  # each process's share of a step depends on it
        raise CheckpointError(
            f"--resume: {path} was written by a run of {state.get('world', 1)} process(es), this "
            f"one has {world}; resume with --nproc {state.get('world', 1)}"
        )
    return path


__all__ = ["CheckpointError", "save_checkpoint", "latest_checkpoint", "load_checkpoint", "check_resume"]
