"""Where `flashbone train`'s step goes, on `flashbone bench --e2e`'s rows and model.

    PYTHONPATH=src python scripts/profile_e2e.py --methods bone,bat-row [--modes base,liger] [e2e flags]
        [--top N] [--json FILE]

Per method and variant: the loop's wall ms/step and peak memory over `--steps` timed steps (no
profiler), then a CUDA-only profile of two steps: GPU busy ms/step (kernel time, overlaps merged),
so `wall - busy` is the time the GPU waited on the host; and the N costliest kernels, grouped.
Modes: `base` (the loop as shipped), `plain-loss` (chunked loss off), `liger` (flashbone.fused: liger-kernel's
RMSNorm and SwiGLU in the model instance); joined with `+`: `nogroups` (sibling groups off),
`unfused` (with --quantize: 4-bit bone through bitsandbytes' own layer plus a separate adapter
term, no groups: the path before the 4-bit bone node of ops.quantized), e.g. `liger+unfused`.
"""

import argparse
import functools
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from flashbone import layer
from flashbone.commands import bench, bench_e2e
from flashbone.ops.quantized import quantized_linear
from flashbone.settings import SETTINGS
from flashbone.training import Dist, Trainer, TrainSettings


def _quantized_linear(*args, fuse: bool):
    return quantized_linear(*args[:7], args[7] and fuse)


def _busy_ms(prof, steps: int) -> float:
    iv = sorted(
        (e.time_range.start, e.time_range.end)
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start
    )
    busy, end = 0.0, None
    for s, t in iv:
        if end is None or s >= end:
            busy += t - s
            end = t
        elif t > end:
            busy += t - end
            end = t
    return busy / steps / 1e3


def _group(name: str) -> str:
    n = name.lower()
    for key, label in (
        ("gemm", "gemm"),
        ("cutlass", "gemm"),
        ("sm90", "gemm"),
        ("nvjet", "gemm"),
        ("flash", "attention"),
        ("fmha", "attention"),
        ("attention", "attention"),
        ("adam", "optimizer"),
        ("multi_tensor", "optimizer"),
        ("nll", "loss"),
        ("softmax", "loss/softmax"),
        ("triton", "triton (adapters/liger)"),
        ("copy", "copies/casts"),
        ("elementwise", "elementwise"),
        ("reduce", "reductions"),
    ):
        if key in n:
            return label
    return "other"


def run(a, dev, method: str, variant: str, rows, order) -> dict:
    base, _, how = method.partition("@")
    flags = set(variant.split("+"))
    a.liger = "on" if "liger" in flags else "off"
    SETTINGS.groups = not flags & {"nogroups", "unfused"}
    layer.quantized_linear = functools.partial(_quantized_linear, fuse="unfused" not in flags)
    adapted = bench_e2e._model(a, dev, method, base)
    g = a.batch * a.grad_accum
    n_steps = a.warmup + a.steps + 2
    s = TrainSettings(
        lr=2e-5,
        batch_size=a.batch,
        grad_accum=a.grad_accum,
        max_steps=n_steps,
        seed=0,
        progress=False,
        bf16=dev.type == "cuda",
        micro_batch_tokens=0 if how == "plain" else a.micro_batch_tokens,
        packing={"plain": False, "packed": True}.get(how),
        chunked_loss=False if "plain-loss" in flags else None,
    )
    timed = order[a.warmup * g : (a.warmup + a.steps) * g]
    tokens = sum(len(rows.cols["input_ids"][i]) for i in timed)
    t, prof_box = {}, {}
    cuda = dev.type == "cuda"

    def hook(step: int) -> None:
        if step in (a.warmup, a.warmup + a.steps, n_steps) and cuda:
            torch.cuda.synchronize()
        if step in (a.warmup, a.warmup + a.steps):
            t[step] = time.perf_counter()
            if step == a.warmup and cuda:
                torch.cuda.reset_peak_memory_stats()
        if step == a.warmup + a.steps:
            acts = [ProfilerActivity.CUDA] if cuda else []
            if a.cpu_top or not cuda:
                acts.append(ProfilerActivity.CPU)
            prof_box["p"] = profile(activities=acts)
            prof_box["p"].__enter__()
        if step == n_steps:
            prof_box["p"].__exit__(None, None, None)

    with tempfile.TemporaryDirectory() as work:
        trainer = Trainer(adapted.model, rows, 0, s, Path(work), dist=Dist())
        trainer.step_hook = hook
        trainer.run()
    prof = prof_box["p"]
    wall = (t[a.warmup + a.steps] - t[a.warmup]) / a.steps * 1e3
    groups: dict[str, float] = {}
    top = []
    for e in sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total):
        if e.self_device_time_total <= 0:
            continue
        ms = e.self_device_time_total / 2 / 1e3
        groups[_group(e.key)] = groups.get(_group(e.key), 0.0) + ms
        top.append((e.key[:100], round(ms, 3), e.count // 2))
    host = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total)
    host_top = [(e.key[:80], round(e.self_cpu_time_total / 2 / 1e3, 3), e.count // 2) for e in host[: a.cpu_top]]
    out = dict(
        method=method,
        host_top=host_top,
        variant=variant,
        wall_ms=wall,
        tokens_per_s=tokens / (wall * a.steps / 1e3),
        peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        busy_ms=_busy_ms(prof, 2),
        groups=dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        top=top[: a.top],
    )
    del trainer, adapted, prof
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)

    p.add_argument("--modes", default="base")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--cpu-top", type=int, default=0, help="also trace the host: its N costliest ops")
    a = p.parse_args()
    dev = bench.pick_device(a)  # --device cpu: a dry run of this script (timings meaningless)
    bench_e2e._resolve(a, dev)
    n = (a.warmup + a.steps + 2) * a.batch * a.grad_accum
    rows = bench_e2e.make_rows(a, n)
    from flashbone.data import epoch_order

    order = epoch_order(n, 0, 0)
    results = []
    for m in a.methods_list:
        for v in a.modes.split(","):
            r = run(a, dev, m, v, rows, order)
            results.append(r)
            print(
                f"== {m} [{v}]: wall {r['wall_ms']:.1f} ms/step, GPU busy {r['busy_ms']:.1f} ms/step, "
                f"{r['tokens_per_s']:,.0f} tokens/s, peak {r['peak_gib']:.2f} GiB",
                flush=True,
            )
            print("   groups: " + ", ".join(f"{k} {v:.1f}" for k, v in r["groups"].items()))
            for k, ms, c in r["top"]:
                print(f"   {ms:8.2f} ms {c:5d}x  {k}")
            if r["host_top"]:
                print("   host (self CPU time per step; the profiler slows the host):")
            for k, ms, c in r["host_top"]:
                print(f"   {ms:8.2f} ms {c:5d}x  {k}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
