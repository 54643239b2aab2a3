"""Compare fine-tuning methods over a grid: methods x ranks x learning rates x seeds.

  flashbone study study.yaml                 # run (or resume) the grid, then write the report
  flashbone study study.yaml --jobs 8        # 8 cells at a time (one process each; e.g. one GPU)
  flashbone study study.yaml --report-only   # tables and plots from the cells finished so far

Each cell is one `flashbone train` (no evaluation inside) and one `flashbone eval` per
evaluation split, run in a process of its own; it is finished when CELL/summary.json exists,
and a rerun skips finished cells (an interrupted grid resumes). Three phases:
    sweep   every method x every lr, on the sweep seeds
    pick    per method the lr with the best mean accuracy on the validation split (never a
            test split); ties go to the lower final training loss
    seeds   the picked lr on the remaining seeds; the rank sweep at each method's picked lr
The report (OUT/results.md, OUT/results.json, OUT/loss.png, OUT/rank.png) gives mean +- std
over seeds. The config (YAML):

    out: runs/study                      # the study folder (--out overrides)
    model: null                          # null: the built-in tiny base; else a hub name/folder
    data: tiny-math
    train: {max-samples: 1600, max-steps: 100}   # any other `flashbone train` flags
    seeds: [0, 1, 2]
    sweep_seeds: [0]                     # seeds of the lr sweep (default: all seeds)
    eval: {valid: tiny-math:valid, test: [tiny-math:test, tiny-math:unseen], samples: 200,
           task: tiny-math, max-new-tokens: 80, batch-size: 100}
    methods:                             # one entry per compared method, lr: the values tried
      - {method: bone, r: 32, lr: [1e-3, 2e-3, 4e-3]}
      - {method: lora, r: 16, lr: [1e-3, 2e-3, 4e-3]}
    rank_sweep:                          # optional: more ranks at the picked lr, every seed
      - {method: bone, r: [8, 16, 64]}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import CLIError
from ._study_plan import Cell, StudyConfig, load_config, pick_lrs, plan_ranks, plan_seeds, plan_sweep


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study_config", metavar="CONFIG.yaml", help="the grid (see above)")
    p.add_argument("--out", help="study folder (default: the config's out)")
    p.add_argument("--jobs", type=int, help="cells run at a time, one process each [1]")
    p.add_argument("--report-only", action="store_true", help="only write the report from finished cells")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a line per cell")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # internal: run one cell in this process


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.study_config, args.out)
    if args.cell:
        return _run_cell(cfg, Cell.from_id(args.cell))
    jobs = args.jobs or cfg.jobs
    if not isinstance(jobs, int) or jobs < 1:
        raise CLIError(f"--jobs must be a positive integer, got {jobs!r}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "study.yaml").write_text(Path(args.study_config).read_text())
    failed: list[str] = []
    if not args.report_only:
        t0 = time.time()
        failed += _run_cells(cfg, plan_sweep(cfg), jobs, args.progress, "sweep")
        picked = pick_lrs(cfg)
        failed += _run_cells(
            cfg, plan_seeds(cfg, picked) + plan_ranks(cfg, picked), jobs, args.progress, "seeds and ranks"
        )
        print(f"grid done in {time.time() - t0:.0f}s", flush=True)
    from ._study_report import write_report

    paths = write_report(cfg)
    print("report: " + ", ".join(str(p) for p in paths))
    if failed:  # the report above covers the finished cells
        raise CLIError(
            f"{len(failed)} cell(s) failed ({', '.join(failed[:5])}); their log.txt says why; "
            "rerun the same command to retry them (finished cells are kept)"
        )
    return 0


def _run_cells(cfg: StudyConfig, cells: list[Cell], jobs: int, progress: bool, phase: str) -> list[str]:
    """Run the unfinished ``cells``, ``jobs`` at a time; returns the ids of those that failed."""
    todo = [c for c in cells if not (cfg.cell_dir(c) / "summary.json").is_file()]
    print(f"{phase}: {len(cells)} cells, {len(cells) - len(todo)} already finished, {len(todo)} to run", flush=True)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    failed = []

    def one(cell: Cell) -> None:
        folder = cfg.cell_dir(cell)
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
        t = time.time()
        with open(folder / "log.txt", "w") as log:
            rc = subprocess.call(
                [sys.executable, "-m", "flashbone", "study", str(cfg.source), "--out", str(cfg.out), "--cell", cell.id],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if rc != 0:
            failed.append(cell.id)
        if progress:
            print(
                f"  {cell.id}: {'done' if rc == 0 else f'FAILED (rc {rc}, see {folder}/log.txt)'} "
                f"in {time.time() - t:.0f}s",
                flush=True,
            )

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(one, todo))
    return failed


def cli_main(argv: list[str]) -> int:
    """``flashbone train|eval ARGV`` in this process (commands sit below cli.py, so not through it)."""
    from . import evaluate, train

    module = {"train": train, "eval": evaluate}[argv[0]]
    parser = argparse.ArgumentParser(prog=f"flashbone {argv[0]}")
    module.add_arguments(parser)
    return int(module.run(parser.parse_args(argv[1:])) or 0)


def _run_cell(cfg: StudyConfig, cell: Cell) -> int:
    """Train and evaluate one cell in this process; CELL/summary.json is written last."""
    import resource

    folder = cfg.cell_dir(cell)
    run_dir = folder / "run"
    argv = [
        "train",
        "--data",
        cfg.data,
        "--method",
        cell.method,
        "--r",
        str(cell.r),
        "--lr",
        repr(cell.lr),
        "--seed",
        str(cell.seed),
        "--out",
        str(run_dir),
        "--overwrite",
        "--eval-task",
        "none",
        "--no-progress",
    ]
    if cfg.model:
        argv += ["--model", cfg.model]
    argv += cfg.train_argv
    if cli_main(argv) != 0:
        return 1
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    train = json.loads((run_dir / "summary.json").read_text())
    full = cell.method == "full"
    acc = {}
    for name, source in cfg.eval_splits().items():
        out = folder / f"eval-{name}.jsonl"
        argv = [
            "eval",
            "--data",
            source,
            "--task",
            cfg.eval_task,
            "--max-samples",
            str(cfg.eval_samples),
            "--max-new-tokens",
            str(cfg.max_new_tokens),
            "--batch-size",
            str(cfg.eval_batch_size),
            "--out",
            str(out),
            "--no-progress",
        ] + cfg.eval_argv
        argv += ["--model", str(run_dir / "model")] if full else ["--adapter", str(run_dir / "adapter")]
        if cfg.model and not full:
            argv += ["--model", cfg.model]
        if cli_main(argv) != 0:
            return 1
        recs = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
        acc[name] = sum(r["correct"] for r in recs) / max(len(recs), 1)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    loss = [m["loss"] for m in metrics]
    summary = {
        **cell.as_dict(),
        "trainable_params": train["trainable_params"],
        "steps": train["steps"],
        "loss_first100": sum(loss[:100]) / len(loss[:100]),
        "loss_final": sum(loss[-10:]) / len(loss[-10:]),
        "tokens_per_s": train["tokens"] / max(train["train_seconds"], 1e-9),
        "peak_gpu_memory_gib": train["peak_gpu_memory_gib"],
        "peak_rss_gib": round(peak_rss_gib, 3),
        "accuracy": acc,
        "device": train["device"],
        "train_seconds": train["train_seconds"],
    }
    tmp = folder / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.rename(folder / "summary.json")
    with contextlib.suppress(OSError):  # the adapter stays; the per-step losses are kept for the plot
        (run_dir / "loss.png").unlink()
    return 0


__all__ = ["add_arguments", "run"]
