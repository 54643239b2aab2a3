"""The ``flashbone`` command line.

    flashbone <command> [--config FILE.yaml] [flags]

Each command lives in its own module, which exposes ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them up. ``--config`` reads a YAML file whose
keys are the flag names (``max-length`` or ``max_length``); flags on the command line win.
Errors a user can cause print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
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
    "bench": ("flashbone.commands.bench", "time Bone/Bat against the frozen base, PEFT and full fine-tuning"),
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


def apply_config_file(parser: argparse.ArgumentParser, path: str | None) -> None:
    """Use a YAML file's values as the parser's defaults; unknown keys are an error."""
    if not path:
        return
    data = _load_yaml(path)
    dests = {a.dest for a in parser._actions}
    defaults = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in dests or dest in ("help", "config"):
            known = sorted(d.replace("_", "-") for d in dests if d not in ("help", "config"))
            raise CLIError(f"--config {path}: unknown key {key!r}; known keys: {', '.join(known)}")
        defaults[dest] = value
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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv or argv[0] in ("-h", "--help", "--version") or argv[0] not in COMMANDS:
        if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
            top.error(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}")
        top.parse_args(argv or ["--help"])
        return 0
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"flashbone {name}", description=module.__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of flag values")
    module.add_arguments(parser)
    try:
        pre, _ = parser.parse_known_args(rest)
        apply_config_file(parser, pre.config)
        args = parser.parse_args(rest)
        return int(module.run(args) or 0)
    except BoneError as e:
        print(f"flashbone {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"flashbone {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
