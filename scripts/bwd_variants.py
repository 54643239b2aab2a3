"""GPU time of bone's backward for one projection, in several orders and forms (CUDA events).

    PYTHONPATH=src python scripts/bwd_variants.py

dy is written just before each timed region (as the op before a layer's backward writes it,
so it starts partly in L2). Forms, all computing dx = dy W + tile(dy B^T), dB = s^T dy:

    addend       ds = dy B^T; c = tile(ds); dx = c + dy W (GEMM onto c); dB = s^T dy   (as of 86059d8)
    db-first     ds, then dB while dy is still in L2; then c and the GEMM
    db-f32       as db-first, dB by torch.mm(out_dtype=float32) (no cast kernel)
    padded-N     [h | ds] = dy [W | B^T]; dx = h + tile(ds) (one broadcast add); dB
    inplace-add  ds, dB; dx = dy W; dx += tile(ds) in place (broadcast add_)

Measured on the H100 machines: docs/kernel_notes.md section 10.
"""
import statistics

import torch

from flashbone.kernels import triton_kernels as K

dev, bf, t, r = "cuda", torch.bfloat16, 4096, 64


def tile(ds, n):
    return K.rank_r(None, r, v=ds, expand="tile", n=n)[1]


def f32(a, b):
    return torch.mm(a, b, out_dtype=torch.float32)


def forms(dy, w, wx, bc, s, inn):
    def addend():
        ds = dy @ bc.t()
        dx = tile(ds, inn).addmm_(dy, w)
        return dx, (s.t() @ dy).float()

    def db_first():
        ds = dy @ bc.t()
        db = (s.t() @ dy).float()
        return tile(ds, inn).addmm_(dy, w), db

    def db_f32():
        ds = dy @ bc.t()
        db = f32(s.t(), dy)
        return tile(ds, inn).addmm_(dy, w), db

    def padded_n():
        hd = dy @ wx
        dx = torch.add(hd[:, :inn].view(t, inn // r, r), hd[:, inn:].unsqueeze(1)).view(t, inn)
        return dx, f32(s.t(), dy)

    def inplace_add():
        ds = dy @ bc.t()
        db = f32(s.t(), dy)
        dx = dy @ w
        dx.view(t, inn // r, r).add_(ds.unsqueeze(1))
        return dx, db

    return {"addend": addend, "db-first": db_first, "db-f32": db_f32, "padded-N": padded_n,
            "inplace-add": inplace_add}


def main():
    shapes = [(4096, 4096), (11008, 4096), (4096, 11008)]  # (out, in): q/k/v/o, gate/up, down
    print(f"{'out x in':<14}" + "".join(f"{n:>13}" for n in forms(*[None] * 6)))
    for out, inn in shapes:
        wx = torch.randn(out, inn + r, device=dev, dtype=bf) * inn ** -0.5
        w = wx[:, :inn]
        bc = wx[:, inn:].t()
        s = torch.randn(t, r, device=dev, dtype=bf)
        src = torch.randn(t, out, device=dev, dtype=bf)
        ref = None
        row = []
        for name, fn in forms(None, w, wx, bc, s, inn).items():
            ts = []
            for i in range(25):
                dy = src + 0  # freshly written, as in a real backward
                f = forms(dy, w, wx, bc, s, inn)[name]
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                dx, db = f()
                e1.record()
                e1.synchronize()
                if i >= 5:
                    ts.append(e0.elapsed_time(e1) * 1e3)
            if ref is None:
                ref = (dx.float(), db.float())
            else:
                err = max(float((dx.float() - ref[0]).norm() / ref[0].norm()),
                          float((db.float() - ref[1]).norm() / ref[1].norm()))
                assert err < 2e-2, (name, err)
            row.append(statistics.median(ts))
        print(f"{out:>5} x {inn:<6}" + "".join(f"{v:13.1f}" for v in row))


if __name__ == "__main__":
    main()
