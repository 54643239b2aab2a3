"""``flashbone bench``: training-step time and peak memory of every method, as ratios to the floor.

    flashbone bench                          # CUDA: 8 layers of LLaMA2-7B width, bf16, 4 x 1024
    flashbone bench --methods floor,bone,peft-miss --json out.json
    flashbone bench --layers 32 --batch 8 --seq 512 --gradient-checkpointing   # papers' Tables 6-7
    flashbone bench --cuda-graphs            # each step captured once and replayed: GPU time alone
    flashbone bench --kernels [--sweep r|tokens|width]   # per-layer fwd/bwd against the ceilings

One process, one device: for each method a fresh Llama-shaped model (random init, same seed,
SDPA attention) is built, wrapped, and trained for ``--warmup`` + ``--steps`` AdamW steps on
random tokens; the table holds the median step, tokens/s, peak memory
(``torch.cuda.max_memory_allocated``, reset per method) and both as ratios to ``floor``, the
frozen base with input gradients on (forward + backward, no weight gradients).

Methods: ``floor``, ``full`` (full fine-tuning), every registered variant (``bone``, ``bat``,
... :data:`flashbone.variants.VARIANTS`; the default list leaves out those without a hand-written
path; append ``@torch`` to force the PyTorch path),
``peft-lora`` (rank chosen so its trainable parameters match ``bone``'s), ``peft-miss``,
``peft-mini``, ``peft-bat`` (PEFT's defaults: float32 adapters; append ``-bf16`` for
``autocast_adapter_dtype=False``). Without CUDA the same runs on the CPU with a tiny shape.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import gc
import json
import math
import platform
import statistics
import sys
import time
from typing import Any

import torch

from ..errors import CLIError
from ..ops import TORCH_PATHS
from ..variants import VARIANTS

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
OURS = list(VARIANTS)  # every registered variant runs with --methods; the default list holds
# those with a hand-written PyTorch path (a variant on the generic dense path is no speed contender)
PEFT = {"peft-lora": None, "peft-miss": True, "peft-mini": "mini", "peft-bat": "bat"}
DEFAULT_METHODS = ["floor", *(v for v in OURS if v in TORCH_PATHS), "peft-lora", "peft-miss", "peft-bat", "full"]
# (layers, hidden, intermediate, heads, vocab, batch, seq, r, steps, warmup)
SHAPES = {
    "cuda": dict(
        layers=8, hidden=4096, intermediate=11008, heads=32, vocab=32000, batch=4, seq=1024, r=64, steps=20, warmup=3
    ),
    "cpu": dict(layers=2, hidden=256, intermediate=704, heads=4, vocab=1000, batch=2, seq=128, r=32, steps=5, warmup=2),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and batch (defaults: LLaMA2-7B width on CUDA, tiny on CPU)")
    for name in ("layers", "hidden", "intermediate", "heads", "vocab", "batch", "seq", "r"):
        g.add_argument(f"--{name}", type=int, default=None)
    g.add_argument("--kv-heads", type=int, default=None, help="default: --heads (no GQA)")
    g.add_argument("--mini-r", type=int, default=None, help="bone-mini's m, bat-grouped's g (default: r)")
    g.add_argument(
        "--lora-r",
        type=int,
        default=None,
        help="PEFT LoRA rank (default: the one matching bone's trainable parameters)",
    )
    g.add_argument("--gradient-checkpointing", action="store_true")
    t = p.add_argument_group("run")
    t.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="every method's whole step (forward, backward, AdamW) captured once as a CUDA graph and "
        "replayed: the GPU's time alone, without the host's (with --e2e: methods X@graphs)",
    )
    t.add_argument("--methods", default=None, help=f"comma list (default: {','.join(DEFAULT_METHODS)})")
    t.add_argument("--steps", type=int, default=None, help="timed steps (median is reported)")
    t.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    t.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    t.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="model dtype (auto: bf16 on CUDA, fp32 on CPU)",
    )
    t.add_argument("--json", metavar="FILE", help="write args, environment and rows as JSON")
    k = p.add_argument_group("kernels (per-layer forward/backward; see flashbone.commands.bench_kernels)")
    k.add_argument("--kernels", action="store_true", help="time each layer shape, not a model")
    k.add_argument("--sweep", choices=["none", "r", "tokens", "width"], default="none")
    k.add_argument("--variants", default=None, help="kernels mode: comma list of variants")
    from .bench_e2e import add_arguments as add_e2e_arguments

    add_e2e_arguments(p)


def pick_device(args: argparse.Namespace) -> torch.device:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA device is visible; use --device cpu")
    return torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )


def resolve(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """Fill device-dependent defaults in place and validate the shape."""
    dev = pick_device(args)
    for key, val in SHAPES[dev.type].items():
        if getattr(args, key, None) is None:
            setattr(args, key, val)
    args.kv_heads = args.kv_heads or args.heads
    args.mini_r = args.mini_r or args.r
    for key in ("layers", "hidden", "intermediate", "heads", "vocab", "batch", "seq", "r", "steps"):
        if getattr(args, key) <= 0:
            raise CLIError(f"--{key.replace('_', '-')} must be positive, got {getattr(args, key)}")
    if args.warmup < 0:
        raise CLIError(f"--warmup must be >= 0, got {args.warmup}")
    if args.hidden % args.heads or args.heads % args.kv_heads:
        raise CLIError(
            f"--hidden {args.hidden} must be a multiple of --heads {args.heads}, "
            f"and --heads of --kv-heads {args.kv_heads}"
        )
    names = {
        "auto": torch.bfloat16 if dev.type == "cuda" else torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "fp32": torch.float32,
    }
    return dev, names[args.dtype]


def parse_methods(text: str | None) -> list[str]:
    methods = DEFAULT_METHODS if not text else [m.strip() for m in text.split(",") if m.strip()]
    for m in methods:
        base = m.split("@")[0].removesuffix("-bf16")
        ok = (
            m in ("floor", "full")
            or (base in OURS and m in (base, base + "@torch"))
            or (base in PEFT and m in (base, base + "-bf16"))
        )
        if not ok:
            raise CLIError(
                f"unknown method {m!r}; choose from floor, full, {', '.join(OURS)} "
                f"(optionally with @torch), {', '.join(PEFT)} (optionally with -bf16)"
            )
    return methods


def build_model(a: argparse.Namespace, dev: torch.device, dtype: torch.dtype):
    """A Llama-shaped causal LM with random weights (seed 0), SDPA attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        vocab_size=a.vocab,
        max_position_embeddings=max(a.seq, 128),
    )
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def matched_lora_r(a: argparse.Namespace) -> int:
    """The LoRA rank whose trainable parameters are closest to bone's at rank ``a.r``."""
    if a.lora_r:
        return a.lora_r
    kv = a.hidden // a.heads * a.kv_heads
    shapes = [
        (a.hidden, a.hidden),
        (kv, a.hidden),
        (kv, a.hidden),
        (a.hidden, a.hidden),
        (a.intermediate, a.hidden),
        (a.intermediate, a.hidden),
        (a.hidden, a.intermediate),
    ]
    bone = sum(a.r * o for o, _ in shapes)
    return max(1, round(bone / sum(o + i for o, i in shapes)))


def wrap(model, method: str, a: argparse.Namespace):
    """Put ``method``'s trainable parameters on ``model``; returns the model to call."""
    if method == "floor":
        model.requires_grad_(False)
        model.enable_input_require_grads()
        return model
    if method == "full":
        return model
    base = method.split("@")[0].removesuffix("-bf16")
    if base in OURS:
        from ..config import BoneConfig
        from ..model import get_bone_model

        cfg = BoneConfig(
            variant=base, r=a.r, mini_r=a.mini_r if VARIANTS[base].mini_r else None, target_modules=list(TARGETS)
        )
        return get_bone_model(model, cfg)
    try:
        import peft
    except ImportError:
        raise CLIError(f"method {method!r} needs the peft package: pip install 'flashbone[peft]'") from None
    if base == "peft-lora":
        r = matched_lora_r(a)
        cfg = peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0)
    else:
        cfg = peft.MissConfig(
            r=a.r,
            target_modules=TARGETS,
            init_weights=PEFT[base],
            **({"mini_r": a.mini_r} if base == "peft-mini" else {}),
        )
    return peft.get_peft_model(model, cfg, autocast_adapter_dtype=not method.endswith("-bf16"))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def training_step(method: str, a: argparse.Namespace, dev: torch.device, dtype: torch.dtype):
    """``(model, step)`` for one method: the wrapped bench model and a function that runs one
    AdamW training step on the bench's fixed batch and returns the loss (what
    :func:`run_method` times; scripts/device_profile.py and friends profile the same step)."""
    model = wrap(build_model(a, dev, dtype), method, a)
    params = [p for p in model.parameters() if p.requires_grad]
    graphs = getattr(a, "cuda_graphs", False) and dev.type == "cuda"
    opt = None
    if params:
        fused = {"fused": True} if dev.type == "cuda" else {}
        opt = torch.optim.AdamW(params, lr=1e-5, capturable=graphs, **fused)
    gen = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=gen).to(dev)

    def step() -> torch.Tensor:
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        if opt is not None:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss

    return model, (_graphed(step, dev) if graphs else step)


def _graphed(step, dev: torch.device, warmup: int = 3):
    """``step`` captured as one CUDA graph after ``warmup`` eager runs on a side stream (as
    PyTorch's whole-network capture does); calls replay it and return its loss buffer. Peak
    memory is counted from here: a replay allocates nothing, its activations live in the graph's
    pool since the capture."""
    from ..kernels import any_size

    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with any_size():  # as the training loop's graphs: no launch cost, so kernels at every size
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            loss = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return loss

    return replay


def run_method(method: str, a: argparse.Namespace, dev: torch.device, dtype: torch.dtype) -> dict:
    """Build, wrap and train one method; the row of the table (times in ms, memory in GiB)."""
    from ..ops import use_backend

    model, step_fn = training_step(method, a, dev, dtype)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    backend = use_backend("torch") if method.endswith("@torch") else contextlib.nullcontext()
    if dev.type == "cuda" and not a.cuda_graphs:  # (graphs: counted from their warm-up, _graphed)
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times, hosts, losses = [], [], []
    with backend:
        for _ in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            loss = step_fn()
            # host done queueing; far below step_ms: GPU-bound. Near it: host-bound, or the host
            # waited on a full launch queue (docs/kernel_notes.md); a profile tells them apart
            hosts.append(time.perf_counter() - t0)
            _sync(dev)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss.detach()))
    step = statistics.median(times[a.warmup :])
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    row = dict(
        method=method,
        trainable=n_train,
        step_ms=step * 1e3,
        host_ms=statistics.median(hosts[a.warmup :]) * 1e3,
        tokens_per_s=a.batch * a.seq / step,
        peak_gib=peak,
        loss_finite=all(math.isfinite(x) for x in losses),
    )
    if method == "peft-lora" or method.startswith("peft-lora-"):
        row["lora_r"] = matched_lora_r(a)
    del model, step_fn, loss
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


def add_ratios(rows: list[dict]) -> None:
    floor = next((r for r in rows if r["method"] == "floor" and "error" not in r), None)
    for r in rows:
        if floor is None or "error" in r:
            continue
        r["time_ratio"] = r["step_ms"] / floor["step_ms"]
        if r["peak_gib"] is not None and floor["peak_gib"]:
            r["mem_ratio"] = r["peak_gib"] / floor["peak_gib"]


def format_table(rows: list[dict]) -> str:
    head = f"{'method':<20}{'trainable':>14}{'ms/step':>10}{'tokens/s':>11}{'x floor':>9}{'peak GiB':>10}{'x floor':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:<20} error: {r['error']}")
            continue
        f = lambda k, fmt: format(r[k], fmt) if r.get(k) is not None else "-"  # noqa: E731
        lines.append(
            f"{r['method']:<20}{r['trainable']:>14,}{f('step_ms', '.1f'):>10}"
            f"{f('tokens_per_s', ',.0f'):>11}{f('time_ratio', '.3f'):>9}"
            f"{f('peak_gib', '.2f'):>10}{f('mem_ratio', '.3f'):>9}"
        )
    return "\n".join(lines)


def environment(dev: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "command": "flashbone bench " + " ".join(sys.argv[2:]),
    }
    for mod in ("transformers", "peft", "triton", "liger_kernel"):
        try:
            env[mod] = importlib.metadata.version(mod.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            env[mod] = None
    if dev.type == "cuda":
        from ..kernels import available

        env["kernels"] = available()
    return env


def run(args: argparse.Namespace) -> int:
    if args.e2e:  # whole training loops: commands/bench_e2e.py
        from .bench_e2e import run_e2e

        return run_e2e(args, pick_device(args))
    dev, dtype = resolve(args)
    if args.cuda_graphs and dev.type != "cuda":
        raise CLIError("--cuda-graphs needs a CUDA device; leave it out")
    if args.kernels:
        from .bench_kernels import run_kernels

        return run_kernels(args, dev, dtype)
    methods = parse_methods(args.methods)
    env = environment(dev)
    print(
        f"# {env['device']} | torch {env['torch']} | transformers {env['transformers']} | "
        f"peft {env['peft']} | {args.layers} layers, hidden {args.hidden}, intermediate "
        f"{args.intermediate}, {args.batch}x{args.seq} tokens, r={args.r}, {dtype}, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}"
        + (", CUDA graphs" if args.cuda_graphs else ""),
        flush=True,
    )
    rows = []
    for m in methods:
        try:
            rows.append(run_method(m, args, dev, dtype))
        except (RuntimeError, ValueError, TypeError) as e:  # OOM or a baseline failing: keep going
            rows.append(dict(method=m, error=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"))
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        print(json.dumps(rows[-1]), flush=True)
    add_ratios(rows)
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), env=env, rows=rows), f, indent=1, default=str)
    return 0
