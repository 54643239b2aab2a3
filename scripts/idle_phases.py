"""Where in a training step the GPU waits: idle time split into forward, backward and optimizer,
from a CUDA-only profile (no CPU tracing, so host speed is close to unprofiled), plus the host
time of each phase measured without the profiler.

    PYTHONPATH=src python scripts/idle_phases.py --methods floor,bone,bat-row [bench flags]
        [--top N]    also each method's N costliest kernels (GPU us per step, by name)

Phases are cut at the first cross-entropy backward kernel (forward -> backward) and the first
optimizer kernel (multi_tensor_apply / fused AdamW) of each step. Measured on the H100 machines:
docs/kernel_notes.md.
"""

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from flashbone.commands import bench


def _kernels(path: str) -> list[tuple[float, float, str]]:
    ev = json.load(open(path))["traceEvents"]
    return sorted(
        (e["ts"], e["ts"] + e["dur"], e["name"])
        for e in ev
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    )


def _phase_idle(ks, steps: int) -> dict[str, float]:
    """Idle microseconds per phase, summed over the profiled steps."""
    idle = {"forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    phase, end = "forward", None
    for s, t, name in ks:
        low = name.lower()
        if phase == "forward" and "nll_loss" in low and "backward" in low:
            phase = "backward"
        elif phase == "backward" and ("multi_tensor_apply" in low or "adam" in low):
            phase = "optimizer"
        elif phase != "forward" and "gather" in low:
            phase = "forward"  # the next step's embedding lookup
        if end is not None and s > end:
            idle[phase] += s - end
        end = t if end is None else max(end, t)
    return {k: v / steps / 1e3 for k, v in idle.items()}


def main() -> int:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    p.add_argument("--top", type=int, default=0, help="print each method's N costliest kernels")
    a = p.parse_args()
    dev, dtype = bench.resolve(a)
    print(
        f"{'method':<12}{'wall ms':>9}{'busy':>8}{'idle fwd':>10}{'bwd':>7}{'opt':>7}"
        f"{'host fwd':>10}{'bwd':>7}{'opt':>7}"
    )
    for m in bench.parse_methods(a.methods):
        model, step = bench.training_step(m, a, dev, dtype)
        for _ in range(3):
            step()
        # host time of each phase (no profiler), the step synchronised before it starts
        opt_params = [q for q in model.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(opt_params, lr=1e-5, fused=True) if opt_params else None
        ids = torch.randint(0, a.vocab, (a.batch, a.seq), device=dev)
        hosts = []
        for _ in range(8):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss = model(input_ids=ids, labels=ids).loss
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            if opt is not None:
                opt.step()
                opt.zero_grad(set_to_none=True)
            t3 = time.perf_counter()
            hosts.append((t1 - t0, t2 - t1, t3 - t2))
        hf, hb, ho = (statistics.median(h[i] for h in hosts[2:]) * 1e3 for i in range(3))
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
        path = os.path.join(tempfile.mkdtemp(), "trace.json")
        prof.export_chrome_trace(path)
        ks = _kernels(path)
        wall = (ks[-1][1] - ks[0][0]) / 2e3
        busy, end = 0.0, None
        for s, t, _ in ks:
            busy += max(0.0, t - max(s, end)) if end is not None else t - s
            end = t if end is None else max(end, t)
        idle = _phase_idle(ks, 2)
        print(
            f"{m:<12}{wall:9.2f}{busy / 2e3:8.2f}{idle['forward']:10.2f}{idle['backward']:7.2f}"
            f"{idle['optimizer']:7.2f}{hf:10.2f}{hb:7.2f}{ho:7.2f}"
        )
        if a.top:
            per: dict[str, list[float]] = {}
            for s, t, name in ks:
                per.setdefault(name[:90], []).append(t - s)
            for name, ds in sorted(per.items(), key=lambda kv: -sum(kv[1]))[: a.top]:
                print(f"    {sum(ds) / 2:9.1f} us/step {len(ds) // 2:5d} calls  {name}")
        model = step = opt = None
        gc.collect()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
