"""Host time of each step of one adapted projection's forward (bone, bat-row), to see where
the host spends it (each timed call starts with an empty launch queue; scripts/host_overhead.py).

    PYTHONPATH=src python scripts/host_breakdown.py

The ``layer(x + 0)`` rows time the new input's creation too (call 30); scripts/host_layer.py
makes the input before the timed region and is the one docs/kernel_notes.md section 9 uses.
"""
import cProfile
import pstats

import torch

from flashbone import kernels
from flashbone.kernels import padded
from flashbone.kernels import triton_kernels as K
from flashbone.layer import BlockAdapter, BoneLayer
from flashbone.ops import adapted_linear
from host_overhead import host_us


def main():
    dev, bf, t, k, r = "cuda", torch.bfloat16, 4096, 4096, 64
    x = torch.randn(2, t // 2, k, device=dev, dtype=bf, requires_grad=True)
    x2 = x.detach().view(t, k)
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}")
    for variant in ("bone", "bat-row"):
        base = torch.nn.Linear(k, k, bias=False, device=dev, dtype=bf).requires_grad_(False)
        layer = BoneLayer(base)
        layer.add_adapter("default", BlockAdapter(variant, r, k, k, init="random", device=dev))
        ad = layer.adapters["default"]
        w = base.weight
        layer(x)  # re-homes w
        call = ad.call(bf)
        rows = {
            "x + 0 (new input)": lambda: x + 0,
            "layer(x + 0)": lambda: layer(x + 0),
            "ad.call(bf16)": lambda: ad.call(bf),
            "adapted_linear(x + 0)": lambda: adapted_linear(x + 0, w, None, [call]),
            "kernels.supported": lambda: kernels.supported(variant, x2, w, r),
            "padded.extended": lambda: padded.extended(w, r, variant),
            "Triton kernel of the forward": (lambda: K.extend_input(x2, r)) if variant == "bone"
            else (lambda: K.row_affine_fwd(x2, call.params["B"], None)),
            "torch.zeros(T, r)": lambda: torch.zeros(t, r, device=dev),
            "GEMM x @ W^T": lambda: x2 @ w.t(),
        }
        for name, fn in rows.items():
            print(f"{variant:8s} {name:26s} {host_us(fn, 100):7.1f} us", flush=True)
        prof = cProfile.Profile()
        for _ in range(50):
            torch.cuda.synchronize()
            prof.enable()
            layer(x + 0)
            prof.disable()
        torch.cuda.synchronize()
        print(f"== {variant}: cProfile of 50 layer(x + 0), own time")
        pstats.Stats(prof).sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main()
