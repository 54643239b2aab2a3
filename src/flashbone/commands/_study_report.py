"""The study's report: results.json, results.md (mean +- std over seeds), loss.png, rank.png."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from ._study_plan import Cell, StudyConfig, pick_lrs, read_cell


@dataclass
class Row:
    """One (method, r, lr) over its finished seeds."""

    method: str
    r: int
    lr: float
    seeds: list[int]
    trainable_params: int
    accuracy: dict[str, tuple[float, float]]  # split -> (mean, std) in %
    loss_first100: tuple[float, float]
    loss_final: tuple[float, float]
    tokens_per_s: tuple[float, float]
    peak_memory_gib: float | None
    memory_kind: str


def _ms(xs: list[float]) -> tuple[float, float]:
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _row(cfg: StudyConfig, method: str, r: int, lr: float, seeds: list[int]) -> Row | None:
    done = [(s, d) for s in seeds if (d := read_cell(cfg, Cell(method, r, lr, s))) is not None]
    if not done:
        return None
    ds = [d for _, d in done]
    gpu = [d["peak_gpu_memory_gib"] for d in ds if d.get("peak_gpu_memory_gib") is not None]
    mem = max(gpu) if gpu else max(d["peak_rss_gib"] for d in ds)
    return Row(
        method,
        r,
        lr,
        [s for s, _ in done],
        ds[0]["trainable_params"],
        {k: _ms([100 * d["accuracy"][k] for d in ds]) for k in ds[0]["accuracy"]},
        _ms([d["loss_first100"] for d in ds]),
        _ms([d["loss_final"] for d in ds]),
        _ms([d["tokens_per_s"] for d in ds]),
        round(mem, 3),
        "GPU peak" if gpu else "process RSS",
    )


def collect(cfg: StudyConfig) -> dict:
    """Every table of the report as plain data."""
    picked = pick_lrs(cfg)
    main = [
        x for m in cfg.methods if m.method in picked if (x := _row(cfg, m.method, m.r, picked[m.method], cfg.seeds))
    ]
    sweep = [x for m in cfg.methods for lr in m.lrs if (x := _row(cfg, m.method, m.r, lr, cfg.sweep_seeds))]
    ranks = [
        x
        for meth, rs in cfg.rank_sweep.items()
        if meth in picked
        for r in sorted(set(rs) | {cfg.spec(meth).r})
        if (x := _row(cfg, meth, r, picked[meth], cfg.seeds))
    ]
    missing = [m.method for m in cfg.methods if m.method not in picked]
    return {"picked_lr": picked, "main": main, "lr_sweep": sweep, "rank_sweep": ranks, "unfinished_sweeps": missing}


def _pm(x: tuple[float, float], fmt: str = ".1f") -> str:
    return f"{x[0]:{fmt}} ± {x[1]:{fmt}}"


def _table(rows: list[Row], splits: list[str], lr_col: bool = True) -> list[str]:
    head = (
        ["method", "r", "trainable"]
        + (["lr"] if lr_col else [])
        + ["seeds"]
        + [f"{s} acc %" for s in splits]
        + ["loss, first 100 steps", "final loss", "tokens/s", "peak memory GiB"]
    )
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for x in rows:
        cells = (
            [x.method, "-" if x.method == "full" else str(x.r), f"{x.trainable_params:,}"]
            + ([f"{x.lr:g}"] if lr_col else [])
            + [str(len(x.seeds))]
            + [_pm(x.accuracy[s]) if s in x.accuracy else "" for s in splits]
            + [
                _pm(x.loss_first100, ".3f"),
                _pm(x.loss_final, ".3f"),
                f"{x.tokens_per_s[0]:,.0f}",
                f"{x.peak_memory_gib:.2f} ({x.memory_kind})",
            ]
        )
        out.append("| " + " | ".join(cells) + " |")
    return out


def write_report(cfg: StudyConfig) -> list[Path]:
    data = collect(cfg)
    splits = list(cfg.eval_splits())
    (cfg.out / "results.json").write_text(
        json.dumps(
            {
                "config": str(cfg.source),
                "seeds": cfg.seeds,
                "sweep_seeds": cfg.sweep_seeds,
                "splits": cfg.eval_splits(),
                "picked_lr": data["picked_lr"],
                "unfinished_sweeps": data["unfinished_sweeps"],
                **{k: [asdict(x) for x in data[k]] for k in ("main", "lr_sweep", "rank_sweep")},
            },
            indent=1,
        )
        + "\n"
    )
    md = [
        f"# Study: {cfg.source.name}",
        "",
        (
            f"Mean ± std over seeds {cfg.seeds}; the lr of each method was picked on `{cfg.valid}` "
            f"(seeds {cfg.sweep_seeds}); accuracy in %."
        ),
        "",
        "## Main comparison",
        "",
    ]
    md += _table(data["main"], splits)
    md += ["", f"## Learning-rate sweep (seeds {cfg.sweep_seeds})", ""] + _table(data["lr_sweep"], splits)
    if data["rank_sweep"]:
        md += ["", "## Rank sweep (each method at its picked lr)", ""] + _table(data["rank_sweep"], splits)
    if data["unfinished_sweeps"]:
        md += ["", f"Not finished: the lr sweep of {', '.join(data['unfinished_sweeps'])}."]
    (cfg.out / "results.md").write_text("\n".join(md) + "\n")
    paths = [cfg.out / "results.md", cfg.out / "results.json"]
    if data["main"]:
        paths.append(_loss_plot(cfg, data["main"]))
    if data["rank_sweep"]:
        paths.append(_rank_plot(data["rank_sweep"], splits[1] if len(splits) > 1 else splits[0], cfg.out / "rank.png"))
    return paths


def _mean_curve(cfg: StudyConfig, x: Row) -> tuple[list[int], list[float]]:
    curves = []
    for s in x.seeds:
        path = cfg.cell_dir(Cell(x.method, x.r, x.lr, s)) / "run" / "metrics.jsonl"
        curves.append([json.loads(line)["loss"] for line in path.read_text().splitlines() if line.strip()])
    n = min(len(c) for c in curves)
    return list(range(1, n + 1)), [statistics.mean(c[i] for c in curves) for i in range(n)]


def _smooth(ys: list[float], k: int) -> list[float]:
    return [statistics.mean(ys[max(0, i - k + 1) : i + 1]) for i in range(len(ys))]


def _loss_plot(cfg: StudyConfig, rows: list[Row]) -> Path:
    """The papers' Figure 1: loss against step (mean over seeds), the first 100 steps enlarged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    colors = plt.cm.tab20.colors  # 20 distinct colours: the default cycle repeats after 10
    for i, x in enumerate(rows):
        steps, loss = _mean_curve(cfg, x)
        label = x.method if x.method == "full" else f"{x.method} r={x.r}"
        (line,) = ax.plot(
            steps,
            _smooth(loss, 10),
            label=f"{label} ({x.trainable_params:,})",
            linewidth=1.1,
            color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20],
            linestyle="--" if x.method in ("lora", "pissa", "olora", "dora", "full") else "-",
        )
        k = min(100, len(steps))
        zoom.plot(steps[:k], loss[:k], color=line.get_color(), linestyle=line.get_linestyle(), linewidth=1.0)
    ax.set(xlabel="step", ylabel="training loss (mean over seeds, 10-step average)", title="Training loss")
    zoom.set(xlabel="step", title="first 100 steps (mean over seeds, unsmoothed)")
    lows = [min(_mean_curve(cfg, x)[1]) for x in rows]
    zoom.set_ylim(min(lows) * 0.9, max(lows) * 6)
    for a in (ax, zoom):
        a.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out = cfg.out / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def _rank_plot(rows: list[Row], split: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for method in dict.fromkeys(x.method for x in rows):
        pts = sorted((x.trainable_params, x.accuracy[split], x.r) for x in rows if x.method == method)
        ax.errorbar(
            [p[0] for p in pts],
            [p[1][0] for p in pts],
            yerr=[p[1][1] for p in pts],
            marker="o",
            capsize=3,
            label=method,
        )
        for n, (m, _), r in pts:
            ax.annotate(f"r={r}", (n, m), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set(
        xlabel="trainable parameters",
        ylabel=f"{split} accuracy % (mean ± std over seeds)",
        title="Accuracy against rank",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


__all__ = ["Row", "collect", "write_report"]
