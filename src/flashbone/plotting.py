"""Loss curves of training runs in one figure (the papers' Figure 1 layout).

RUN_DIR/metrics.jsonl  (step, loss)        -> one line per run
                       (step, val_loss)    -> dashed, with markers, in the run's colour
                                              (runs with --val-split / --val-data)
RUN_DIR/summary.json   (method, r, params) -> its label "bone r=64 (87.0M trainable)"
main axes: every step;  inset: the first ``inset_steps`` steps enlarged
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import BoneError


class PlotError(BoneError):
    """A run folder without metrics, or an unwritable output."""


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{run_dir}: no metrics.jsonl; is it a `flashbone train --out` folder?")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise PlotError(f"{path}: line {i} is not JSON") from None
    if not rows:
        raise PlotError(f"{path}: holds no steps yet")
    return rows


def _human(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def run_label(run_dir: str | Path) -> str:
    """``method r=R (N trainable)`` from the run's summary.json, else the folder name."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return Path(run_dir).name
    info = json.loads(path.read_text())
    method = info.get("method", Path(run_dir).name)
    r = f" r={info['r']}" if info.get("r") and method != "full" else ""
    n = info.get("trainable_params")
    return f"{method}{r}" + (f" ({_human(int(n))} trainable)" if n else "")


def plot_runs(
    run_dirs: list[str | Path],
    out: str | Path,
    inset_steps: int = 100,
    labels: list[str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG with the loss of every run against its step, and an inset of the first steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(labels[i] if labels else run_label(d), read_metrics(d)) for i, d in enumerate(run_dirs)]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    longest = max(r[-1]["step"] for _, r in runs)
    inset = None
    if inset_steps and longest > inset_steps * 1.5:
        inset = ax.inset_axes([0.45, 0.45, 0.5, 0.45])
    for label, rows in runs:
        steps = [r["step"] for r in rows]
        loss = [r["loss"] for r in rows]
        (line,) = ax.plot(steps, loss, label=label, linewidth=1.2)
        val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
        if val:
            ax.plot(
                *zip(*val),
                label=f"{label}, validation",
                color=line.get_color(),
                linestyle="--",
                marker="o",
                markersize=3,
                linewidth=1.0,
            )
        if inset is not None:
            k = [i for i, s in enumerate(steps) if s <= inset_steps]
            inset.plot([steps[i] for i in k], [loss[i] for i in k], color=line.get_color(), linewidth=1.0)
            early = [(s, v) for s, v in val if s <= inset_steps]
            if early:
                inset.plot(
                    *zip(*early), color=line.get_color(), linestyle="--", marker="o", markersize=2, linewidth=0.8
                )
    ax.set_xlabel("step")
    ax.set_ylabel(
        "loss (response tokens)"
        if any(r.get("val_loss") is not None for _, rs in runs for r in rs)
        else "training loss (response tokens)"
    )
    ax.set_title(title or "Training loss")
    ax.grid(alpha=0.3)
    # the inset takes the upper right; the legend goes under it, clear of the early steep part
    ax.legend(loc="upper right", bbox_to_anchor=(0.98, 0.42) if inset is not None else None, fontsize=8)
    if inset is not None:
        inset.set_title(f"first {inset_steps} steps", fontsize=8)
        inset.tick_params(labelsize=7)
        inset.grid(alpha=0.3)
    out = Path(out)
    if out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise PlotError(f"--out {out}: use a .png, .pdf or .svg file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


__all__ = ["plot_runs", "read_metrics", "run_label", "PlotError"]
