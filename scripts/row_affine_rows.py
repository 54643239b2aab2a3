"""bat-row's padded passes, before and after the fifth session's changes (CUDA only):

    forward   split   zeroed float32 vsum, the block-split kernel (atomics), vsum copied
                      into the last r columns of [z | vsum]                 (3 launches)
              rows    one program owns whole rows and stores vsum there     (1 launch)
    backward  add     a sibling's dx, then this layer's into a new buffer and dx.add_()
              acc     the kernel adds this layer's dx into the sibling's    (1 launch)

GPU time by do_bench (median, us) at T tokens, r = 64, for the launch parameters swept here,
and host time per call (small T, so the GPU never holds the host back).

    PYTHONPATH=src python scripts/row_affine_rows.py [--ncu] [--bwd | --fwd | --product]

``--ncu`` runs each kernel a few times only, for ``ncu -k regex:row_affine``; ``--bwd``
skips the forward sweep, ``--fwd`` the backward one; ``--product`` times the backward with its input formed as a
product (down_proj) against the product's own pass.
Measured on the H100 machines: docs/kernel_notes.md section 11.
"""
import itertools
import sys
import time

import torch
from triton.testing import do_bench

from flashbone.kernels import triton_kernels as K

DEV, BF, R = "cuda", torch.bfloat16, 64
ROWS = K.CONFIG["row_affine_rows"]


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def inputs(t, inn):
    x = torch.randn(t, inn, device=DEV, dtype=BF)
    a = torch.randn(inn // R, R, R, device=DEV) * 0.02
    ze = torch.empty(t, inn + R, device=DEV, dtype=BF)
    return x, a, ze


def fwd(x, a, ze, min_t):
    ROWS["MIN_T"] = min_t
    inn = x.shape[1]
    return lambda: K.row_affine_fwd(x, a, None, z=ze[:, :inn], vsum=ze[:, inn:])


def bwd_pair(t, inn):
    x = torch.randn(t, inn, device=DEV, dtype=BF)
    a = torch.randn(inn // R, R, R, device=DEV) * 0.02
    hg = torch.randn(t, inn + R, device=DEV, dtype=BF)
    h, g = hg[:, :inn], hg[:, inn:]
    dx0 = torch.randn(t, inn, device=DEV, dtype=BF)
    grads = torch.zeros(1, inn // R, R, R, device=DEV)

    def add():
        d = dx0.clone()
        return d.add_(K.row_affine_bwd(h, x, g, a, None, True, True, False, grads)[0])

    def acc():
        d = dx0.clone()
        return K.row_affine_bwd(h, x, g, a, None, True, True, False, grads, d)[0]

    return add, acc, lambda: dx0.clone()


def main():
    t = 4096
    if "--product" in sys.argv:  # down_proj: the input silu(gate) * up, recomputed or formed
        for inn in (11008,):
            x1, x2 = (torch.randn(t, inn, device=DEV, dtype=BF) for _ in range(2))
            a = torch.randn(inn // R, R, R, device=DEV) * 0.02
            hg = torch.randn(t, inn + R, device=DEV, dtype=BF)
            h, g = hg[:, :inn], hg[:, inn:]
            grads = torch.zeros(1, inn // R, R, R, device=DEV)
            eager = do_bench(lambda: K.row_affine_bwd(h, x1 * x2, g, a, None, True, True, False,
                                                      grads), return_mode="median") * 1e3
            fused = do_bench(lambda: K.row_affine_bwd(h, x1, g, a, None, True, True, False,
                                                      grads, x2=x2), return_mode="median") * 1e3
            mul = do_bench(lambda: x1 * x2, return_mode="median") * 1e3
            print(f"{inn:>6} backward, x = x1 * x2: mul {mul:.1f} + kernel = {eager:.1f} us, "
                  f"formed in the kernel {fused:.1f} us")
        return
    if "--ncu" in sys.argv:
        for inn in (4096, 11008):
            x, a, ze = inputs(t, inn)
            for min_t in (1 << 30, 0):
                for _ in range(3):
                    fwd(x, a, ze, min_t)()
            add, acc, _ = bwd_pair(t, inn)
            for _ in range(3):
                add(), acc()
        torch.cuda.synchronize()
        return
    print(f"{'in':>6} {'forward':<34} {'us':>8} {'rel err':>9}")
    for inn in () if "--bwd" in sys.argv else (4096, 11008):
        x, a, ze = inputs(t, inn)
        fwd(x, a, ze, 1 << 30)()
        ref = ze.clone()
        base = do_bench(fwd(x, a, ze, 1 << 30), return_mode="median") * 1e3
        print(f"{inn:>6} {'split + zeros + copy':<34} {base:>8.1f}")
        best = None
        for bt, pairs, warps, stages in itertools.product((16, 32), (0, 1), (4, 8), (3, 4, 5, 6)):
            ROWS.update(BT=bt, PAIRS=pairs, num_warps=warps, num_stages=stages)
            ze.zero_()
            fwd(x, a, ze, 0)()
            err = rel(ze, ref)
            us = do_bench(fwd(x, a, ze, 0), return_mode="median") * 1e3
            print(f"{inn:>6} rows BT={bt} PAIRS={pairs} warps={warps} stages={stages:<3} "
                  f"{us:>8.1f} {err:>9.1e}")
            assert err < 1e-2, err
            if best is None or us < best[0]:
                best = (us, bt, pairs, warps, stages)
        print(f"{inn:>6} best rows {best}: {best[0] / base:.3f} of split")
        a16 = a.to(BF)  # A cast beforehand: is the per-step cast of float32 A the cost?
        for bt, pairs, warps, stages in itertools.product((16, 32), (0, 1), (4, 8), (3, 4, 6)):
            ROWS.update(BT=bt, PAIRS=pairs, num_warps=warps, num_stages=stages)
            us = do_bench(fwd(x, a16, ze, 0), return_mode="median") * 1e3
            print(f"{inn:>6} rows bf16-A BT={bt} PAIRS={pairs} warps={warps} stages={stages:<3} "
                  f"{us:>8.1f}")
    ROWS.update(BT=32, PAIRS=0, num_warps=4, num_stages=6)
    bwd_cfg = dict(K.CONFIG["row_affine_bwd"])
    print(f"\n{'in':>6} {'backward kernel alone, us':<40} {'plain':>7} {'acc':>7} {'fit/SM':>7}")
    for inn in () if "--fwd" in sys.argv else (4096, 11008):
        x = torch.randn(t, inn, device=DEV, dtype=BF)
        a = torch.randn(inn // R, R, R, device=DEV) * 0.02
        hg = torch.randn(t, inn + R, device=DEV, dtype=BF)
        h, g = hg[:, :inn], hg[:, inn:]
        dx = torch.empty(t, inn, device=DEV, dtype=BF)
        grads = torch.zeros(1, inn // R, R, R, device=DEV)
        ref = K.row_affine_bwd(h, x, g, a, None, True, True, False)
        for bt, warps, stages in itertools.product((32, 64), (4, 8), (2, 3, 4)):
            K.CONFIG["row_affine_bwd"].update(BT=bt, num_warps=warps, num_stages=stages)
            got = K.row_affine_bwd(h, x, g, a, None, True, True, False)
            errs = [rel(p, q) for p, q in zip(got[:2], ref[:2])]
            assert max(errs) < 2e-2, errs
            times = []
            for acc in (False, True):
                def f():
                    return K.row_affine_bwd(h, x, g, a, None, True, True, False, grads,
                                            dx if acc else None)
                times.append(do_bench(f, return_mode="median") * 1e3)
            fit = [v[1] for k, v in K._FITTED.items() if dict(k[1]).get("BT") == bt
                   and dict(k[1])["num_warps"] == warps and dict(k[1])["num_stages"] == stages]
            print(f"{inn:>6} BT={bt} warps={warps} stages={stages:<20} "
                  f"{times[0]:>7.1f} {times[1]:>7.1f} {str(fit):>7}  err {max(errs):.1e}")
    K.CONFIG["row_affine_bwd"].update(bwd_cfg)
    # host time per call: a small T, many calls, one sync at the end
    x, a, ze = inputs(128, 4096)
    for name, min_t in (("split", 1 << 30), ("rows", 0)):
        f = fwd(x, a, ze, min_t)
        for _ in range(20):
            f()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(500):
            f()
        host = (time.perf_counter() - t0) / 500 * 1e6
        torch.cuda.synchronize()
        print(f"host per forward call, {name}: {host:.1f} us")


if __name__ == "__main__":
    main()
