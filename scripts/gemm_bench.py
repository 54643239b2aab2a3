"""The TMA GEMM with the rank-r slab (kernels/tma_gemm.py) against cuBLAS with a written addend.

    PYTHONPATH=src python scripts/gemm_bench.py [--tokens 4096 --hidden 4096 --inter 11008 --r 64]

Per projection shape of a LLaMA layer and per use (bone forward ``x W^T + s B``, bone backward
``dy W + tile(ds)``, bat-row forward ``z W^T + tile(v)``): relative error against float32, and
median times of (1) cuBLAS alone (no adapter: the floor's GEMM), (2) what runs by default
(a kernel writes the addend, cuBLAS accumulates onto it), (3) the TMA GEMM (autotuned).
"""
import argparse

import torch
from triton.testing import do_bench

from flashbone.kernels import tma_gemm
from flashbone.kernels import triton_kernels as K


def ms(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def rel(a, b):
    return float((a.float() - b).norm() / b.norm())


def shape_args() -> argparse.Namespace:
    """``--tokens --hidden --inter --r``: the LLaMA layer shapes to time (scripts share them)."""
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--inter", type=int, default=11008)
    p.add_argument("--r", type=int, default=64)
    return p.parse_args()


def main():
    a = shape_args()
    dev, bf, t, r = "cuda", torch.bfloat16, a.tokens, a.r
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}  T={t} r={r}")
    print(f"{'use':10s} {'in x out':>12s} {'cuBLAS alone':>13s} {'default':>9s} {'TMA':>9s} "
          f"{'TMA/default':>11s} {'err':>8s}  config")
    totals = {"alone": 0.0, "default": 0.0, "tma": 0.0}
    for i, o, count in [(a.hidden, a.hidden, 4), (a.hidden, a.inter, 2), (a.inter, a.hidden, 1)]:
        x = torch.randn(t, i, device=dev, dtype=bf)
        w = torch.randn(o, i, device=dev, dtype=bf) * i**-0.5
        s = torch.randn(t, r, device=dev, dtype=bf)
        b = torch.randn(r, o, device=dev, dtype=bf) * 0.02
        bt = b.t().contiguous()
        dy = torch.randn(t, o, device=dev, dtype=bf)
        ds = torch.randn(t, r, device=dev, dtype=bf)
        cases = {
            "bone fwd": (lambda: x @ w.t(),
                         lambda: (s @ b).addmm_(x, w.t()),
                         lambda: tma_gemm.bone_gemm(x, w, s, k_major=True, bt=bt),
                         x.float() @ w.float().t() + s.float() @ b.float()),
            "bone bwd": (lambda: dy @ w,
                         lambda: K.rank_r(None, r, v=ds, expand="tile", n=i)[1].addmm_(dy, w),
                         lambda: tma_gemm.bone_gemm(dy, w, ds, k_major=False),
                         dy.float() @ w.float() + ds.float().repeat(1, i // r)),
            "row fwd": (lambda: x @ w.t(),
                        lambda: K.rank_r(None, r, v=s, expand="tile", n=o)[1].addmm_(x, w.t()),
                        lambda: tma_gemm.bone_gemm(x, w, s, k_major=True),
                        x.float() @ w.float().t() + s.float().repeat(1, o // r)),
        }
        for use, (alone, default, tma, ref) in cases.items():
            err = rel(tma(), ref)
            t_alone, t_def, t_tma = ms(alone), ms(default), ms(tma)
            if use != "row fwd":
                totals["alone"] += count * t_alone
                totals["default"] += count * t_def
                totals["tma"] += count * t_tma
            cfg = tma_gemm._bone_gemm_kernel.best_config
            print(f"{use:10s} {i:5d}x{o:<6d} {t_alone*1e3:10.1f} us {t_def*1e3:6.1f} us "
                  f"{t_tma*1e3:6.1f} us {t_tma/t_def:11.3f} {err:8.1e}  {cfg}", flush=True)
    print(f"bone per layer (fwd + dx GEMMs, 7 projections): cuBLAS alone {totals['alone']:.3f} ms, "
          f"default {totals['default']:.3f} ms, TMA {totals['tma']:.3f} ms")


if __name__ == "__main__":
    main()
