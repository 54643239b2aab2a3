"""Per-projection pieces of the padded weight W_ext = [W | X] (kernels/padded.py) against the
addend path, so a step-level difference can be traced to its GEMMs and passes.

    PYTHONPATH=src python scripts/padded_bench.py [--tokens 4096 --hidden 4096 --inter 11008 --r 64]

Median times (triton.testing.do_bench) per projection shape of a LLaMA layer, T tokens.
"""
import torch
from gemm_bench import ms, shape_args

from flashbone.kernels import triton_kernels as K


def us(fn):
    return 1e3 * ms(fn)


def main():
    a = shape_args()
    dev, bf, t, r = "cuda", torch.bfloat16, a.tokens, a.r
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__}  T={t} r={r}  (us)")
    for i, o in [(a.hidden, a.hidden), (a.hidden, a.inter), (a.inter, a.hidden)]:
        x = torch.randn(t, i, device=dev, dtype=bf)
        wx = torch.randn(o, i + r, device=dev, dtype=bf) * i**-0.5
        w, wc = wx[:, :i], wx[:, :i].contiguous()
        b = torch.randn(r, o, device=dev, dtype=bf) * 0.02
        pi, po = K.block_ones(i, r, bf, dev), K.block_ones(o, r, bf, dev)
        dy = torch.randn(t, o, device=dev, dtype=bf)
        xe = torch.empty(t, i + r, device=dev, dtype=bf)
        s = x @ pi

        def build():
            xe[:, :i].copy_(x)
            xe[:, i:].copy_(x @ pi)

        rows = {
            "fwd GEMM x W^T (contiguous W)": lambda: x @ wc.t(),
            "fwd GEMM x W^T (W strided in W_ext)": lambda: x @ w.t(),
            "fwd GEMM [x|s] W_ext^T (K+r)": lambda: xe @ wx.t(),
            "fwd block sum x P": lambda: x @ pi,
            "fwd build [x | xP] (copy_ + GEMM)": build,
            "fwd copy x -> xe only": lambda: xe[:, :i].copy_(x),
            "fwd extend_input (Triton, one pass)": lambda: K.extend_input(x, r),
            "fwd bone old: (sB).addmm_(x, W^T)": lambda: (s @ b).addmm_(x, w.t()),
            "bwd GEMM dy W (contiguous W)": lambda: dy @ wc,
            "bwd GEMM dy W (W strided in W_ext)": lambda: dy @ w,
            "bwd GEMM dy W_ext (N+r)": lambda: dy @ wx,
    
            "bwd bone old: ds, tile, addmm_": lambda: K.rank_r(None, r, v=dy @ b.t(), expand="tile",
                                                             n=i)[1].addmm_(dy, w),
            "bwd row old: dy P, dy W": lambda: (dy @ po, dy @ w),
        }
        print(f"## in {i} x out {o}")
        for name, fn in rows.items():
            print(f"{name:40s} {us(fn):8.1f}", flush=True)


if __name__ == "__main__":
    main()
