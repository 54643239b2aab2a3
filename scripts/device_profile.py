"""Where a training step's GPU time goes: top CUDA kernels per method (torch.profiler).

    PYTHONPATH=src python scripts/device_profile.py --methods floor,bone,bat-row,bat [bench flags]

Uses the bench's model and wrapping (flashbone.commands.bench); 3 warm-up steps, 2 profiled steps;
prints per method the GPU time per step and the kernels that take most of it.
"""

import argparse
import gc
import json
import sys

import torch
from torch.profiler import ProfilerActivity, profile

from flashbone.commands import bench


def main() -> int:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    dev, dtype = bench.resolve(a)
    result = {}
    for m in bench.parse_methods(a.methods):
        _, step = bench.training_step(m, a, dev, dtype)
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(2):
                step()
            torch.cuda.synchronize()
        ev = [e for e in prof.key_averages() if e.self_device_time_total > 0]
        ev.sort(key=lambda e: -e.self_device_time_total)
        total = sum(e.self_device_time_total for e in ev) / 2 / 1e3
        rows = [(e.key[:90], e.self_device_time_total / 2 / 1e3, e.count // 2) for e in ev]
        result[m] = {"gpu_ms_per_step": total, "top": rows}
        print(f"== {m}: GPU busy {total:.1f} ms/step")
        for k, ms, n in rows[: a.top]:
            print(f"   {ms:8.2f} ms {n:5d}x  {k}")
        step = None  # frees the model and optimizer before the next method
        gc.collect()
        torch.cuda.empty_cache()
    if a.out:
        json.dump(result, open(a.out, "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
