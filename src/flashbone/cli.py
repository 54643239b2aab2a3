"""The ``flashbone`` command line.

    flashbone <command> [--config FILE.yaml] [flags]

Each command lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them up. ``--config`` reads a YAML file whose
keys are the flag names (``max-length`` or ``max_length``); flags on the command line win.
Errors a user can cause print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from pathlib import Path
from typing import Sequence

from .errors import BoneError, CLIError

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("flashbone.commands.train", "fine-tune a model with Bone, Bat, a baseline or in full"),
    "merge": ("flashbone.commands.merge", "merge an adapter into its base and save a HF checkpoint"),
    "eval": ("flashbone.commands.evaluate", "generate and score on GSM8K, MATH or tiny-math"),
    "plot": ("flashbone.commands.plot", "loss curves of several runs in one figure"),
    "generate": ("flashbone.commands.generate", "try a model, with or without an adapter: prompt in, text out"),
    "bench": ("flashbone.commands.bench", "time Bone/Bat against the frozen base, PEFT and full fine-tuning"),
    "study": ("flashbone.commands.study", "compare methods over a grid of ranks, learning rates and seeds"),
}


def _load_yaml(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise CLIError(f"--config {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise CLIError(f"--config {path}: expected a mapping of flag names to values")
    return data


def _config_value(action: argparse.Action, key: str, value, path: str):
    """A YAML value checked and converted as the flag's own parser would."""
    flag = action.option_strings[0] if action.option_strings else action.dest
    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        if not isinstance(value, bool):
            raise CLIError(f"--config {path}: key {key!r} takes true or false, got {value!r}")
        return value
    if value is None:
        return None
    if action.type is not None:
        if isinstance(value, (bool, list, dict)):
            raise CLIError(f"--config {path}: key {key!r} takes one value like {flag} does, got {value!r}")
        try:
            value = action.type(value) if not isinstance(value, action.type) else value
        except (TypeError, ValueError):
            kind = getattr(action.type, "__name__", "value")
            raise CLIError(f"--config {path}: key {key!r} must be a {kind}, got {value!r}") from None
    elif (
        isinstance(value, dict) or isinstance(value, list) and not all(isinstance(x, (str, int, float)) for x in value)
    ):  # a YAML list of names (--targets) is fine
        raise CLIError(f"--config {path}: key {key!r} takes one value like {flag} does, got {value!r}")
    if action.choices is not None and value not in action.choices:
        raise CLIError(
            f"--config {path}: key {key!r} must be one of {', '.join(map(str, action.choices))}, got {value!r}"
        )
    return value


def apply_config_file(parser: argparse.ArgumentParser, path: str | None) -> None:
    """Use a YAML file's values as the parser's defaults, checked like the flags; unknown keys
    are an error. ``no-X: true`` sets ``X: false`` for the on/off flags (``--no-progress``)."""
    if not path:
        return
    data = _load_yaml(path)
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    defaults = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if (
            dest not in actions
            and dest.startswith("no_")
            and dest[3:] in actions
            and isinstance(actions[dest[3:]], argparse.BooleanOptionalAction)
        ):
            dest, value = dest[3:], (not value if isinstance(value, bool) else value)
        if dest not in actions:
            known = sorted(d.replace("_", "-") for d in actions)
            raise CLIError(f"--config {path}: unknown key {key!r}; known keys: {', '.join(known)}")
        defaults[dest] = _config_value(actions[dest], str(key), value, path)
    parser.set_defaults(**defaults)


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    # allow_abbrev=False everywhere: "--adapter DIR" must not be read as "--adapter-r DIR"
    parser = argparse.ArgumentParser(prog="flashbone", description=__doc__.split("\n")[1], allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"flashbone {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False, allow_abbrev=False)
    return parser


# optional parts of flashbone: the module a command may miss -> the extra that installs it
EXTRAS = {
    "datasets": "train",
    "matplotlib": "train",
    "tensorboard": "train",
    "accelerate": "train",
    "peft": "peft",
    "bitsandbytes": "quant",
    "fla": "rwkv",
}
# an output that cannot be written: a one-line error, not a traceback
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENAMETOOLONG}


def _missing_extra(e: ModuleNotFoundError) -> str | None:
    top = (e.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    return f'this needs the optional package {top!r}: pip install "flashbone[{EXTRAS[top]}]"'


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv:  # a command is needed: say which there are, and fail like any missing argument
        top.print_help(sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "--version") or argv[0] not in COMMANDS:
        if argv[0] not in COMMANDS and not argv[0].startswith("-"):
            top.error(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}")
        top.parse_args(argv)
        return 0
    name, rest = argv[0], argv[1:]
    try:
        module = importlib.import_module(COMMANDS[name][0])
        parser = argparse.ArgumentParser(
            prog=f"flashbone {name}",
            description=module.__doc__,
            allow_abbrev=False,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of flag values")
        module.add_arguments(parser)
        pre, _ = parser.parse_known_args(rest)
        apply_config_file(parser, pre.config)
        args = parser.parse_args(rest)
        return int(module.run(args) or 0)
    except BoneError as e:
        print(f"flashbone {name}: error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        hint = _missing_extra(e)
        if hint is None:
            raise
        print(f"flashbone {name}: error: {hint}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
        where = f" {e.filename}" if e.filename else ""
        print(
            f"flashbone {name}: error: cannot {'write' if full else 'access'}{where}: {e.strerror or e}; what was "
            f"there before is unchanged: {'free space or ' if full else ''}choose another location",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"flashbone {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
