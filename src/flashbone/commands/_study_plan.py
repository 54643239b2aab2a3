"""The study's config and cells (see commands/study.py): what to run, and which lr each method keeps."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import CLIError

KNOWN_KEYS = {"out", "model", "data", "train", "seeds", "sweep_seeds", "eval", "methods", "rank_sweep", "jobs"}
RESERVED_TRAIN_FLAGS = {"method", "r", "lr", "seed", "out", "model", "data", "eval-task", "overwrite", "resume"}


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    method: str
    r: int
    lr: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.method}-r{self.r}-lr{self.lr:g}-s{self.seed}"

    @classmethod
    def from_id(cls, text: str) -> Cell:
        head, seed = text.rsplit("-s", 1)
        head, lr = head.rsplit("-lr", 1)
        method, r = head.rsplit("-r", 1)
        return cls(method, int(r), float(lr), int(seed))

    def as_dict(self) -> dict:
        return {"cell": self.id, **asdict(self)}


@dataclass
class MethodSpec:
    method: str
    r: int
    lrs: list[float]


@dataclass
class StudyConfig:
    source: Path
    out: Path
    model: str | None
    data: str
    train_argv: list[str]
    seeds: list[int]
    sweep_seeds: list[int]
    methods: list[MethodSpec]
    rank_sweep: dict[str, list[int]] = field(default_factory=dict)
    valid: str = "tiny-math:valid"
    tests: list[str] = field(default_factory=lambda: ["tiny-math:test", "tiny-math:unseen"])
    eval_task: str = "tiny-math"
    eval_samples: int = 200
    max_new_tokens: int = 80
    eval_batch_size: int = 100
    eval_argv: list[str] = field(default_factory=list)
    jobs: int = 1

    def cell_dir(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.id

    def eval_splits(self) -> dict[str, str]:
        """``valid`` plus each test source, named by its part after ':' (or the file stem)."""
        names = {"valid": self.valid}
        for src in self.tests:
            names[src.partition(":")[2] or Path(src).stem] = src
        return names

    def spec(self, method: str) -> MethodSpec:
        return next(m for m in self.methods if m.method == method)


def _flags(d: dict, where: str) -> list[str]:
    if not isinstance(d, dict):
        raise CLIError(f"study config: {where} must be a mapping of flag names to values")
    argv = []
    for k, v in d.items():
        flag = str(k).replace("_", "-")
        if where == "train" and flag in RESERVED_TRAIN_FLAGS:
            raise CLIError(f"study config: train.{k} is set by the grid; put it in methods/seeds/model/data")
        if v is True:
            argv.append(f"--{flag}")
        elif v is not False and v is not None:
            argv += [f"--{flag}", str(v)]
    return argv


def _ints(v, where: str) -> list[int]:
    vals = v if isinstance(v, list) else [v]
    if not vals or not all(isinstance(x, int) and not isinstance(x, bool) for x in vals):
        raise CLIError(f"study config: {where} must be an integer or a list of integers, got {v!r}")
    return vals


def _number(x) -> float | None:
    """A float from YAML (which reads ``2e-3`` as a string)."""
    if isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def load_config(path: str, out: str | None = None) -> StudyConfig:
    """Read and check the study's YAML; one clear line for each mistake."""
    import yaml

    from ..baselines import methods

    METHODS = methods()  # the registered variants, the PEFT baselines and full

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"{path}: no such study config file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise CLIError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise CLIError(f"{path}: expected a mapping (out, model, data, train, seeds, eval, methods, ...)")
    unknown = set(raw) - KNOWN_KEYS
    if unknown:
        raise CLIError(f"{path}: unknown key(s) {sorted(unknown)}; known: {sorted(KNOWN_KEYS)}")
    if not raw.get("methods"):
        raise CLIError(f"{path}: needs a 'methods' list, e.g. [{{method: bone, r: 32, lr: [1e-3, 2e-3]}}]")
    methods = []
    for m in raw["methods"]:
        if not isinstance(m, dict) or m.get("method") not in METHODS:
            raise CLIError(f"{path}: methods entry {m!r} needs method: one of {', '.join(METHODS)}")
        lrs = [_number(x) for x in (m.get("lr") if isinstance(m.get("lr"), list) else [m.get("lr")])]
        if not all(x is not None and x > 0 for x in lrs):
            raise CLIError(f"{path}: methods entry {m['method']}: lr must be a positive number or a list of them")
        r = _ints(m.get("r", 1 if m["method"] == "full" else None), f"{m['method']}.r")
        if any(s.method == m["method"] for s in methods):
            raise CLIError(f"{path}: method {m['method']} is listed twice; use rank_sweep for more ranks")
        methods.append(MethodSpec(m["method"], r[0], lrs))
    seeds = _ints(raw.get("seeds", [0]), "seeds")
    sweep_seeds = _ints(raw.get("sweep_seeds", seeds), "sweep_seeds")
    if not set(sweep_seeds) <= set(seeds):
        raise CLIError(f"{path}: sweep_seeds {sweep_seeds} must be among seeds {seeds}")
    ranks = {}
    for e in raw.get("rank_sweep") or []:
        if not isinstance(e, dict) or e.get("method") not in {m.method for m in methods}:
            raise CLIError(f"{path}: rank_sweep entry {e!r} must name a method of 'methods'")
        ranks[e["method"]] = _ints(e.get("r"), f"rank_sweep {e['method']}.r")
    ev = raw.get("eval") or {}
    if not isinstance(ev, dict):
        raise CLIError(f"{path}: eval must be a mapping")
    ev = dict(ev)
    tests = ev.pop("test", ["tiny-math:test", "tiny-math:unseen"])
    cfg = StudyConfig(
        source=p,
        out=Path(out or raw.get("out") or "runs/study"),
        model=raw.get("model"),
        data=str(raw.get("data") or "tiny-math"),
        train_argv=_flags(raw.get("train") or {}, "train"),
        seeds=seeds,
        sweep_seeds=sweep_seeds,
        methods=methods,
        rank_sweep=ranks,
        valid=str(ev.pop("valid", "tiny-math:valid")),
        tests=tests if isinstance(tests, list) else [tests],
        eval_task=str(ev.pop("task", "tiny-math")),
        eval_samples=int(ev.pop("samples", 200)),
        max_new_tokens=int(ev.pop("max-new-tokens", ev.pop("max_new_tokens", 80))),
        eval_batch_size=int(ev.pop("batch-size", ev.pop("batch_size", 100))),
        jobs=raw.get("jobs", 1),
    )
    cfg.eval_argv = _flags(ev, "eval")
    return cfg


def plan_sweep(cfg: StudyConfig) -> list[Cell]:
    return [Cell(m.method, m.r, lr, s) for m in cfg.methods for lr in m.lrs for s in cfg.sweep_seeds]


def read_cell(cfg: StudyConfig, cell: Cell) -> dict | None:
    path = cfg.cell_dir(cell) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def pick_lrs(cfg: StudyConfig) -> dict[str, float]:
    """Per method the lr with the best mean validation accuracy over the sweep seeds (ties: the
    lower mean final loss). Methods with unfinished sweep cells are left out."""
    picked = {}
    for m in cfg.methods:
        scores = []
        for lr in m.lrs:
            done = [read_cell(cfg, Cell(m.method, m.r, lr, s)) for s in cfg.sweep_seeds]
            if any(d is None for d in done):
                break
            scores.append(
                (
                    statistics.mean(d["accuracy"]["valid"] for d in done),
                    -statistics.mean(d["loss_final"] for d in done),
                    lr,
                )
            )
        else:
            picked[m.method] = max(scores)[2]
    return picked


def plan_seeds(cfg: StudyConfig, picked: dict[str, float]) -> list[Cell]:
    rest = [s for s in cfg.seeds if s not in cfg.sweep_seeds]
    return [Cell(m.method, m.r, picked[m.method], s) for m in cfg.methods if m.method in picked for s in rest]


def plan_ranks(cfg: StudyConfig, picked: dict[str, float]) -> list[Cell]:
    return [
        Cell(meth, r, picked[meth], s)
        for meth, rs in cfg.rank_sweep.items()
        if meth in picked
        for r in rs
        if r != cfg.spec(meth).r
        for s in cfg.seeds
    ]


__all__ = [
    "Cell",
    "MethodSpec",
    "StudyConfig",
    "load_config",
    "pick_lrs",
    "plan_ranks",
    "plan_seeds",
    "plan_sweep",
    "read_cell",
]
