"""Host cost of the pieces of one adapted projection, and cuBLAS against Triton for the addends.

    PYTHONPATH=src python scripts/host_overhead.py

Host times: the median over calls of the time to *queue* one call, each started with an empty
launch queue, so they are the Python + launch cost a training step pays per call. (Call 9's
log, bench_results/run9_host.log, came from an earlier version that queued calls back to back;
its fwd+bwd rows (about 990 us for bone) track the GPU time, not the host's.)
GPU times: triton.testing.do_bench medians.
"""
import statistics
import time

import torch
from triton.testing import do_bench

from flashbone.kernels import triton_kernels as K
from flashbone.layer import BlockAdapter, BoneLayer


def host_us(fn, n=200):
    """Median host time to queue one call, starting each call with an empty launch queue (a
    loop without synchronising lets the host run ahead until the queue is full, and then it
    times the GPU instead: kernel notes, section 8)."""
    for _ in range(5):
        fn()
    ts = []
    for _ in range(n):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return statistics.median(ts) * 1e6


def gpu_us(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def main():
    dev, bf, t, r = "cuda", torch.bfloat16, 4096, 64
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}")
    small = torch.randn(64, 64, device=dev, dtype=bf)
    v = torch.randn(t, r, device=dev, dtype=bf)
    print(f"host  torch.empty            {host_us(lambda: torch.empty(t, r, device=dev)):6.1f} us")
    print(f"host  torch.zeros            {host_us(lambda: torch.zeros(t, r, device=dev)):6.1f} us")
    print(f"host  torch.mm 64x64         {host_us(lambda: small @ small):6.1f} us")
    print(f"host  tensor.to(bf16) small  {host_us(lambda: small.float().to(bf)):6.1f} us (2 ops)")
    print(f"host  triton expand launch   {host_us(lambda: K.rank_r(None, r, v=v[:64], expand='tile', n=64)):6.1f} us")
    for k in (4096, 11008):
        x = torch.randn(t, k, device=dev, dtype=bf)
        p = torch.zeros(k, r, device=dev, dtype=bf)
        p[torch.arange(k), torch.arange(k) % r] = 1
        b = torch.randn(r, k, device=dev, dtype=bf)
        rows = [
            ("block sum: triton rows", lambda: K.rank_r(x, r, store_v=True)),
            ("block sum: cuBLAS x @ P", lambda: x @ p),
            ("s B: triton expand", lambda: K.rank_r(None, r, v=v, expand="matmul", e=b, n=k)),
            ("s B: cuBLAS s @ B", lambda: v @ b),
            ("tile: triton expand", lambda: K.rank_r(None, r, v=v, expand="tile", n=k)),
            ("tile: cuBLAS ds @ P^T", lambda: v @ p.t()),
        ]
        for name, fn in rows:
            print(f"{k:6d} {name:26s} GPU {gpu_us(fn):6.1f} us  host {host_us(fn, 50):6.1f} us")
    k = 4096
    x = torch.randn(2, t // 2, k, device=dev, dtype=bf, requires_grad=True)
    dy = torch.randn(2, t // 2, k, device=dev, dtype=bf)
    for variant in ("bone", "bat-row", "bat"):
        base = torch.nn.Linear(k, k, bias=False, device=dev, dtype=bf).requires_grad_(False)
        layer = BoneLayer(base)
        layer.add_adapter("default", BlockAdapter(variant, r, k, k, init="random", device=dev))
        ad = layer.adapters["default"]
        print(f"{variant:8s} host ad.call(bf16)     {host_us(lambda: ad.call(bf)):6.1f} us")
        print(f"{variant:8s} host layer forward     {host_us(lambda: layer(x), 50):6.1f} us (input seen)")
        print(f"{variant:8s} host layer fwd, new x  {host_us(lambda: layer(x + 0), 50):6.1f} us (incl. x + 0)")
        print(f"{variant:8s} host layer fwd+bwd     {host_us(lambda: layer(x).backward(dy), 50):6.1f} us")
    base = torch.nn.Linear(k, k, bias=False, device=dev, dtype=bf).requires_grad_(False)
    print(f"frozen   host forward           {host_us(lambda: base(x), 50):6.1f} us")
    print(f"         host x + 0             {host_us(lambda: x + 0, 50):6.1f} us")
    print(f"frozen   host fwd+bwd           {host_us(lambda: base(x).backward(dy), 50):6.1f} us")

if __name__ == "__main__":
    main()
