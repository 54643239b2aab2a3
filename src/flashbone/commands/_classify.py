"""``flashbone train --task classification`` and ``flashbone eval --task classification``.

    train: tokenizer, rows (train split; dev split of glue/<task> or --eval-data), seed,
           AutoModelForSequenceClassification (num_labels from the task or the labels), method
           with the head in modules_to_save (task_type SEQ_CLS), dev metrics before, training
           (classification.train), OUT/adapter (PEFT format), dev metrics after, summary.json
    eval:  the head size read from the adapter, model + adapter, dev metrics, per-row JSONL

Defaults follow the LoRA repository's RoBERTa GLUE scripts where the user gives no flag
(lr 5e-4, batch 16, warmup 6%, weight decay 0.1, max length 512, query/value adapted;
Bone r=16 has LoRA r=8's 294,912 trainable parameters on RoBERTa-base); the per-task epochs
and learning rates are in recipes/.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import yaml

from ..errors import CLIError
from ._train_state import TrainOptions

CLS_RECIPE = {
    "lr": 5e-4,
    "batch_size": 16,
    "grad_accum": 1,
    "epochs": 1.0,
    "warmup_ratio": 0.06,
    "weight_decay": 0.1,
    "max_grad_norm": 1.0,
    "max_length": 512,
    "r_bone": 16,
    "r_lora": 8,
    "seed": 0,
    "eval_batch_size": 64,
}
UNSUPPORTED = (
    "resume",
    "save_every",
    "stop_after",
    "template",
    "query_field",
    "response_field",
    "init_adapter",
    "report_to",
    "val_split",
    "val_data",
    "val_every",
)


def _resolve(args: argparse.Namespace) -> TrainOptions:
    from ..baselines import bone_methods, methods
    from ._train_options import bone_options, lr_for, warmup_steps

    v = TrainOptions.from_namespace(args)
    if not v.model:
        raise CLIError("--task classification needs --model (e.g. FacebookAI/roberta-base or a local folder)")
    if not v.data:
        raise CLIError("--task classification needs --data (glue/<task>, a file or a hub dataset)")
    for k in UNSUPPORTED:
        if getattr(v, k):
            raise CLIError(f"--{k.replace('_', '-')} is not supported with --task classification")
    if (v.nproc or 1) > 1:
        raise CLIError("--task classification runs in one process; leave --nproc out")
    v.method = v.method or "bone"
    if v.method not in methods():
        raise CLIError(f"--method {v.method!r} is unknown; choose one of {', '.join(methods())}")
    if v.r is None:
        v.r = CLS_RECIPE["r_bone"] if v.method in bone_methods() else CLS_RECIPE["r_lora"]
    warmup_steps(v, 1)  # one of --warmup-steps / --warmup-ratio, in range
    if v.warmup_steps is not None:
        v.warmup_ratio = 0.0  # --warmup-steps given: it replaces the recipe's ratio
    for k in (
        "lr",
        "batch_size",
        "grad_accum",
        "epochs",
        "warmup_ratio",
        "weight_decay",
        "max_grad_norm",
        "max_length",
        "seed",
        "eval_batch_size",
    ):
        if getattr(v, k) is None:  # the flag was not given
            setattr(v, k, CLS_RECIPE[k])
    for k in ("batch_size", "grad_accum", "max_length", "eval_batch_size"):
        if isinstance(getattr(v, k), bool) or not isinstance(getattr(v, k), int) or getattr(v, k) < 1:
            raise CLIError(f"--{k.replace('_', '-')} must be a positive integer, got {getattr(v, k)!r}")
    if not v.lr > 0 or not v.epochs > 0:
        raise CLIError(f"--lr and --epochs must be positive, got {v.lr} and {v.epochs}")
    lr_for(v)
    bone_options(v)  # --dropout, --modules-to-save...: checked before anything is written
    v.precision = v.precision or "auto"
    v.out = v.out or f"runs/cls-{v.method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    return v


def _load_rows(v: TrainOptions, source, split: str, tok, *, what: str, max_samples=None, fields=None):
    from .. import classification as cls
    from ..data import load_rows

    ds = load_rows(source.data, split=split, subset=source.subset, max_samples=max_samples, seed=v.seed)
    fields = fields or cls.detect_fields(
        ds.column_names, v.text_field, v.text_pair_field, v.label_field, source.glue, source=f"{what} {source.data}"
    )
    missing = [f for f in (fields.text, fields.pair, fields.label) if f and f not in ds.column_names]
    if missing:
        raise CLIError(f"{what} {source.data}: has no field {missing[0]!r}; its fields are {ds.column_names}")
    return cls.tokenize(ds, tok, fields, v.max_length), fields


def train(args: argparse.Namespace) -> int:
    """``flashbone train --task classification``."""
    from .. import outputs

    t_wall = time.time()
    v = _resolve(args)
    # built in a temporary sibling, renamed into place when complete (flashbone.outputs)
    folder = outputs.plan_folder(
        v.out, overwrite=v.overwrite, inputs={"--data": v.data, "--model": v.model, "--eval-data": v.eval_data}
    )
    out = outputs.begin(folder, "train")
    try:
        after = _train_into(args, v, out, folder.final, t_wall)
    except BaseException:
        outputs.abort(folder)
        raise
    outputs.finish(folder)
    saved = folder.final / ("model" if v.method == "full" else "adapter")
    print(f"saved {saved}  (metrics.jsonl, loss.png, config.yaml, summary.json in {folder.final})")
    if after:
        print(f"dev set ({after.n} rows) after training:\n{after.lines()}")
    return 0


def _train_into(args: argparse.Namespace, v: TrainOptions, out: Path, final: Path, t_wall: float):
    """The run, written into ``out`` (the work folder of ``final``); the dev metrics after training."""
    import torch

    from .. import baselines, loading
    from .. import classification as cls
    from ..generation import write_jsonl
    from . import _train_steps as st
    from ._train_options import bone_options, lr_for
    from .train import NOT_SAVED

    device = loading.pick_device(v.device)
    bf16 = loading.use_bf16(v.precision, device)
    source = cls.resolve_source(v.data, v.data_subset, v.data_split)
    trust = bool(v.trust_remote_code)
    tok = loading.load_tokenizer(v.model, trust_remote_code=trust)
    rows, fields = _load_rows(v, source, source.train_split, tok, what="--data", max_samples=v.max_samples)
    dev_rows = None  # --eval-data (a glue/<task> dev split, a whole file, a hub dataset's validation), else glue's
    if v.eval_data or source.glue:
        dev_source = cls.resolve_source(v.eval_data) if v.eval_data else source
        local = not dev_source.glue and Path(dev_source.data).suffix.lower() in (".jsonl", ".json", ".parquet", ".csv")
        dev_rows, _ = _load_rows(
            v,
            dev_source,
            "train" if local else dev_source.dev_split,
            tok,
            what="--eval-data",
            max_samples=v.eval_samples,
        )
    num_labels = source.glue.num_labels if source.glue else max(r["label"] for r in rows) + 1
    if num_labels < 2:
        raise CLIError(f"--data {v.data}: every row has label 0; a classifier needs at least 2 labels")
    torch.manual_seed(v.seed)  # the head's initialisation, then the adapter's
    loading_dtype = torch.bfloat16 if bf16 and v.method != "full" else torch.float32
    model = cls.load_classifier(v.model, num_labels, dtype=loading_dtype, device=device, trust_remote_code=trust)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    heads = cls.head_names(model)
    targets = baselines.parse_targets(v.targets, model) if v.targets else cls.default_targets(model)
    settings = cls.ClassifierSettings(
        lr=v.lr,
        batch_size=v.batch_size,
        grad_accum=v.grad_accum,
        epochs=v.epochs,
        max_steps=v.max_steps or None,
        warmup_ratio=v.warmup_ratio,
        warmup_steps=v.warmup_steps,
        weight_decay=v.weight_decay,
        max_grad_norm=v.max_grad_norm,
        seed=v.seed,
        bf16=bf16,
        progress=v.progress,
    )
    steps = cls.total_steps(len(rows), settings)
    print(
        "\n".join(
            [
                f"model      {v.model} (sequence classification, {num_labels} labels, head {','.join(heads)})",
                f"data       {v.data}: {len(rows)} rows, fields {fields.text}"
                + (f" + {fields.pair}" if fields.pair else "")
                + f" -> {fields.label}"
                + (f"; dev {len(dev_rows)} rows" if dev_rows else "; no dev set"),
                f"recipe     AdamW lr {v.lr:g}, linear warmup {cls.warmup_of(settings, steps)} steps then linear to 0, weight decay "
                f"{v.weight_decay:g}, clip {v.max_grad_norm:g}, batch {v.batch_size} x accum {v.grad_accum}, "
                f"{steps} steps, seed {v.seed}",
                f"compute    {device}, {'bf16' if bf16 else 'fp32'}",
                f"out        {final}",
            ]
        ),
        flush=True,
    )
    (out / "config.yaml").write_text(
        yaml.safe_dump(
            {
                k.replace("_", "-"): getattr(args, k)
                for k in vars(args)
                if k not in NOT_SAVED and getattr(args, k) is not None
            },
            sort_keys=False,
        )
    )
    before = after = None
    if dev_rows:
        before, recs = cls.evaluate(model, dev_rows, tok.pad_token_id, num_labels, v.eval_batch_size, bf16)
        write_jsonl(out / "eval_before.jsonl", recs)
        print(
            f"before     accuracy {before.accuracy:.4f}, f1 {before.f1:.4f}, mcc {before.mcc:.4f} "
            f"on {before.n} dev rows",
            flush=True,
        )
    opts = bone_options(v)
    torch.manual_seed(v.seed)
    adapted = baselines.build(
        model,
        v.method,
        v.r,
        targets,
        lora_alpha=v.lora_alpha,
        mini_r=v.mini_r,
        base_name=v.model,
        work_dir=out,
        task_type="SEQ_CLS",
        modules_to_save=heads + (opts.modules_to_save or []),
        bone_fields=opts.config_fields(),
    )
    print(
        f"method     {v.method}"
        + (
            ""
            if v.method == "full"
            else f" r={v.r} on {targets if isinstance(targets, str) else ','.join(targets)} + head {','.join(heads)}"
        )
        + f": {adapted.n_trainable:,} trainable of {adapted.n_total:,} parameters",
        flush=True,
    )
    settings.lr_for = lr_for(v, list(adapted.named_trainable()))
    result = cls.train(adapted.model, rows, tok.pad_token_id, settings, out)
    saved_to = st.save_result(adapted, tok, out)
    if dev_rows:
        after, recs = cls.evaluate(adapted.model, dev_rows, tok.pad_token_id, num_labels, v.eval_batch_size, bf16)
        write_jsonl(out / "eval_after.jsonl", recs)
    summary = {
        "task": "classification",
        "method": v.method,
        "r": v.r,
        "targets": targets,
        "heads": heads,
        "num_labels": num_labels,
        "trainable_params": adapted.n_trainable,
        "total_params": adapted.n_total,
        "model": v.model,
        "data": v.data,
        "train_rows": len(rows),
        **result,
        "metrics_before": before.as_dict() if before else None,
        "metrics_after": after.as_dict() if after else None,
        "saved": str(final / saved_to.name),
        "wall_seconds": round(time.time() - t_wall, 1),
        "precision": "bf16" if bf16 else "fp32",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    st.loss_plot(out)
    return after


def evaluate(args: argparse.Namespace) -> int:
    """``flashbone eval --task classification``."""
    import torch

    from .. import baselines, loading
    from .. import classification as cls
    from ..generation import write_jsonl

    t0 = time.time()
    if not args.model or not args.data:
        raise CLIError("--task classification needs --model and --data (glue/<task>, a file or a hub dataset)")
    v = TrainOptions(
        seed=0,
        max_length=getattr(args, "max_length", None) or CLS_RECIPE["max_length"],
        text_field=args.text_field,
        text_pair_field=args.text_pair_field,
        label_field=args.label_field,
    )
    device = loading.pick_device(args.device)
    bf16 = loading.use_bf16(args.precision, device)
    source = cls.resolve_source(args.data, args.data_subset)
    local = not source.glue and Path(args.data).suffix.lower() in (".jsonl", ".json", ".parquet", ".csv")
    split = "train" if local else args.data_split or source.dev_split  # a local file is one split
    tok = loading.load_tokenizer(args.model)
    rows, _ = _load_rows(v, source, split, tok, what="--data", max_samples=args.max_samples)
    kind = baselines.adapter_kind(args.adapter) if args.adapter else None
    num_labels = cls.num_labels_of_adapter(args.adapter) if kind in ("bone", "peft") else None
    if num_labels is None:
        num_labels = source.glue.num_labels if source.glue else None
    model_name = args.adapter if kind == "model" else args.model
    if num_labels is None:  # a whole fine-tuned checkpoint: its config knows
        from transformers import AutoConfig

        num_labels = AutoConfig.from_pretrained(loading.resolve(model_name)).num_labels
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = cls.load_classifier(model_name, num_labels, dtype=dtype, device=device)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if kind in ("bone", "peft"):
        model = baselines.attach_adapter(model, args.adapter)
        if args.merge:
            model = baselines.merge_into_base(model)
    if max(r["label"] for r in rows) >= num_labels:
        raise CLIError(
            f"--data {args.data}: labels go up to {max(r['label'] for r in rows)}, but the model's head "
            f"has {num_labels} outputs"
        )
    m, recs = cls.evaluate(
        model,
        rows,
        tok.pad_token_id,
        num_labels,
        args.batch_size or CLS_RECIPE["eval_batch_size"],
        bf16,
        progress=args.progress,
    )
    out = Path(args.out or f"runs/eval-classification-{datetime.now().strftime('%Y%m%d-%H%M%S')}.jsonl")
    write_jsonl(out, recs)
    what = f"{args.model}" + (f" + {args.adapter}" if args.adapter else "")
    print(m.lines())
    print(
        f"classification on {args.data} ({m.n} rows, split {split}) for {what}; {time.time() - t0:.0f}s; "
        f"per-example results in {out}"
    )
    return 0


__all__ = ["CLS_RECIPE", "evaluate", "train"]
