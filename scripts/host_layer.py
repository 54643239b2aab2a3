"""Host time of one adapted 4096 x 4096 bone projection's forward (4k tokens), whole and in
pieces, with the input made before the timed region (fresh: a new tensor per call, so the
shared [x | xP] copy is rebuilt; same: the cache hit of k/v after q).

    PYTHONPATH=src python scripts/host_layer.py

Each timed call starts from an empty launch queue (torch.cuda.synchronize before it).
Measured on the H100 machines: docs/kernel_notes.md section 9.
"""
import statistics
import time

import torch

from flashbone.kernels import padded
from flashbone.kernels import triton_kernels as K
from flashbone.layer import BlockAdapter, BoneLayer
from flashbone.ops import adapted_linear

dev, bf, t, k, r = "cuda", torch.bfloat16, 4096, 4096, 64
x = torch.randn(2, t // 2, k, device=dev, dtype=bf, requires_grad=True)
base = torch.nn.Linear(k, k, bias=False, device=dev, dtype=bf).requires_grad_(False)
layer = BoneLayer(base)
layer.add_adapter("default", BlockAdapter("bone", r, k, k, init="random", device=dev))
layer(x)


def host(make, fn, n=50):
    ts = []
    for _ in range(n + 5):
        xi = make()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = fn(xi)
        ts.append(time.perf_counter() - t0)
        del y, xi
    return statistics.median(ts[5:]) * 1e6


fresh = lambda: x + 0  # noqa: E731
same = lambda: x  # noqa: E731
print(f"layer, fresh input (dropped each call)   {host(fresh, layer):7.1f} us")
print(f"layer, same input (cache hit)            {host(same, layer):7.1f} us")
print(f"frozen, fresh input                      {host(fresh, base):7.1f} us")
x2 = x.detach().view(t, k)
print(f"K.extend_input, same input               {host(lambda: x2, lambda v: K.extend_input(v, r)):7.1f} us")
print(f"K.extend_input, fresh input              {host(lambda: x2 + 0, lambda v: K.extend_input(v, r)):7.1f} us")
print(f"torch.empty(T, in + r)                   {host(lambda: None, lambda v: torch.empty(t, k + r, device=dev, dtype=bf)):7.1f} us")
padded.VARIANTS = ()
print(f"layer unpadded, fresh input              {host(fresh, layer):7.1f} us")
print(f"layer unpadded, same input               {host(same, layer):7.1f} us")
print("memory allocated GiB", torch.cuda.memory_allocated() / 2**30, "reserved", torch.cuda.memory_reserved() / 2**30)

padded.VARIANTS = ("bone", "bat-row")
from flashbone.kernels import functions as Fn  # noqa: E402
from flashbone.kernels import replay  # noqa: E402

w = base.weight
call = layer.adapters["default"].call(bf)
b32 = call.master("B")
wx = padded.extended(w, r, "bone")
print("pieces, fresh 2-D input each call:")
print(f"  has_extended_input (miss)     {host(lambda: x2 + 0, lambda v: Fn.has_extended_input(v, r)):7.1f} us")
print(f"  shared_extended_input (miss)  {host(lambda: x2 + 0, lambda v: Fn.shared_extended_input(v, r)):7.1f} us")
print(f"  replay.store                  {host(lambda: x2 + 0, lambda v: replay.store(v, 'probe', None)):7.1f} us")
print(f"  padded.extended               {host(lambda: None, lambda v: padded.extended(w, r, 'bone')):7.1f} us")
key = object()
print(f"  fill_ (cast + copy)           {host(lambda: object(), lambda k: padded.fill_(w, wx, b32.t(), key=k)):7.1f} us")
xe, s = K.extend_input(x2, r)
print(f"  GEMM xe @ wx.t()              {host(lambda: None, lambda v: xe @ wx.t()):7.1f} us")
print(f"  GEMM x @ w.t() (w strided)    {host(lambda: None, lambda v: x2 @ w.t()):7.1f} us")
xr = x2.detach().requires_grad_()
b32r = b32
print(f"  BonePaddedCuda.apply (miss)   {host(lambda: xr + 0, lambda v: Fn.BonePaddedCuda.apply(v, w, None, b32r, r, wx)):7.1f} us")
print(f"  BonePaddedCuda.apply (hit)    {host(lambda: xr, lambda v: Fn.BonePaddedCuda.apply(v, w, None, b32r, r, wx)):7.1f} us")
print(f"  adapted_linear padded (miss)  {host(lambda: xr + 0, lambda v: adapted_linear(v, w, None, [call])):7.1f} us")
