"""``flashbone bench --e2e``: whole training runs, ``flashbone train``'s loop against
``transformers.Trainer`` (+ PEFT), on the same generated rows, model and global batch.

    flashbone bench --e2e                      # CUDA: TinyLlama's shape, rows of 206-616 tokens,
                                               # micro-batch 4 x accumulation 4, 24 steps
    flashbone bench --e2e --methods bone,bone@plain,hf-miss-bf16 --json e2e.json
    flashbone bench --e2e --nproc 2 --strategy fsdp   # every process runs the same list (torchrun)

Every method trains a fresh Llama-shaped model (random init, seed 0, SDPA) for ``--warmup`` +
``--steps`` optimizer steps of the papers' recipe (AdamW, lr 2e-5, cosine, no warmup, clip 1.0,
bf16 on CUDA: adapters on a bf16 base, full fine-tuning with float32 weights under autocast,
as ``flashbone train`` does). Rows: token counts uniform in ``--min-len..--max-len``, a prompt
of 20-50% of each row (no loss there), random ids. Both loops see the same rows in the same
order (one shuffled epoch, the order ``flashbone train`` draws), so every step holds the same
tokens. Timed: the steps after the warm-up, from a device sync to a device sync; tokens/s
counts non-padding tokens of all processes; peak is ``torch.cuda.max_memory_allocated`` from
the start of training (per process).

Methods: ``bone``, ``bat``, ``bat-row`` ... (``flashbone train --method X``: its loop with the
automatic token budget on CUDA; ``X@plain``: micro-batches of ``--batch`` rows as asked,
``X@packed``: packed rows, ``X@graphs``: packed rows as CUDA graphs (``--cuda-graphs``; the
default loop uses them where it can; under ``--nproc``: no DDP wrapper, the loop all-reduces),
``X@eager``: the default loop without them), ``lora`` and ``full`` through the same loop; ``hf-miss``,
``hf-bat``, ``hf-lora``, ``hf-full`` (``transformers.Trainer``; PEFT's float32 adapters,
``-bf16`` for bf16 ones). ``vs`` is tokens/s over the Trainer counterpart's in the same run.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from ..errors import CLIError

OURS = ["bone", "bone-mini", "bat", "bat-row", "bat-hadamard", "bone-ab", "lora", "full"]
HF = {"hf-miss": True, "hf-bat": "bat", "hf-lora": None, "hf-full": None}
DEFAULT = {
    "cuda": [
        "bone",
        "bone@plain",
        "bat",
        "bat-row",
        "lora",
        "full",
        "hf-miss",
        "hf-miss-bf16",
        "hf-bat-bf16",
        "hf-lora",
        "hf-full",
    ],
    "cpu": ["bone", "bone@plain", "bone@packed", "full", "hf-miss", "hf-full"],
}
# the Trainer run each of ours is compared with: the first of these in the run
COUNTERPART = {
    "bone": ["hf-miss-bf16", "hf-miss"],
    "bone-mini": ["hf-miss-bf16", "hf-miss"],
    "bat": ["hf-bat-bf16", "hf-bat"],
    "bat-row": ["hf-bat-bf16", "hf-bat"],
    "bat-hadamard": ["hf-bat-bf16", "hf-bat"],
    "bone-ab": ["hf-bat-bf16", "hf-bat"],
    "lora": ["hf-lora", "hf-lora-bf16"],
    "full": ["hf-full"],
}
SHAPES = {  # TinyLlama's shape on CUDA (its 32000-token vocabulary); a tiny one on the CPU
    "cuda": dict(
        layers=22,
        hidden=2048,
        intermediate=5632,
        heads=32,
        kv_heads=4,
        vocab=32000,
        batch=4,
        r=64,
        steps=16,
        warmup=8,
        min_len=206,
        max_len=616,
        grad_accum=4,
    ),
    "cpu": dict(
        layers=2,
        hidden=64,
        intermediate=128,
        heads=4,
        kv_heads=2,
        vocab=256,
        batch=2,
        r=16,
        steps=2,
        warmup=1,
        min_len=8,
        max_len=40,
        grad_accum=2,
    ),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("end to end (--e2e): whole training loops on generated rows")
    g.add_argument("--e2e", action="store_true", help="time flashbone train's loop against transformers.Trainer")
    g.add_argument("--min-len", type=int, help="shortest row in tokens [CUDA 206]")
    g.add_argument("--max-len", type=int, help="longest row in tokens [CUDA 616]")
    g.add_argument("--grad-accum", type=int, help="micro-batches per step (--batch rows each) [4]")
    g.add_argument("--micro-batch-tokens", type=int, help="flashbone's token budget (default: flashbone train's)")
    g.add_argument("--nproc", type=int, default=1, help="processes (GPUs); the global batch stays batch x accum")
    g.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp", help="flashbone's loop under --nproc")
    g.add_argument(
        "--quantize",
        choices=["4bit", "8bit"],
        help="a bitsandbytes base (NF4 double quantisation / LLM.int8) for every method; the Trainer's "
        "gets peft.prepare_model_for_kbit_training (PEFT's QLoRA recipe), ours what flashbone train "
        "--quantize does",
    )
    g.add_argument(
        "--liger",
        choices=["auto", "on", "off"],
        default="auto",
        help="flashbone's fused RMSNorm/SwiGLU (as flashbone train --liger); the Trainer runs as shipped",
    )


def _resolve(a: argparse.Namespace, dev: torch.device) -> None:
    for k, v in SHAPES[dev.type].items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if a.kv_heads is None:
        a.kv_heads = a.heads
    for k in ("min_len", "max_len", "grad_accum", "nproc"):
        if getattr(a, k) < 1:
            raise CLIError(f"--{k.replace('_', '-')} must be positive, got {getattr(a, k)}")
    if a.min_len > a.max_len or a.min_len < 4:
        raise CLIError(f"--min-len {a.min_len} must be at least 4 and at most --max-len {a.max_len}")
    a.seq = a.max_len
    if a.cuda_graphs:
        raise CLIError("--e2e: name the runs with CUDA graphs as methods X@graphs (e.g. bone@graphs)")
    if a.micro_batch_tokens is None:
        from .train import AUTO_MICRO_BATCH_TOKENS

        a.micro_batch_tokens = AUTO_MICRO_BATCH_TOKENS if dev.type == "cuda" else 4 * a.max_len
    a.methods_list = DEFAULT[dev.type] if not a.methods else [m.strip() for m in a.methods.split(",") if m.strip()]
    if a.quantize:
        if not a.methods:  # full fine-tuning cannot train a quantised base
            a.methods_list = [m for m in a.methods_list if m.partition("@")[0] not in ("full", "hf-full")]
        elif any(m.partition("@")[0] in ("full", "hf-full") for m in a.methods_list):
            raise CLIError("--quantize: full fine-tuning cannot train a quantised base; leave full and hf-full out")
        from .. import quant

        try:
            quant.check_backend(a.quantize, dev)
        except quant.QuantizationError as e:
            raise CLIError(str(e)) from None
    for m in a.methods_list:
        base, _, how = m.partition("@")
        hf = m.removesuffix("-bf16")
        if not ((base in OURS and how in ("", "plain", "packed", "graphs", "eager")) or (hf in HF and "@" not in m)):
            raise CLIError(
                f"--e2e: unknown method {m!r}; choose from {', '.join(OURS)} (optionally @plain, "
                f"@packed, @graphs or @eager) and {', '.join(HF)} (optionally -bf16)"
            )
        if how == "graphs" and (dev.type != "cuda" or (a.nproc > 1 and a.strategy != "ddp")):
            raise CLIError(f"--e2e: {m} runs CUDA graphs: it needs a CUDA device (and --strategy ddp under --nproc)")


class RowTable:
    """Rows as ``flashbone.training.Trainer`` reads them (``rows[indices]`` gives columns),
    without the datasets package."""

    def __init__(self, ids: list[list[int]], n_prompt: list[int]):
        self.cols = {"input_ids": ids, "n_prompt": n_prompt}

    def __len__(self) -> int:
        return len(self.cols["n_prompt"])

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.cols[key]
        return {k: [v[i] for i in key] for k, v in self.cols.items()}


def make_rows(a: argparse.Namespace, n: int) -> RowTable:
    """``n`` rows: lengths uniform in [min_len, max_len], prompts 20-50% of a row, ids >= 3."""
    rng = random.Random(1234)
    ids, n_prompt = [], []
    for _ in range(n):
        length = rng.randint(a.min_len, a.max_len)
        ids.append([1] + [rng.randrange(3, a.vocab) for _ in range(length - 1)])
        n_prompt.append(max(1, int(length * rng.uniform(0.2, 0.5))))
    return RowTable(ids, n_prompt)


def _model(a, dev, method: str, base: str):
    from . import bench
    from ..baselines import build

    full = base in ("full", "hf-full")
    dtype = torch.float32 if full or dev.type != "cuda" else torch.bfloat16  # as flashbone train
    model = bench.build_model(a, dev, dtype)
    model.config.use_cache = False
    if a.quantize:  # as a quantised load would give it: every adapted projection in 4/8 bits
        from .. import quant

        quant.quantize_(model, a.quantize, bench.TARGETS, dtype)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    if not method.startswith("hf-"):
        from ..fused import apply

        if a.quantize:  # what flashbone train --quantize does (loading.load_model)
            quant.prepare_for_training(model)
        apply(model, a.liger, dev)
        r = bench.matched_lora_r(a) if base == "lora" else a.r
        mini_r = (a.mini_r or a.r) if base == "bone-mini" else None
        return build(model, base, r, list(bench.TARGETS), lora_alpha=None, mini_r=mini_r, base_name="e2e")
    if full:
        return model
    import peft

    if a.quantize:  # PEFT's QLoRA recipe: non-quantised weights to float32, input gradients on
        peft.prepare_model_for_kbit_training(
            model, a.gradient_checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False}
        )

    if base == "hf-lora":
        r = bench.matched_lora_r(a)
        cfg = peft.LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=bench.TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"
        )
    else:
        cfg = peft.MissConfig(r=a.r, target_modules=bench.TARGETS, init_weights=HF[base], task_type="CAUSAL_LM")
    return peft.get_peft_model(model, cfg, autocast_adapter_dtype=not method.endswith("-bf16"))


class _Clock:
    """Device-synced time at the end of the warm-up and of the last step."""

    def __init__(self, dev, warmup: int, last: int, keep_peak: bool = False):
        self.dev, self.warmup, self.last, self.t = dev, warmup, last, {}
        self.keep_peak = keep_peak  # CUDA graphs: activations live in their pool from the capture on

    def __call__(self, step: int) -> None:
        if step in (self.warmup, self.last):
            if self.dev.type == "cuda":
                torch.cuda.synchronize(self.dev)
            self.t[step] = time.perf_counter()
        if step == self.warmup and self.dev.type == "cuda" and not self.keep_peak:
            torch.cuda.reset_peak_memory_stats(self.dev)  # the loop's own peak, warm caches included


def _run_ours(a, dev, method: str, rows: RowTable, env, work: Path) -> dict:
    from .. import distributed
    from ..training import Dist, Trainer, TrainSettings

    base, _, how = method.partition("@")
    adapted = _model(a, dev, method, base)
    dist = Dist(env.rank, env.world) if env else Dist()
    batch, accum = distributed.split_batch(a.batch, a.grad_accum, dist.world)
    s = TrainSettings(
        lr=2e-5,
        batch_size=batch,
        grad_accum=accum,
        max_steps=a.warmup + a.steps,
        seed=0,
        progress=False,
        bf16=dev.type == "cuda",
        micro_batch_tokens=0 if how == "plain" else a.micro_batch_tokens,
        packing={"plain": False, "packed": True, "graphs": True}.get(how),
        cuda_graphs={"graphs": True, "": None}.get(how, False),
    )
    graphed = how == "graphs"  # several processes: no DDP wrapper, the loop all-reduces itself
    wrap = distributed.wrapper(a.strategy, dev, dev.type == "cuda", adapted.hf_model) if env and not graphed else None
    trainer = Trainer(adapted.model, rows, 0, s, work, dist=dist, wrap=wrap)
    clock = trainer.step_hook = _Clock(dev, a.warmup, a.warmup + a.steps, keep_peak=trainer.graphs is not None)
    trainer.run()
    losses = [json.loads(x)["loss"] for x in (work / "metrics.jsonl").read_text().splitlines()] if dist.is_main else []
    out = {
        "trainable": adapted.n_trainable,
        "seconds": clock.t[clock.last] - clock.t[clock.warmup],
        "mean_loss": sum(losses) / len(losses) if losses else None,
    }
    if trainer.graphs is not None:  # how many shapes were recorded, how many micro-batches replayed
        out["graphs"] = {"captured": trainer.graphs.captures, "replayed": trainer.graphs.replays}
    return out


def _run_hf(a, dev, method: str, rows: RowTable, order: list[int], env, work: Path) -> dict:
    import transformers

    from ..data import collate

    model = _model(a, dev, method, method.removesuffix("-bf16"))
    data = [{"input_ids": rows.cols["input_ids"][i], "n_prompt": rows.cols["n_prompt"][i]} for i in order]
    clock = _Clock(dev, a.warmup, a.warmup + a.steps)
    losses = []

    class Timing(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock(state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "train_loss" in logs:  # the mean of every step's loss
                losses.append(logs["train_loss"])

    class InOrder(transformers.Trainer):  # the rows in flashbone's order (one epoch, no shuffle)
        def _get_train_sampler(self, *args, **kw):
            from torch.utils.data import SequentialSampler

            return SequentialSampler(self.train_dataset)

    per_proc, accum = a.batch, a.grad_accum
    if env:
        from ..distributed import split_batch

        per_proc, accum = split_batch(a.batch, a.grad_accum, env.world)
    targs = transformers.TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=per_proc,
        gradient_accumulation_steps=accum,
        max_steps=a.warmup + a.steps,
        learning_rate=2e-5,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=dev.type == "cuda",
        use_cpu=dev.type != "cuda",
        optim="adamw_torch_fused" if dev.type == "cuda" else "adamw_torch",
        logging_steps=a.warmup + a.steps,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        log_level="error",
        seed=0,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        gradient_checkpointing=a.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if a.gradient_checkpointing else None,
    )
    trainer = InOrder(
        model=model, args=targs, train_dataset=data, data_collator=lambda b: collate(b, 0), callbacks=[Timing()]
    )
    trainer.remove_callback(transformers.PrinterCallback)
    trainer.train()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "trainable": n_train,
        "seconds": clock.t[clock.last] - clock.t[clock.warmup],
        "mean_loss": losses[-1] if losses else None,
    }


def run_method(a, dev, method: str, rows: RowTable, order: list[int], env) -> dict:
    """One method's row of the table (tokens/s over the timed steps, peak GiB)."""
    g = a.batch * a.grad_accum
    timed = [i for i in order[a.warmup * g : (a.warmup + a.steps) * g]]
    tokens = sum(len(rows.cols["input_ids"][i]) for i in timed)
    with tempfile.TemporaryDirectory(prefix="flashbone-e2e-") as work, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' renames, not the user's concern
        if method.startswith("hf-"):
            out = _run_hf(a, dev, method, rows, order, env, Path(work))
        else:
            out = _run_ours(a, dev, method, rows, env, Path(work))
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    row = dict(
        method=method,
        trainable=out["trainable"],
        tokens_per_s=tokens / out["seconds"],
        step_ms=out["seconds"] / a.steps * 1e3,
        peak_gib=peak,
        mean_loss=out["mean_loss"],
        **({"graphs": out["graphs"]} if "graphs" in out else {}),
    )
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def add_ratios(rows: list[dict]) -> None:
    by = {r["method"]: r for r in rows if "error" not in r}
    for r in rows:
        base = r["method"].partition("@")[0]
        name = next((m for m in COUNTERPART.get(base, []) if m in by), None)
        if "error" in r or name is None:
            continue
        ref = by[name]
        r["vs"] = name
        r["speed_ratio"] = r["tokens_per_s"] / ref["tokens_per_s"]
        if r["peak_gib"] and ref["peak_gib"]:
            r["mem_ratio"] = r["peak_gib"] / ref["peak_gib"]


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'method':<16}{'trainable':>15}{'tokens/s':>11}{'ms/step':>10}{'peak GiB':>10}  {'vs':<14}"
        f"{'speed':>7}{'memory':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:<16} error: {r['error']}")
            continue
        f = lambda k, fmt: format(r[k], fmt) if r.get(k) is not None else "-"  # noqa: E731
        lines.append(
            f"{r['method']:<16}{r['trainable']:>15,}{f('tokens_per_s', ',.0f'):>11}{f('step_ms', '.1f'):>10}"
            f"{f('peak_gib', '.2f'):>10}  {r.get('vs', '-'):<14}{f('speed_ratio', '.2f'):>7}"
            f"{f('mem_ratio', '.2f'):>8}"
        )
    return "\n".join(lines)


def _launch(a: argparse.Namespace) -> int:
    """Start ``--nproc`` processes of this same command (torch.distributed.run)."""
    from ..distributed import launch

    argv = [x for x in sys.argv[2:]]
    launch(a.nproc, argv, command="bench")
    return 0


def run_e2e(a: argparse.Namespace, dev: torch.device) -> int:
    from .. import distributed
    from . import bench
    from ..data import epoch_order

    _resolve(a, dev)
    env = distributed.process_env()
    if env is None and a.nproc > 1:
        return _launch(a)
    if env is not None:
        dev = distributed.init(env, dev)
    main = env is None or env.rank == 0
    g = a.batch * a.grad_accum
    n = (a.warmup + a.steps) * g
    rows = make_rows(a, n)
    order = epoch_order(n, 0, 0)  # flashbone train's first epoch with --seed 0
    info = bench.environment(dev)
    info["command"] = "flashbone bench " + " ".join(sys.argv[2:])
    if main:
        mean = sum(len(x) for x in rows.cols["input_ids"]) / n
        print(
            f"# {info['device']} x {env.world if env else 1} | torch {info['torch']} | transformers "
            f"{info['transformers']} | peft {info['peft']} | liger-kernel {info['liger_kernel']} | {a.layers} layers, hidden {a.hidden}, intermediate "
            f"{a.intermediate}, heads {a.heads}/{a.kv_heads}, vocab {a.vocab}, r={a.r} | rows {a.min_len}-"
            f"{a.max_len} tokens (mean {mean:.0f}), batch {a.batch} x accum {a.grad_accum}, {a.warmup}+{a.steps} "
            f"steps, flashbone micro-batch tokens {a.micro_batch_tokens}"
            + (f", {a.strategy}" if env else "")
            + (", gradient checkpointing" if a.gradient_checkpointing else "")
            + (f", {a.quantize} base" if a.quantize else ""),
            flush=True,
        )
    table = []
    for m in a.methods_list:
        try:
            r = run_method(a, dev, m, rows, order, env)
        except (RuntimeError, ValueError, TypeError, ImportError) as e:  # OOM or a baseline failing: keep going
            r = dict(method=m, error=f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        if env is not None:  # one peak per process: report the largest
            peaks = distributed.all_gather_objects(r.get("peak_gib"), env.world)
            r["peak_gib"] = max(p for p in peaks if p is not None) if any(p is not None for p in peaks) else None
        table.append(r)
        if main:
            print(json.dumps(r), flush=True)
    add_ratios(table)
    if main:
        print(format_table(table))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(dict(args={k: v for k, v in vars(a).items()}, env=info, rows=table), f, indent=1, default=str)
    if env is not None:
        distributed.finish()
    return 0
