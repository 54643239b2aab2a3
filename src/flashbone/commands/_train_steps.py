"""The stages of ``flashbone train`` after its flags are resolved (see train.py).

    load_base: device, tokenizer, data (tokenized), held-out rows, base model
    attach_method: the method on the base -> Adapted
    eval_before / eval_after: held-out accuracy (skipped with --eval-task none)
    save_result: OUT/adapter (or OUT/model for --method full), written via a temp folder
    summarize / report / loss_plot: OUT/summary.json, the closing lines, OUT/loss.png
"""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import torch


def load_base(v: dict) -> dict:
    """Device, tokenizer, tokenized data, evaluation rows and the base model (no adapters yet)."""
    from .. import baselines, data, loading

    device = loading.pick_device(v["device"])
    bf16 = loading.use_bf16(v["precision"], device)
    tok = loading.load_tokenizer(v["model"])
    template = data.get_template(v["template"])
    ds = data.load_rows(v["data"], split=v["data_split"], subset=v["data_subset"],
                        max_samples=v["max_samples"], seed=v["seed"])
    qf, rf = data.detect_fields(ds.column_names, v["query_field"], v["response_field"], source=f"--data {v['data']}")
    v["query_field_resolved"], v["response_field_resolved"] = qf, rf
    rows, n_cut = data.tokenize_rows(ds, tok, template, qf, rf, v["max_length"])
    eval_ds = None
    if v["eval_task"] != "none":  # read the held-out rows now: bad eval data fails before training
        eval_ds = data.load_rows(v["eval_data"], split="test", max_samples=v["eval_samples"])
    # adapters train in fp32 on a bf16 base; full fine-tuning keeps fp32 master weights (autocast)
    dtype = torch.bfloat16 if bf16 and v["method"] != "full" else torch.float32
    model = loading.load_model(v["model"], dtype=dtype, device=device)
    v["targets_resolved"] = baselines.parse_targets(v["targets"], model)
    return {"device": device, "bf16": bf16, "tokenizer": tok, "template": template, "rows": rows, "n_cut": n_cut,
            "model": model, "eval": eval_ds}


def attach_method(v: dict, ctx: dict) -> None:
    """Seed, then wrap the base with the method (PiSSA/OLoRA rewrite base weights: evaluate first)."""
    from .. import baselines

    model = ctx["model"]
    if v["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    torch.manual_seed(v["seed"])
    ctx["adapted"] = baselines.build(model, v["method"], v["r"], v["targets_resolved"], lora_alpha=v["lora_alpha"],
                                     mini_r=v["mini_r"], base_name=v["model"], work_dir=Path(v["out"]))


def _write_eval(path: Path, result: tuple[float, list[dict]]) -> None:
    from ..generation import write_jsonl

    write_jsonl(path, result[1])


def eval_before(v: dict, ctx: dict, out: Path, eval_rows) -> float | None:
    """The base's accuracy; on --resume it is read back from OUT/eval_before.jsonl."""
    if v["eval_task"] == "none":
        return None
    path = out / "eval_before.jsonl"
    if v["resume"] and path.is_file():
        recs = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        acc = sum(r["correct"] for r in recs) / max(len(recs), 1)
    else:
        acc, recs = _eval(eval_rows, ctx["model"], v, ctx, "eval before")
        _write_eval(path, (acc, recs))
    print(f"before     {v['eval_task']} accuracy {100 * acc:.1f}% on {len(recs)} held-out rows", flush=True)
    return acc


def _eval(eval_rows, model, v: dict, ctx: dict, desc: str):
    return eval_rows(model, ctx["tokenizer"], ctx["eval"], v["eval_task"], ctx["template"],
                     max_new_tokens=v["max_new_tokens"], batch_size=v["eval_batch_size"], bf16=ctx["bf16"],
                     progress=v["progress"], desc=desc)


def eval_after(v: dict, ctx: dict, out: Path, eval_rows) -> float | None:
    if v["eval_task"] == "none":
        return None
    model = ctx["adapted"].model
    if v["gradient_checkpointing"]:
        ctx["model"].config.use_cache = True
    res = _eval(eval_rows, model, v, ctx, "eval after")
    _write_eval(out / "eval_after.jsonl", res)
    return res[0]


def save_result(adapted, tokenizer, out: Path) -> Path:
    """Write the adapter (or the whole model) through a temp folder, then rename into place."""
    name = "model" if adapted.method == "full" else "adapter"
    final, tmp = out / name, out / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    adapted.save(tmp)
    if adapted.method == "full":
        tokenizer.save_pretrained(str(tmp))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def summarize(v, adapted, result, before, after, saved_to, device, bf16, wall, n_rows) -> dict:
    import transformers

    from .. import __version__

    try:
        import peft

        peft_v = peft.__version__
    except ImportError:  # optional
        peft_v = None
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return {
        "method": v["method"], "r": v["r"], "targets": v["targets_resolved"], "recipe": v["recipe"],
        "lora_alpha": adapted.extra.get("lora_alpha"),
        "trainable_params": adapted.n_trainable, "total_params": adapted.n_total,
        "model": v["model"], "data": v["data"], "train_rows": n_rows, "steps": result["steps"],
        "final_loss": result["final_loss"], "tokens": result["tokens"], "train_seconds": result["train_seconds"],
        "wall_seconds": round(wall, 1), "eval_task": v["eval_task"], "accuracy_before": before,
        "accuracy_after": after, "saved": str(saved_to),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu})",
        "precision": "bf16" if bf16 else "fp32",
        "versions": {"flashbone": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft_v},
    }


def loss_plot(out: Path) -> None:
    from ..plotting import plot_runs

    plot_runs([out], out / "loss.png", title=f"Training loss: {out.name}")


def report(s: dict, out: Path) -> str:
    lines = [f"saved {s['saved']}  (metrics.jsonl, loss.png, config.yaml, summary.json in {out})"]
    if s["accuracy_after"] is not None:
        before = "n/a" if s["accuracy_before"] is None else f"{100 * s['accuracy_before']:.1f}%"
        lines.append(f"{s['eval_task']} held-out accuracy: {before} before -> {100 * s['accuracy_after']:.1f}% after "
                     f"({s['method']} r={s['r']}, {s['trainable_params']:,} trainable, {s['steps']} steps, "
                     f"train {s['train_seconds']:.0f}s, total {s['wall_seconds']:.0f}s)")
    return "\n".join(lines)
