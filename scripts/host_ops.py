"""The ATen and CUDA-runtime calls one adapted projection's forward makes on the host, with
their CPU time (torch.profiler, CPU activity; each call starts from an empty launch queue).

    PYTHONPATH=src python scripts/host_ops.py [--variant bone] [--seen]
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from flashbone.layer import BlockAdapter, BoneLayer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="bone")
    p.add_argument("--calls", type=int, default=20)
    a = p.parse_args()
    dev, bf, t, k, r = "cuda", torch.bfloat16, 4096, 4096, 64
    x = torch.randn(2, t // 2, k, device=dev, dtype=bf, requires_grad=True)
    base = torch.nn.Linear(k, k, bias=False, device=dev, dtype=bf).requires_grad_(False)
    layer = BoneLayer(base)
    layer.add_adapter("default", BlockAdapter(a.variant, r, k, k, init="random", device=dev))
    for _ in range(5):
        layer(x + 0)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(a.calls):
            torch.cuda.synchronize()
            layer(x + 0)
        torch.cuda.synchronize()
    print(f"# {a.variant}: {a.calls} calls of layer(x + 0); CPU times are totals over the calls")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=28, max_name_column_width=60))


if __name__ == "__main__":
    main()
