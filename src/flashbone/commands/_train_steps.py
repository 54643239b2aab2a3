"""The stages of ``flashbone train`` after its flags are resolved (see train.py).

    load_base: device, tokenizer, data (tokenized), held-out rows, base model
    attach_method: the method on the base -> Adapted
    eval_before / eval_after: held-out accuracy (skipped with --eval-task none)
    save_result: OUT/adapter (or OUT/model for --method full), written via a temp folder
    summarize / report / loss_plot: OUT/summary.json, the closing lines, OUT/loss.png

Several processes (ctx.dist): every process loads, adapts and trains; evaluation rows are
split between them and the records gathered; sharded (FSDP) tensors are gathered to full ones
before rank 0, alone, writes anything.
"""

from __future__ import annotations

import atexit
import json
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from ._train_state import RunContext, TrainOptions


def _dtype(v: TrainOptions, bf16: bool) -> torch.dtype:
    # adapters train in fp32 on a bf16 base; full fine-tuning keeps fp32 master weights (autocast)
    return torch.bfloat16 if bf16 and v.method != "full" else torch.float32


def load_base(v: TrainOptions, device: torch.device | None = None, dist=None) -> RunContext:
    """Device, tokenizer, tokenized data, evaluation rows and the base model (no adapters yet);
    ``dist``: this process among several (:class:`flashbone.training.Dist`, default: alone)."""
    from .. import baselines, data, loading, validation
    from ..training import Dist

    device = device or loading.pick_device(v.device)
    bf16 = loading.use_bf16(v.precision, device)
    trust = bool(v.trust_remote_code)
    tok = loading.load_tokenizer(v.model, trust_remote_code=trust)
    template = data.get_template(v.template)
    ds = data.load_rows(v.data, split=v.data_split, subset=v.data_subset, max_samples=v.max_samples, seed=v.seed)
    rows, n_cut = _tokenize(ds, v, tok, template, "--data", v.data, resolve_fields=True)
    val_rows = None  # held-out rows for the validation loss (validation.py)
    if v.val_split is not None:
        rows, val_rows = validation.split_rows(rows, v.val_split, v.seed)
    elif v.val_data:
        val_ds = data.load_rows(v.val_data, split="validation", subset=v.data_subset, seed=v.seed)
        val_rows, _ = _tokenize(val_ds, v, tok, template, "--val-data", v.val_data)
    eval_ds = None
    if v.eval_task != "none":  # read the held-out rows now: bad eval data fails before training
        eval_ds = data.load_rows(v.eval_data, split="test", max_samples=v.eval_samples)
    model = loading.load_model(
        v.model, dtype=_dtype(v, bf16), device=device, quantize=v.quantize, trust_remote_code=trust
    )
    v.targets_resolved = baselines.parse_targets(v.targets, model)
    return RunContext(
        device=device,
        bf16=bf16,
        tokenizer=tok,
        template=template,
        rows=rows,
        n_cut=n_cut,
        model=model,
        eval_rows=eval_ds,
        val_rows=val_rows,
        dist=dist or Dist(),
    )


def _tokenize(ds, v: TrainOptions, tok, template, flag: str, source: str, resolve_fields: bool = False):
    """Tokenized rows and how many were cut: conversations through the chat template (loss on the
    assistant's turns), else query/response through ``template``. ``resolve_fields``: record the
    fields used in ``v`` (printed and saved)."""
    from .. import chat, data

    conv = chat.conversation_field(ds.column_names, v.messages_field) if not v.query_field else None
    if conv and v.cut_after_code:
        raise data.DataError(
            f"--cut-after-code applies to query/response rows; {flag} {source} holds conversations "
            f"({conv!r}): leave it out"
        )
    if conv:  # multi-turn rows: the chat template, loss on the assistant's turns
        rows, n_cut, own = chat.tokenize_conversations(ds, tok, conv, v.max_length)
        if resolve_fields:
            v.query_field_resolved = conv
            v.response_field_resolved = "assistant turns, " + (
                "the tokenizer's chat template" if own else "the default chat template (docs/cli.md)"
            )
        return rows, n_cut
    qf, rf = data.detect_fields(ds.column_names, v.query_field, v.response_field, source=f"{flag} {source}")
    if resolve_fields:
        v.query_field_resolved, v.response_field_resolved = qf, rf
    if v.cut_after_code:  # the explanation after the last code block goes (CodeFeedback, as the papers did)
        ds = ds.map(lambda row: {rf: data.cut_after_code(row[rf]) if isinstance(row[rf], str) else row[rf]})
    return data.tokenize_rows(ds, tok, template, qf, rf, v.max_length, source=f"{flag} {source}")


def attach_method(v: TrainOptions, ctx: RunContext) -> None:
    """Seed, then wrap the base with the method (PiSSA/OLoRA rewrite base weights: evaluate first)."""
    from .. import baselines, fused
    from ._train_options import bone_options

    model = ctx.model
    v.liger_modules = fused.apply(model, v.liger or "auto", ctx.device)
    if v.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    torch.manual_seed(v.seed)  # the same in every process: the same initial adapter
    work_dir = Path(v.work or v.out)
    if not ctx.dist.is_main:  # PiSSA/OLoRA keep their initial adapter there; rank 0's is saved
        work_dir = Path(tempfile.mkdtemp(prefix="flashbone-rank"))
        atexit.register(shutil.rmtree, work_dir, True)
    opts = bone_options(v)
    ctx.adapted = baselines.build(
        model,
        v.method,
        v.r,
        v.targets_resolved,
        lora_alpha=v.lora_alpha,
        mini_r=v.mini_r,
        base_name=v.model,
        work_dir=work_dir,
        modules_to_save=opts.modules_to_save,
        bone_fields=opts.config_fields(),
        init_adapter=opts.init_adapter,
    )


def _write_eval(path: Path, result: tuple[float, list[dict]]) -> None:
    from ..generation import write_jsonl

    write_jsonl(path, result[1])


def eval_before(v: TrainOptions, ctx: RunContext, out: Path, eval_rows) -> float | None:
    """The base's accuracy; on --resume it is read back from OUT/eval_before.jsonl."""
    if v.eval_task == "none":
        return None
    path = out / "eval_before.jsonl"
    if v.resume and path.is_file():
        recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        acc = sum(r["correct"] for r in recs) / max(len(recs), 1)
    else:
        acc, recs = _eval(eval_rows, ctx.model, v, ctx, "eval before")
        if ctx.dist.is_main:
            _write_eval(path, (acc, recs))
    print(f"before     {v.eval_task} accuracy {100 * acc:.1f}% on {len(recs)} held-out rows", flush=True)
    return acc


def _eval(eval_rows, model, v: TrainOptions, ctx: RunContext, desc: str):
    """Accuracy and records; with N processes each scores a contiguous 1/N of the rows."""
    d, rows = ctx.dist, ctx.eval_rows
    if d.world > 1:
        rows = rows.shard(num_shards=d.world, index=d.rank, contiguous=True)
    recs = []
    if len(rows):
        _, recs = eval_rows(
            model,
            ctx.tokenizer,
            rows,
            v.eval_task,
            ctx.template,
            max_new_tokens=v.max_new_tokens,
            batch_size=v.eval_batch_size,
            bf16=ctx.bf16,
            progress=v.progress and d.is_main,
            desc=desc,
        )
    if d.world > 1:
        from ..distributed import all_gather_objects

        recs = [r for part in all_gather_objects(recs, d.world) for r in part]
    return sum(r["correct"] for r in recs) / max(len(recs), 1), recs


def eval_after(v: TrainOptions, ctx: RunContext, out: Path, eval_rows, saved_to: Path) -> float | None:
    """The trained model's accuracy, its adapter merged (as ``flashbone eval`` does by default);
    a sharded (FSDP) one is read back from what was saved, since generation in lockstep through
    sharded layers would stall on uneven lengths."""
    from .. import baselines, loading

    if v.eval_task == "none":
        return None
    model = ctx.adapted.model
    if any(_sharded(p) for p in model.parameters()):
        model = loading.load_model(
            saved_to if v.method == "full" else v.model,
            dtype=_dtype(v, ctx.bf16),
            device=ctx.device,
            quantize=v.quantize,
            trust_remote_code=bool(v.trust_remote_code),
        )
        if v.method != "full":
            model = baselines.attach_adapter(model, saved_to)
    elif v.gradient_checkpointing:
        ctx.model.config.use_cache = True
    if v.method != "full" and not v.quantize:
        # merged, as `flashbone eval` scores an adapter by default: the same weights to the bit,
        # so the two report the same accuracy in bf16 too (the adapter is saved already)
        model = baselines.merge_into_base(model)
    res = _eval(eval_rows, model, v, ctx, "eval after")
    if ctx.dist.is_main:
        _write_eval(out / "eval_after.jsonl", res)
    return res[0]


def _sharded(p) -> bool:
    from ..distributed import is_sharded

    return is_sharded(p)


def save_result(adapted, tokenizer, out: Path, dist=None) -> Path:
    """Write the adapter (or the whole model) through a temp folder, then rename into place.
    Rank 0 writes; sharded parameters are first gathered (every process takes part)."""
    from ..distributed import full_parameters, gather_full

    name = "model" if adapted.method == "full" else "adapter"
    final, tmp = out / name, out / f".{name}.tmp"
    main = dist is None or dist.is_main
    params = dict(adapted.model.named_parameters())
    sharded = {n: p for n, p in params.items() if _sharded(p) and p.requires_grad}  # what save reads
    full = gather_full(sharded, keep=main)
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        with full_parameters(adapted.model, full):
            adapted.save(tmp)
        if adapted.method == "full":
            tokenizer.save_pretrained(str(tmp))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    if dist is not None and dist.world > 1:  # eval_after may read the folder back
        import torch.distributed

        torch.distributed.barrier()
    return final


def summarize(
    v: TrainOptions,
    adapted,
    result: dict,
    before: float | None,
    after: float | None,
    saved_to: Path,
    device: torch.device,
    bf16: bool,
    wall: float,
    n_rows: int,
) -> dict:
    import transformers

    from ..version import __version__

    try:
        import peft

        peft_v = peft.__version__
    except ImportError:  # optional
        peft_v = None
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return {
        "method": v.method,
        "r": v.r,
        "targets": v.targets_resolved,
        "recipe": v.recipe,
        "lora_alpha": adapted.extra.get("lora_alpha"),
        "trainable_params": result.get("trainable_params", adapted.n_trainable),
        "total_params": result.get("total_params", adapted.n_total),
        "model": v.model,
        "data": v.data,
        "train_rows": n_rows,
        "steps": result["steps"],
        "final_loss": result["final_loss"],
        "val_loss": result.get("val_loss"),
        "tokens": result["tokens"],
        "train_seconds": result["train_seconds"],
        "peak_gpu_memory_gib": result.get("peak_gpu_memory_gib"),
        "cuda_graphs": result.get("cuda_graphs"),
        "wall_seconds": round(wall, 1),
        "eval_task": v.eval_task,
        "accuracy_before": before,
        "accuracy_after": after,
        "saved": str(saved_to),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu})",
        "precision": "bf16" if bf16 else "fp32",
        "processes": v.nproc or 1,
        "strategy": v.strategy if (v.nproc or 1) > 1 else None,
        "versions": {
            "flashbone": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft_v,
        },
    }


def loss_plot(out: Path, title: str | None = None) -> None:
    from ..plotting import plot_runs

    plot_runs([out], out / "loss.png", title=f"Training loss: {title or out.name}")


def report(s: dict, out: Path) -> str:
    lines = [f"saved {s['saved']}  (metrics.jsonl, loss.png, config.yaml, summary.json in {out})"]
    g = s.get("cuda_graphs")
    if g and (g["captured"] or g["failed"]):
        lines.append(
            f"CUDA graphs: {g['captured']} micro-batch shapes recorded, {g['replayed']} micro-batches replayed"
            + (f"; new shapes ran without graphs: {g['failed']}" if g["failed"] else "")
        )
    if s.get("val_loss") is not None:
        lines.append(f"validation loss {s['val_loss']:.4f} after the last step (training loss {s['final_loss']:.4f})")
    if s["accuracy_after"] is not None:
        before = "n/a" if s["accuracy_before"] is None else f"{100 * s['accuracy_before']:.1f}%"
        lines.append(
            f"{s['eval_task']} held-out accuracy: {before} before -> {100 * s['accuracy_after']:.1f}% after "
            f"({s['method']} r={s['r']}, {s['trainable_params']:,} trainable, {s['steps']} steps, "
            f"train {s['train_seconds']:.0f}s, total {s['wall_seconds']:.0f}s)"
        )
    return "\n".join(lines)
