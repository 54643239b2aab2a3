"""Run ``flashbone ARGV`` with one fault injected, for tests/test_fault_injection.py.

    python tests/fault_driver.py '{"target": "flashbone.checkpoints:save_file", "call": 2,
                                   "action": "kill", "match": ""}' train --out ...

target:  "module:attribute" of a writer to wrap (it is replaced in that module only)
call:    the k-th call (counting calls whose arguments contain ``match``) is the faulty one
action:  "kill": write half a file to the call's path argument, then SIGKILL this process
         (what a power cut or the OOM killer does: no cleanup runs);
         "before": SIGKILL instead of making the call; "after": let the call finish, then SIGKILL;
         "enospc" / "erofs": raise OSError(ENOSPC / EROFS) instead of writing
"""

import errno
import importlib
import json
import os
import signal
import sys
from pathlib import Path


def _path_arg(args):
    for a in args[1:2] + args[:1]:
        if isinstance(a, (str, os.PathLike)):
            return Path(a)
    return None


def install(spec: dict, set_attribute=setattr) -> None:
    """Wrap the writer ``spec`` names; ``set_attribute``: pytest's monkeypatch.setattr in-process."""
    module_name, attr = spec["target"].split(":")
    module = importlib.import_module(module_name)
    real = getattr(module, attr)
    seen = {"n": 0}

    def faulty(*args, **kwargs):
        if spec.get("match", "") not in " ".join(map(str, args)):
            return real(*args, **kwargs)
        seen["n"] += 1
        if seen["n"] != spec["call"]:
            return real(*args, **kwargs)
        action = spec["action"]
        if action in ("enospc", "erofs"):
            code = errno.ENOSPC if action == "enospc" else errno.EROFS
            raise OSError(code, os.strerror(code), str(_path_arg(args)))
        if action == "after":
            real(*args, **kwargs)
        elif action == "kill":
            path = _path_arg(args)
            if path is not None and path.parent.is_dir():
                path.write_bytes(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)

    set_attribute(module, attr, faulty)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from flashbone import cli

    install(json.loads(sys.argv[1]))
    sys.exit(cli.main(sys.argv[2:]))
