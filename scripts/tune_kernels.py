"""Sweep the Triton kernels' launch parameters at the bench's layer shapes (CUDA only).

    PYTHONPATH=src python scripts/tune_kernels.py [--tokens 4096 --hidden 4096 --inter 11008 --r 64]

For every kernel in ``flashbone.kernels.triton_kernels.CONFIG`` and every shape it meets in a
LLaMA-style layer, each candidate configuration is checked against PyTorch math on fresh random
inputs (relative error, or bitwise where the kernel promises it) and timed (median of
``triton.testing.do_bench``). Prints, per kernel and shape, the default's time, the best
configuration's time, and both as a share of the measured copy bandwidth; ``--json`` keeps all.
Also times the alternatives that are not launch parameters: cuBLAS (``x @ P``, ``dy @ B^T``)
against the Triton reduce, and the RMSNorm recompute in one pass against eager PyTorch.
``--only reduce,row_affine_bwd,...`` restricts the sweep. Host
time per call is not measured here (profile a step with scripts/idle_phases.py).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys

import torch
from triton.testing import do_bench

from flashbone.kernels import triton_kernels as K


def rel(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.float(), want.float()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def bench(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


class Sweep:
    def __init__(self, bw: float, only: set[str] | None = None):
        self.bw, self.rows, self.default = bw, [], copy.deepcopy(K.CONFIG)
        self.only = only

    def wanted(self, name: str) -> bool:
        return self.only is None or name in self.only

    def run(self, kernel: str, shape: str, nbytes: float, grid: dict, call, check) -> None:
        """Time ``call()`` under every config of ``grid`` (merged into the default)."""
        if not self.wanted(kernel):
            return
        keys = list(grid)
        results = []
        for values in itertools.product(*grid.values()):
            K.CONFIG[kernel] = {**self.default[kernel], **dict(zip(keys, values))}
            try:
                err = check(call())
                ms = bench(call)
            except Exception as e:  # a config the compiler rejects (registers, shared memory)
                print(f"   {kernel} {shape} {dict(zip(keys, values))}: {type(e).__name__}")
                continue
            results.append((ms, err, dict(K.CONFIG[kernel])))
        K.CONFIG[kernel] = copy.deepcopy(self.default[kernel])
        d = [r for r in results if r[2] == self.default[kernel]]
        best = min(results, key=lambda r: r[0])
        row = {
            "kernel": kernel,
            "shape": shape,
            "bytes": nbytes,
            "default_ms": d[0][0] if d else None,
            "best_ms": best[0],
            "best": best[2],
            "max_err": max(r[1] for r in results),
            "all": [(r[0], r[2]) for r in results],
        }
        self.rows.append(row)
        pct = lambda ms: 100 * nbytes / (ms * 1e-3) / self.bw  # noqa: E731
        dm = row["default_ms"]
        print(
            f"{kernel:15s} {shape:22s} default {dm * 1e3 if dm else float('nan'):7.1f} us "
            f"({pct(dm) if dm else 0:4.0f}%)  best {best[0] * 1e3:7.1f} us ({pct(best[0]):4.0f}%) "
            f"err {row['max_err']:.1e}  {best[2]}",
            flush=True,
        )

    def alt(self, name: str, shape: str, nbytes: float, fns: dict) -> None:
        if not self.wanted(name):
            return
        times = {k: bench(f) for k, f in fns.items()}
        self.rows.append({"alternative": name, "shape": shape, "ms": times})
        cells = "  ".join(
            f"{k} {v * 1e3:7.1f} us ({100 * nbytes / (v * 1e-3) / self.bw:4.0f}%)" for k, v in times.items()
        )
        print(f"{name:15s} {shape:22s} {cells}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--inter", type=int, default=11008)
    p.add_argument("--r", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="fewer configurations")
    p.add_argument("--only", default=None, help="comma list of kernels to sweep (default: all)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    dev, bf = torch.device("cuda"), torch.bfloat16
    t, r, e = a.tokens, a.r, 2
    src = torch.empty(1 << 28, dtype=torch.uint8, device=dev).random_()
    dst = torch.empty_like(src)
    bw = 2 * src.numel() / (bench(lambda: dst.copy_(src)) * 1e-3)
    src = dst = None
    print(
        f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  copy {bw / 1e12:.2f} TB/s  "
        f"T={t} hidden={a.hidden} inter={a.inter} r={r}"
    )
    sw = Sweep(bw, set(a.only.split(",")) if a.only else None)
    warps = [4, 8]
    stages = [2, 3] if not a.quick else [3]

    for k in sorted({a.hidden, a.inter}):  # block sum of a layer input (bone fwd, bat-row bwd)
        x = torch.randn(t, k, device=dev, dtype=bf)
        ref = x.float().view(t, -1, r).sum(1)
        sw.run(
            "reduce",
            f"block sum {t}x{k}",
            e * t * k,
            {"BT": [32, 64], "BK": [256, 512], "num_warps": warps},
            lambda: K.rank_r(x, r, store_v=True)[0],
            lambda v: rel(v, ref),
        )
        sw.alt(
            "block_sum",
            f"{t}x{k}",
            e * t * k,
            {"triton": lambda: K.rank_r(x, r, store_v=True), "cublas": lambda: K.block_sum(x, r)},
        )

    for o in sorted({a.hidden, a.inter}):  # bone bwd: ds = dy B^T
        dy = torch.randn(t, o, device=dev, dtype=bf)
        b = torch.randn(r, o, device=dev, dtype=bf) * 0.02
        ref = dy.float() @ b.float().t()
        sw.run(
            "reduce",
            f"dy{t}x{o} @ B^T",
            e * t * o,
            {"BT": [32, 64], "BK": [128, 256], "num_warps": warps},
            lambda: K.rank_r(dy, r, m=b.t())[0],
            lambda v: rel(v, ref),
        )
        sw.alt(
            "ds",
            f"dy{t}x{o} @ B^T",
            e * t * o,
            {"triton": lambda: K.rank_r(dy, r, m=b.t()), "cublas": lambda: dy @ b.t()},
        )

    v = torch.randn(t, r, device=dev, dtype=bf)
    for n in sorted({a.hidden, a.inter}):  # addends: tile (bone bwd, bat-row fwd), s B (bone fwd)
        b = torch.randn(r, n, device=dev, dtype=bf) * 0.02
        ref_m = v.float() @ b.float()
        ref_t = v.float().repeat(1, n // r)
        g = {"BT": [32, 64], "BN": [128, 256], "num_warps": warps}
        sw.run(
            "expand",
            f"matmul {t}x{n}",
            e * t * n,
            g,
            lambda: K.rank_r(None, r, v=v, expand="matmul", e=b, n=n)[1],
            lambda o: rel(o, ref_m),
        )
        sw.run(
            "expand",
            f"tile {t}x{n}",
            e * t * n,
            g,
            lambda: K.rank_r(None, r, v=v, expand="tile", n=n)[1],
            lambda o: rel(o, ref_t),
        )

    for k in sorted({a.hidden, a.inter}):  # bat-row
        x = torch.randn(t, k, device=dev, dtype=bf)
        am = torch.randn(k // r, r, r, device=dev) * 0.02  # the float32 master, cast on load
        xb = x.float().view(t, -1, r)
        zref = (xb + torch.einsum("tbk,bjk->tbj", xb, am.float())).reshape(t, k)
        sw.run(
            "row_affine_fwd",
            f"{t}x{k}",
            e * 2 * t * k,
            {"BT": [32, 64, 128], "PER_SM": [1, 2, 4, 8], "num_warps": warps, "num_stages": stages},
            lambda: K.row_affine_fwd(x, am, None)[0],
            lambda z: rel(z, zref),
        )
        u = torch.randn(t, k, device=dev, dtype=bf)
        gs = torch.randn(t, r, device=dev, dtype=bf)
        du = u.float().view(t, -1, r) + gs.float()[:, None, :]
        dxref = (u.float().view(t, -1, r) + torch.einsum("tbj,bjk->tbk", du, am.float())).reshape(t, k)
        sw.run(
            "row_affine_bwd",
            f"{t}x{k}",
            e * 3 * t * k,
            {"BT": [32, 64, 128], "PER_SM": [1, 2, 4, 8], "num_warps": warps, "num_stages": stages},
            lambda: K.row_affine_bwd(u, x, gs, am, None, True, True, False)[0],
            lambda dx: rel(dx, dxref),
        )

    for o, i in sorted({(a.hidden, a.hidden), (a.inter, a.hidden), (a.hidden, a.inter)}):  # bat
        w = torch.randn(o, i, device=dev, dtype=bf) * 0.02
        bb = torch.randn(o // r, r, r, device=dev, dtype=bf) * 0.02
        wb = w.float().view(o // r, r, i // r, r)
        wref = wb + torch.einsum("aibj,ajk->aibk", wb, bb.float()) + bb.float()[:, :, None, :]
        sw.run(
            "weight_build",
            f"W {o}x{i}",
            e * 2 * o * i,
            {"num_warps": warps, "num_stages": stages},
            lambda: K.weight_build(w, bb, False),
            lambda x: rel(x, wref.reshape(o, i)),
        )
        gg = torch.randn(o, i, device=dev, dtype=bf)
        gb = gg.float().view(o // r, r, i // r, r)
        dref = torch.einsum("aibj,aibk->ajk", wb, gb) + gb.sum(2)
        sw.run(
            "weight_grad",
            f"W {o}x{i}",
            e * 2 * o * i,
            {"num_warps": warps, "num_stages": stages},
            lambda: K.weight_grad(w, gg, r, False),
            lambda d: rel(d, dref),
        )

    for k in sorted({a.hidden}):  # RMSNorm replay: w * (h * rsqrt).to(bf16)
        h = torch.randn(4, t // 4, k, device=dev)
        rs = torch.rand(4, t // 4, 1, device=dev) + 0.5
        wn = torch.randn(k, device=dev, dtype=bf)
        ref = wn * (h * rs).to(bf)
        sw.run(
            "mul_cast_mul",
            f"{t}x{k}",
            (4 + 2) * t * k,
            {"BR": [4, 16], "BC": [1024, 2048], "num_warps": warps},
            lambda: K.mul_cast_mul(wn, h, rs),
            lambda o: 0.0 if torch.equal(o, ref) else 1.0,
        )
        sw.alt(
            "rmsnorm replay",
            f"{t}x{k}",
            (4 + 2) * t * k,
            {"eager": lambda: wn * (h * rs).to(bf), "fused": lambda: K.mul_cast_mul(wn, h, rs)},
        )

    bad = [r for r in sw.rows if r.get("max_err", 0) > 1e-2]
    print(f"# {len(sw.rows)} rows; configurations over 1e-2 error: {len(bad)}")
    if a.json:
        json.dump({"copy_bytes_per_s": bw, "rows": sw.rows}, open(a.json, "w"), indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
