"""What holds bat-row's forward pass (``row_affine_fwd``) at about half the copy bandwidth?
Times the library kernel against probes that each remove one suspect (CUDA only):

    library      the kernel as shipped, float32 master A cast on load
    bf16-A       the same with A cast to bf16 beforehand (half the A bytes)
    natural-A    A loaded row-major (coalesced) and transposed in registers
    copy-only    the same tiles and grid, z = x (no A, no dot, no atomics): the access pattern's own ceiling
    torch-copy   z.copy_(x) by PyTorch

    PYTHONPATH=src python scripts/row_affine_probe.py      (call 55; call 56 after the change)

Measured on the H100 machines: docs/kernel_notes.md section 10.
"""
import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from flashbone.kernels import triton_kernels as K


@triton.jit
def _probe(x_ptr, a_ptr, z_ptr, v_ptr, T, NB, BPP, sx, sz, R: tl.constexpr, BT: tl.constexpr,
           MODE: tl.constexpr):
    # MODE 0: natural-A (row-major load, tl.trans); 1: copy-only
    pid_t = tl.program_id(0)
    pid_b = tl.program_id(1)
    rows = pid_t * BT + tl.arange(0, BT)
    j = tl.arange(0, R)
    rmask = rows[:, None] < T
    vacc = tl.zeros((BT, R), dtype=tl.float32)
    for bb in range(0, BPP):
        b = pid_b * BPP + bb
        if b < NB:
            cols = b * R + j
            xb = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=rmask, other=0.0)
            if MODE == 0:
                a = tl.load(a_ptr + b * R * R + j[:, None] * R + j[None, :]).to(xb.dtype)
                u = tl.dot(xb, tl.trans(a))
                tl.store(z_ptr + rows[:, None] * sz + cols[None, :],
                         (xb.to(tl.float32) + u).to(z_ptr.dtype.element_ty), mask=rmask)
                vacc += u
            else:
                tl.store(z_ptr + rows[:, None] * sz + cols[None, :], xb, mask=rmask)
    if MODE == 0:
        tl.atomic_add(v_ptr + rows[:, None] * R + j[None, :], vacc, mask=rmask)


def main():
    dev, bf, t, r = "cuda", torch.bfloat16, 4096, 64
    src = torch.empty(1 << 28, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    bw = 2 * src.numel() / (do_bench(lambda: dst.copy_(src), return_mode="median") * 1e-3)
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s")
    print(f"{'in':>6}" + "".join(f"{n:>16}" for n in
                                  ("library", "bf16-A", "natural-A", "copy-only", "torch-copy")))
    for k in (4096, 11008):
        x = torch.randn(t, k, device=dev, dtype=bf)
        a = torch.randn(k // r, r, r, device=dev) * 0.02
        z = torch.empty_like(x)
        v = torch.zeros(t, r, device=dev)
        nb = k // r
        cfg = K.CONFIG["row_affine_fwd"]
        bt = cfg["BT"]
        nt = triton.cdiv(t, bt)
        groups = max(1, min(nb, (cfg["PER_SM"] * K._num_sms(x.device) + nt - 1) // nt))
        bpp = triton.cdiv(nb, groups)
        grid = (nt, triton.cdiv(nb, bpp))
        launch = dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        ref = K.row_affine_fwd(x, a, None)[0]

        def probe(mode):
            return lambda: _probe[grid](x, a, z, v, t, nb, bpp, x.stride(0), z.stride(0), R=r,
                                        BT=bt, MODE=mode, **launch)

        probe(0)()
        assert float((z.float() - ref.float()).norm() / ref.float().norm()) < 1e-2
        a16 = a.to(bf)
        fns = [lambda: K.row_affine_fwd(x, a, None), lambda: K.row_affine_fwd(x, a16, None),
               probe(0), probe(1), lambda: z.copy_(x)]
        us = [do_bench(f, return_mode="median") * 1e3 for f in fns]
        cells = "".join(f"{u:8.1f} ({100 * 4 * t * k / (u * 1e-6) / bw:3.0f}%)" for u in us)
        print(f"{k:>6}{cells}")


if __name__ == "__main__":
    main()
