"""Host time to queue one adapted 4096 x 4096 projection's forward and its backward (4k tokens),
against the frozen layer: what the GPU waits for where a step is host-bound.

    PYTHONPATH=src python scripts/host_fwd_bwd.py [variant ...]     (default: bone bat-row)

Each timed region starts from an empty launch queue (torch.cuda.synchronize before it); the
input is a fresh tensor each time (the q_proj case: nothing cached for it yet). Medians of 50.
Measured on the H100 machines: docs/kernel_notes.md section 10.
"""
import statistics
import sys
import time

import torch

from flashbone.layer import BlockAdapter, BoneLayer

dev, bf, t, k, r = "cuda", torch.bfloat16, 4096, 4096, 64
variants = sys.argv[1:] or ["bone", "bat-row"]
x0 = torch.randn(2, t // 2, k, device=dev, dtype=bf)
g = torch.randn(2, t // 2, k, device=dev, dtype=bf)


def times(layer, n=50):
    fwd, bwd = [], []
    for i in range(n + 5):
        x = (x0 + 0).requires_grad_()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = layer(x)
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        y.backward(g)
        t3 = time.perf_counter()
        torch.cuda.synchronize()
        if i >= 5:
            fwd.append(t1 - t0)
            bwd.append(t3 - t2)
        del x, y
    return statistics.median(fwd) * 1e6, statistics.median(bwd) * 1e6


frozen = torch.nn.Linear(k, k, bias=False, device=dev, dtype=bf).requires_grad_(False)
print(f"{'layer':<10}{'fwd us':>9}{'bwd us':>9}")
f, b = times(frozen)
print(f"{'frozen':<10}{f:9.1f}{b:9.1f}")
for v in variants:
    base = torch.nn.Linear(k, k, bias=False, device=dev, dtype=bf).requires_grad_(False)
    layer = BoneLayer(base)
    layer.add_adapter("default", BlockAdapter(v, r, k, k, init="random", device=dev))
    f, b = times(layer)
    print(f"{v:<10}{f:9.1f}{b:9.1f}")
