"""Loss curves of several training runs in one figure, labelled by method and trainable
parameters, with the first steps enlarged in an inset (the papers' Figure 1).

  flashbone plot runs/bone runs/bat runs/lora --out loss.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CLIError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="folders written by `flashbone train --out`")
    p.add_argument("--out", help="image file (.png, .pdf or .svg) [loss.png]")
    p.add_argument("--inset-steps", type=int, help="steps shown enlarged in the inset [100; 0: no inset]")
    p.add_argument("--labels", help="comma-separated labels, one per run (default: method r= (N trainable))")
    p.add_argument("--title", help="figure title")


def run(args: argparse.Namespace) -> int:
    from .. import outputs
    from ..plotting import plot_runs, read_metrics

    if not args.runs:
        raise CLIError("give at least one RUN_DIR (a folder written by `flashbone train --out`)")
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    if labels is not None and len(labels) != len(args.runs):
        raise CLIError(f"--labels has {len(labels)} entries for {len(args.runs)} runs")
    inset = 100 if args.inset_steps is None else args.inset_steps
    if inset < 0:
        raise CLIError(f"--inset-steps must be >= 0, got {inset}")
    out = args.out or "loss.png"
    if Path(out).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise CLIError(f"--out {out}: use a .png, .pdf or .svg file name")
    for run_dir in args.runs:  # every run is read before anything is drawn or written
        read_metrics(run_dir)
    path = outputs.check_file(out, inputs={}, example="loss.png")
    outputs.write_file(path, lambda tmp: plot_runs(args.runs, tmp, inset_steps=inset, labels=labels, title=args.title))
    print(f"wrote {out} ({len(args.runs)} runs)")
    return 0


__all__ = ["add_arguments", "run"]
