"""Where the host time of one adapted projection's backward goes (CUDA; a diagnostic).

    PYTHONPATH=src python scripts/sync_probe.py

1. one forward + backward under ``torch.cuda.set_sync_debug_mode("warn")``: any hidden
   host-device synchronisation prints its stack;
2. the host time to queue 10 backwards of already-queued forwards;
3. the CPU profiler's table for those backwards (which ATen ops and launches cost host time).
"""
import time
import traceback
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from flashbone.layer import BlockAdapter
from flashbone.ops import adapted_linear

dev, bf, t, r, k = "cuda", torch.bfloat16, 4096, 64, 4096
x = torch.randn(t, k, device=dev, dtype=bf, requires_grad=True)
w = torch.randn(k, k, device=dev, dtype=bf) * k**-0.5
dy = torch.randn(t, k, device=dev, dtype=bf)


def show(msg, *_args, **_kw):
    print("SYNC:", msg, "\n", "".join(traceback.format_stack()[-12:-1]))


warnings.showwarning = show
warnings.simplefilter("always")
for variant in ("bone", "bat-row", "bat"):
    ad = BlockAdapter(variant, r, k, k, init="random", device=dev)
    for _ in range(3):
        adapted_linear(x, w, None, [ad.call(bf)]).backward(dy)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode(1)
    adapted_linear(x, w, None, [ad.call(bf)]).backward(dy)
    torch.cuda.set_sync_debug_mode(0)
    ys = [adapted_linear(x, w, None, [ad.call(bf)]) for _ in range(10)]
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for y in ys:
            y.backward(dy)
        host = (time.perf_counter() - t0) / 10
        torch.cuda.synchronize()
    print(f"{variant}: host time to queue one backward {host * 1e6:.0f} us (under the profiler)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
