"""Where the commands write, and what they never touch (one set of rules for every command).

folder outputs (train --out, merge --out):
    built in the hidden sibling PARENT/.NAME.flashbone-partial, which holds the marker
    file .flashbone-run; renamed to NAME only when complete. An existing NAME is first
    renamed to .NAME.flashbone-old and removed only after the new NAME is in place.
--overwrite replaces only a folder that holds the marker (one flashbone wrote); never a
    regular file, the current folder or a folder above it, a home folder, the filesystem
    root, or a folder that is or holds an input (data, model, adapter).
file outputs (eval --out, plot --out): written to PARENT/.NAME.tmp-PID, then renamed over
    NAME (an input file is never an output).
Every location is checked before any long work: an unwritable one is one error line.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import BoneError

MARKER = ".flashbone-run"


class OutputError(BoneError):
    """An output location that flashbone must not or cannot write."""


@dataclass(frozen=True)
class OutputFolder:
    """A folder output: ``final`` is where it ends up, ``work`` where it is being written."""

    final: Path
    work: Path

    @property
    def in_place(self) -> bool:
        """True when an existing run is continued where it is (``--resume``)."""
        return self.work == self.final


def partial_of(final: Path) -> Path:
    """The temporary sibling a folder output is built in."""
    return final.parent / f".{final.name}.flashbone-partial"


def _old_of(final: Path) -> Path:
    return final.parent / f".{final.name}.flashbone-old-{os.getpid()}"


def is_flashbone_folder(path: Path) -> bool:
    return (path / MARKER).is_file()


def _homes() -> set[Path]:
    homes = {Path.home().resolve()}
    try:
        import pwd

        homes |= {Path(p.pw_dir).resolve() for p in pwd.getpwall() if p.pw_dir not in ("", "/")}
    except (ImportError, OSError, KeyError):  # no user database: the current home is enough
        pass
    return homes


def protected_reason(path: Path, inputs: dict[str, str | os.PathLike | None]) -> str | None:
    """Why ``path`` must never be replaced or removed, or None."""
    p = path.resolve()
    cwd = Path.cwd().resolve()
    if p == Path(p.anchor):
        return "is the filesystem root"
    if p == cwd:
        return "is the current folder"
    if p in cwd.parents:
        return "holds the current folder"
    homes = _homes()
    if p in homes:
        return "is a home folder"
    if any(p in h.parents for h in homes):
        return "holds a home folder"
    for flag, value in inputs.items():
        if not value or not Path(value).expanduser().exists():
            continue
        src = Path(value).expanduser().resolve()
        if p == src:
            return f"is the input {flag} {value}"
        if p in src.parents:
            return f"holds the input {flag} {value}"
    return None


def check_writable(path: Path, flag: str = "--out") -> None:
    """Raise unless ``path`` could be created: its nearest existing ancestor is a folder we can
    write in (tried with a probe file: permission bits say nothing for root or read-only mounts)."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: {parent} is a file, not a folder; choose another location")
    probe = parent / f".flashbone-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{flag} {path}: cannot write in {parent} ({e.strerror or e}); choose a folder you can write to"
        ) from None


def recover(final: Path) -> None:
    """Undo what a kill in the middle of :func:`finish` left: the previous folder set aside with
    no new one in place is put back; set-aside copies next to a complete folder are removed."""
    import glob

    olds = sorted(final.parent.glob(glob.escape(f".{final.name}.flashbone-old-") + "*"))
    olds = [o for o in olds if is_flashbone_folder(o)]
    if olds and not final.exists():
        os.rename(olds.pop(), final)
    for o in olds:
        shutil.rmtree(o, ignore_errors=True)


def plan_folder(
    out: str | os.PathLike,
    *,
    overwrite: bool,
    inputs: dict[str, str | os.PathLike | None],
    flag: str = "--out",
    other_ways: str = "",
) -> OutputFolder:
    """Check a folder output before any work and say where it will be built.

    Refused with one line: a file; a protected location; a non-empty folder without
    ``overwrite``; a non-empty folder flashbone did not write, even with ``overwrite``."""
    final = Path(out).expanduser().absolute()
    shown = str(out)
    reason = protected_reason(final, inputs)
    if reason:
        raise OutputError(f"{flag} {shown} {reason}; flashbone never writes over it: name a new folder, e.g. runs/x")
    if final.parent.is_dir():
        recover(final)
    if final.exists() or final.is_symlink():
        if final.is_symlink() or not final.is_dir():
            raise OutputError(f"{flag} {shown} is a file; flashbone never replaces a file: name a folder")
        if any(final.iterdir()):
            if not overwrite:
                raise OutputError(
                    f"{flag} {shown} is not empty; pass --overwrite to replace a folder flashbone "
                    f"wrote{other_ways}, or name a new folder"
                )
            if not is_flashbone_folder(final):
                raise OutputError(
                    f"{flag} {shown} holds files flashbone did not write (no {MARKER} in it); "
                    "--overwrite replaces only flashbone's own folders: name a new folder"
                )
    check_writable(final, flag)
    return OutputFolder(final=final, work=partial_of(final))


def begin(folder: OutputFolder, command: str) -> Path:
    """Create the work folder (a leftover of a killed run is flashbone's own: removed) with its marker."""
    if not folder.in_place:
        if folder.work.exists():
            shutil.rmtree(folder.work)
        folder.work.mkdir(parents=True)
    mark(folder.work, command)
    return folder.work


def mark(path: Path, command: str) -> None:
    """Write the marker that lets a later ``--overwrite`` recognise the folder as flashbone's."""
    info = {"written_by": f"flashbone {command}", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (path / MARKER).write_text(json.dumps(info) + "\n")


def finish(folder: OutputFolder) -> Path:
    """Rename the complete work folder into place; the previous one is removed only afterwards."""
    if folder.in_place:
        return folder.final
    old = None
    if folder.final.exists() and any(folder.final.iterdir()):
        old = _old_of(folder.final)
        os.rename(folder.final, old)
    elif folder.final.exists():
        folder.final.rmdir()  # empty: nothing of the user's is in it
    try:
        os.rename(folder.work, folder.final)
    except OSError:
        if old is not None:
            os.rename(old, folder.final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder.final


def abort(folder: OutputFolder) -> None:
    """Remove an unfinished work folder (never the final one, never a folder continued in place)."""
    if not folder.in_place:
        shutil.rmtree(folder.work, ignore_errors=True)


def _follow_umask(root: Path) -> None:
    """Give every file under ``root`` the mode the user's umask asks for: some writers (safetensors
    through transformers' save_pretrained) create their files 0600."""
    mask = os.umask(0)
    os.umask(mask)
    for f in root.rglob("*"):
        if f.is_file() and not f.is_symlink():
            os.chmod(f, 0o666 & ~mask)


def write_folder(folder: OutputFolder, command: str, write: Callable[[Path], None]) -> Path:
    """``write(work)``, then swap into place; any failure removes the work folder and nothing else."""
    work = begin(folder, command)
    try:
        write(work)
        _follow_umask(work)
    except BaseException:
        abort(folder)
        raise
    return finish(folder)


def check_file(
    out: str | os.PathLike,
    *,
    inputs: dict[str, str | os.PathLike | None],
    flag: str = "--out",
    example: str = "results.jsonl",
) -> Path:
    """Check a single-file output before any work: not a folder, not an input, writable."""
    path = Path(out).expanduser().absolute()
    if path.is_dir():
        raise OutputError(f"{flag} {out} is a folder; name a file, e.g. {Path(out) / example}")
    if path.exists():
        for flag_in, value in inputs.items():
            if value and Path(value).expanduser().exists() and Path(value).expanduser().resolve() == path.resolve():
                raise OutputError(f"{flag} {out} is the input {flag_in}; name another file")
    check_writable(path, flag)
    return path


def write_file(path: Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` to a temporary sibling, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.tmp-{os.getpid()}{path.suffix}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


__all__ = [
    "MARKER",
    "OutputError",
    "OutputFolder",
    "plan_folder",
    "begin",
    "finish",
    "abort",
    "write_folder",
    "check_file",
    "write_file",
    "check_writable",
    "protected_reason",
    "partial_of",
    "mark",
    "is_flashbone_folder",
]
