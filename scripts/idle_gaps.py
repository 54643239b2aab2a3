"""Where the GPU waits during a training step: idle gaps between kernels, and the CUDA runtime
calls that can stall the host (torch.profiler, CPU + CUDA activity).

    PYTHONPATH=src python scripts/idle_gaps.py --methods floor,bone [bench flags]

Uses the bench's model and wrapping (flashbone.bench); 3 warm-up steps, 2 profiled steps. Per
method: wall time (first kernel start to last kernel end), GPU busy (union of kernels), idle,
the largest gaps with the kernels on either side, and the runtime calls (mallocs, syncs) seen.
"""
import argparse
import gc
import json
import os
import sys
import tempfile
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from flashbone import bench


def _gaps(trace: dict, top: int):
    ev = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    gpu = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in ev
                 if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"))
    runtime = Counter()
    runtime_us = Counter()
    for e in ev:
        if e.get("cat") == "cuda_runtime":
            name = e["name"]
            if any(k in name for k in ("Malloc", "Free", "Synchronize", "Memcpy", "EventQuery")):
                runtime[name] += 1
                runtime_us[name] += e["dur"]
    busy, end, prev, gaps = 0.0, None, "", []
    for s, t, name in gpu:  # sorted by start: merge overlapping kernels into busy intervals
        if end is None or s >= end:
            if end is not None and s > end:
                gaps.append((s - end, prev, name))
            busy += t - s
            end, prev = t, name
        elif t > end:
            busy += t - end
            end, prev = t, name
    wall = gpu[-1][1] - gpu[0][0]
    gaps.sort(key=lambda g: -g[0])
    return wall, busy, gaps[:top], sum(g[0] for g in gaps), runtime, runtime_us


def main() -> int:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args()
    dev, dtype = bench.resolve(a)
    for m in bench.parse_methods(a.methods):
        _, step = bench.training_step(m, a, dev, dtype)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
        path = os.path.join(tempfile.mkdtemp(), "trace.json")
        prof.export_chrome_trace(path)
        wall, busy, top, idle, runtime, runtime_us = _gaps(json.load(open(path)), a.top)
        print(f"== {m}: per step wall {wall / 2e3:.2f} ms, GPU busy {busy / 2e3:.2f} ms, "
              f"idle {idle / 2e3:.2f} ms (profiler on: absolute times run long)")
        for g, before, after in top:
            print(f"   gap {g:8.1f} us  after {before[:55]:55s} before {after[:55]}")
        for name, n in runtime.most_common():
            print(f"   runtime {name}: {n // 2} per step, {runtime_us[name] / 2e3:.2f} ms")
        step = None  # frees the model and optimizer before the next method
        gc.collect()
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
