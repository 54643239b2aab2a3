"""Sequence classification (the papers' NLU experiment: RoBERTa-base on GLUE).

    --data glue/sst2 | file | hub dataset  -->  rows {text[, text_pair], label}
    tokenizer(text[, text_pair], truncation to --max-length)  -->  input_ids, label
    AutoModelForSequenceClassification (head: classifier/score)  + adapter, head in modules_to_save
    loss = mean cross-entropy of the rows of a step; AdamW, linear warmup then linear decay to 0
           (the LoRA repository's run_glue.py schedule), gradients clipped
    dev metrics (scikit-learn): accuracy, F1 (binary for 2 labels, macro otherwise), Matthews corr.

GLUE by name: ``glue/<task>`` reads the hub dataset ``nyu-mll/glue`` (configuration ``<task>``,
train split ``train``, dev split ``validation``; ``validation_matched`` for MNLI) with the task's
fields; local files with the same fields are recognised without flags.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import DataError, epoch_order

GLUE_HUB = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its fields, number of labels, dev split and headline metric."""

    name: str
    text: str
    pair: str | None
    num_labels: int
    metric: str  # the number the papers report: accuracy, mcc or f1
    dev_split: str = "validation"


GLUE_TASKS = {
    t.name: t
    for t in (
        GlueTask("cola", "sentence", None, 2, "mcc"),
        GlueTask("sst2", "sentence", None, 2, "accuracy"),
        GlueTask("mrpc", "sentence1", "sentence2", 2, "accuracy"),  # F1 printed too
        GlueTask("qqp", "question1", "question2", 2, "accuracy"),
        GlueTask("mnli", "premise", "hypothesis", 3, "accuracy", "validation_matched"),
        GlueTask("qnli", "question", "sentence", 2, "accuracy"),
        GlueTask("rte", "sentence1", "sentence2", 2, "accuracy"),
        GlueTask("wnli", "sentence1", "sentence2", 2, "accuracy"),
    )
}
# (text, pair) field names recognised without flags: GLUE's layouts, then a plain "text"
KNOWN_FIELDS = [
    ("premise", "hypothesis"),
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("question", "sentence"),
    ("sentence", None),
    ("text", None),
]
HEAD_NAMES = ("classifier", "score")  # the heads of AutoModelForSequenceClassification models


@dataclass(frozen=True)
class Source:
    """Where the rows come from: a hub dataset / file, its configuration and splits."""

    data: str
    subset: str | None
    train_split: str
    dev_split: str
    glue: GlueTask | None = None


def resolve_source(data: str, subset: str | None = None, split: str | None = None) -> Source:
    """``glue/<task>`` -> nyu-mll/glue with that configuration; anything else as given."""
    if data.lower().startswith("glue/"):
        name = data.split("/", 1)[1].lower().replace("-", "")
        if name not in GLUE_TASKS:
            raise DataError(
                f"--data {data}: unknown GLUE task; choose one of {', '.join('glue/' + t for t in GLUE_TASKS)}"
            )
        task = GLUE_TASKS[name]
        return Source(GLUE_HUB, name, split or "train", task.dev_split, task)
    return Source(data, subset, split or "train", "validation")


@dataclass(frozen=True)
class Fields:
    text: str
    pair: str | None
    label: str


def detect_fields(
    columns: Sequence[str],
    text: str | None,
    pair: str | None,
    label: str | None,
    glue: GlueTask | None = None,
    source: str = "data",
) -> Fields:
    """The text, text-pair and label columns: the flags, else the GLUE task's, else a known layout."""
    cols = list(columns)
    if text is None:
        if glue is not None:
            text, pair = glue.text, pair or glue.pair
        else:
            for t, p in KNOWN_FIELDS:
                if t in cols and (p is None or p in cols):
                    text, pair = t, pair or p
                    break
    label = label or "label"
    if text is None:
        raise DataError(
            f"{source}: cannot tell which field holds the text; it has fields {cols}; pass "
            f"--text-field (and --text-pair-field for pairs)"
        )
    for flag, f in (("--text-field", text), ("--text-pair-field", pair), ("--label-field", label)):
        if f is not None and f not in cols:
            raise DataError(f"{source}: has no field {f!r} ({flag}); its fields are {cols}")
    return Fields(text, pair, label)


def labels_of(ds, field: str, source: str) -> list[int]:
    """The integer labels of ``ds``; GLUE test rows (label -1) are an error here."""
    values = ds[field]
    bad = [i for i, v in enumerate(values) if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad:
        i = bad[0]
        raise DataError(
            f"{source}: row {i} has label {values[i]!r}; labels must be integers 0..N-1 "
            f"(GLUE's test splits have no labels: use the dev split)"
        )
    return list(values)


def tokenize(ds, tokenizer, fields: Fields, max_length: int) -> list[dict]:
    """Rows of ``input_ids`` (the tokenizer's own special tokens and pair layout) and ``label``."""
    if max_length < 2:
        raise DataError(f"--max-length must be at least 2, got {max_length}")
    texts = [str(t) if t is not None else "" for t in ds[fields.text]]
    pairs = [str(t) if t is not None else "" for t in ds[fields.pair]] if fields.pair else None
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)["input_ids"]
    labels = labels_of(ds, fields.label, "data")
    return [{"input_ids": ids, "label": y} for ids, y in zip(enc, labels)]


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; ``labels`` holds one class index per row."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"], dtype=torch.long)
        mask[i, : len(r["input_ids"])] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.tensor([r["label"] for r in rows], dtype=torch.long),
    }


# -- model -------------------------------------------------------------------------------------
def load_classifier(
    name: str, num_labels: int, dtype: torch.dtype = torch.float32, device="cpu", *, trust_remote_code: bool = False
):
    """``AutoModelForSequenceClassification`` with a fresh head of ``num_labels`` outputs."""
    from transformers import AutoModelForSequenceClassification

    from .loading import ModelLoadError, quiet_transformers, resolve

    path = resolve(name)
    try:
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, dtype=dtype, trust_remote_code=trust_remote_code
            )
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"--model {name}: could not load it as a sequence classifier ({type(e).__name__}: {first[:200]})"
        ) from None
    return model.to(device)


def head_names(model: torch.nn.Module) -> list[str]:
    """The classification head's module names (``classifier`` or ``score``), for modules_to_save."""
    names = {n for n, _ in model.named_modules()}
    found = [h for h in HEAD_NAMES if h in names]
    if not found:
        raise DataError(f"{type(model).__name__} has no classification head named {' or '.join(HEAD_NAMES)}")
    return found


def default_targets(model: torch.nn.Module) -> list[str] | str:
    """``query``/``value`` where the model has them (the LoRA repository's RoBERTa choice)."""
    leaves = {n.rpartition(".")[2] for n, _ in model.named_modules()}
    return ["query", "value"] if {"query", "value"} <= leaves else "all-linear"


def num_labels_of_adapter(folder: str | Path) -> int | None:
    """The output size of the head saved in an adapter folder (``...classifier.out_proj.weight``,
    ``...score.weight``, ``...classifier.weight``), or None when it holds no head."""
    from safetensors import safe_open

    f = Path(folder) / "adapter_model.safetensors"
    if not f.is_file():
        return None
    with safe_open(str(f), "pt") as st:
        for key in st.keys():  # noqa: SIM118 (safe_open is no dict)
            if key.endswith(("classifier.out_proj.weight", "score.weight", "classifier.weight")):
                return int(st.get_slice(key).get_shape()[0])
    return None


# -- training ----------------------------------------------------------------------------------
@dataclass
class ClassifierSettings:
    lr: float
    batch_size: int
    grad_accum: int
    epochs: float
    max_steps: int | None
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    seed: int
    bf16: bool = False
    progress: bool = True
    warmup_steps: int | None = None  # when given, instead of warmup_ratio
    lr_for: dict[str, float] = field(default_factory=dict)  # name part -> lr (training.param_groups)


def warmup_of(s: ClassifierSettings, total: int) -> int:
    """Warmup steps: ``warmup_steps``, else ceil(warmup_ratio x total) (transformers' rounding)."""
    return s.warmup_steps if s.warmup_steps is not None else math.ceil(s.warmup_ratio * total)


def total_steps(n_rows: int, s: ClassifierSettings) -> int:
    if s.max_steps:
        return s.max_steps
    per_epoch = max(1, math.ceil(math.ceil(n_rows / s.batch_size) / s.grad_accum))
    return max(1, math.ceil(per_epoch * s.epochs))


def train(model: torch.nn.Module, rows: list[dict], pad_id: int, s: ClassifierSettings, out_dir: Path) -> dict:
    """Train ``model``'s trainable parameters; writes ``out_dir/metrics.jsonl`` (step, loss, lr...)."""
    from transformers import get_linear_schedule_with_warmup

    from .training import param_groups

    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = list(named.values())
    if not params:
        raise DataError("the model has no trainable parameters")
    device = next(model.parameters()).device
    total = total_steps(len(rows), s)
    per_epoch = math.ceil(len(rows) / s.batch_size)
    opt = torch.optim.AdamW(param_groups(named, s.lr, s.lr_for), lr=s.lr, weight_decay=s.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, warmup_of(s, total), total)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if s.bf16 else contextlib.nullcontext()
    out_dir.mkdir(parents=True, exist_ok=True)
    t0, tokens, loss_v, order, order_epoch = time.time(), 0, None, [], -1
    model.train()
    with (
        open(out_dir / "metrics.jsonl", "w") as metrics,
        tqdm(total=total, desc="train", disable=not s.progress, dynamic_ncols=True) as bar,
    ):
        for step in range(total):
            batches = []
            for k in range(s.grad_accum):
                epoch, i = divmod(step * s.grad_accum + k, per_epoch)
                if epoch != order_epoch:
                    order, order_epoch = epoch_order(len(rows), s.seed, epoch), epoch
                idx = order[i * s.batch_size : (i + 1) * s.batch_size]
                batches.append({k2: v.to(device) for k2, v in collate([rows[j] for j in idx], pad_id).items()})
            n_rows = sum(len(b["labels"]) for b in batches)
            loss_sum = 0.0
            for b in batches:
                with amp:
                    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                loss = torch.nn.functional.cross_entropy(logits.float(), b["labels"], reduction="sum")
                (loss / n_rows).backward()  # the step's mean over its rows
                loss_sum += float(loss.detach())
                tokens += int(b["attention_mask"].sum())
            grad_norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            lr = sched.get_last_lr()[0]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_v = loss_sum / n_rows
            if not math.isfinite(loss_v):
                raise DataError(f"the loss became {loss_v} at step {step + 1}; lower --lr")
            rec = {
                "step": step + 1,
                "loss": round(loss_v, 6),
                "lr": lr,
                "grad_norm": round(float(grad_norm), 6),
                "tokens": tokens,
                "elapsed_s": round(time.time() - t0, 3),
                "epoch": round((step + 1) * s.grad_accum / per_epoch, 4),
            }
            metrics.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{loss_v:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
    model.eval()
    return {"steps": total, "final_loss": loss_v, "tokens": tokens, "train_seconds": round(time.time() - t0, 2)}


# -- evaluation --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metrics:
    """Dev-set metrics (scikit-learn): accuracy, F1 (binary for 2 labels, else macro), MCC."""

    accuracy: float
    f1: float
    mcc: float
    n: int

    def lines(self) -> str:
        return f"accuracy: {self.accuracy:.4f}\nf1: {self.f1:.4f}\nmcc: {self.mcc:.4f}"

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "f1": self.f1, "mcc": self.mcc, "n": self.n}


def metrics(golds: Sequence[int], preds: Sequence[int], num_labels: int) -> Metrics:
    try:
        from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    except ImportError:
        raise DataError('classification metrics need scikit-learn: pip install "flashbone[nlu]"') from None
    average = "binary" if num_labels == 2 else "macro"
    return Metrics(
        float(accuracy_score(golds, preds)),
        float(f1_score(golds, preds, average=average, zero_division=0)),
        float(matthews_corrcoef(golds, preds)),
        len(golds),
    )


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    rows: list[dict],
    pad_id: int,
    batch_size: int = 64,
    bf16: bool = False,
    progress: bool = False,
) -> list[int]:
    """The argmax class of every row (in order)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    preds: list[int] = []
    try:
        for i in tqdm(range(0, len(rows), batch_size), desc="eval", disable=not progress, leave=False):
            b = collate(rows[i : i + batch_size], pad_id)
            with amp:
                logits = model(
                    input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)
                ).logits
            preds += logits.argmax(-1).tolist()
    finally:
        model.train(was_training)
    return preds


def evaluate(
    model,
    rows: list[dict],
    pad_id: int,
    num_labels: int,
    batch_size: int = 64,
    bf16: bool = False,
    progress: bool = False,
) -> tuple[Metrics, list[dict]]:
    """Metrics on ``rows`` and one record per row (label, prediction, correct)."""
    preds = predict(model, rows, pad_id, batch_size, bf16, progress)
    golds = [r["label"] for r in rows]
    recs = [{"label": g, "prediction": p, "correct": g == p} for g, p in zip(golds, preds)]
    return metrics(golds, preds, num_labels), recs


__all__ = [
    "GLUE_HUB",
    "GLUE_TASKS",
    "ClassifierSettings",
    "warmup_of",
    "Fields",
    "GlueTask",
    "Metrics",
    "Source",
    "collate",
    "default_targets",
    "detect_fields",
    "evaluate",
    "head_names",
    "load_classifier",
    "metrics",
    "num_labels_of_adapter",
    "predict",
    "resolve_source",
    "tokenize",
    "total_steps",
    "train",
]
