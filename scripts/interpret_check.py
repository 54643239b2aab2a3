"""The CUDA autograd Functions on the CPU through Triton's interpreter, against float32 math.

    TRITON_INTERPRET=1 PYTHONPATH=src python scripts/interpret_check.py

bone and the row-affine Functions, with and without the padded weight (kernels/padded.py),
fp16 (the interpreter truncates bf16). Needs Triton installed; no GPU.
"""

import os

os.environ["TRITON_INTERPRET"] = "1"
import torch
from torch import nn
from flashbone.kernels import padded
from flashbone.kernels.functions import (
    BoneCuda,
    BoneGroupCuda,
    BonePaddedCuda,
    RowAffineCuda,
    RowAffineGroupCuda,
    WeightSpaceCuda,
)
from flashbone.ops import torch_ops as T

torch.manual_seed(0)
dt = torch.float16


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def bone_ref(x, w, bias, b, r):
    s = T.block_sum(x, r)
    return x @ w.t() + bias + s @ b


def check_bone(t, out, inn, r, pad, twice=False):
    x = torch.randn(t, inn, dtype=dt)
    w = nn.Parameter(torch.randn(out, inn, dtype=dt) * inn**-0.5, requires_grad=False)
    w0 = w.detach().clone()
    bias = torch.randn(out, dtype=dt)
    b = (torch.randn(r, out) * 0.1).to(dt)
    dy = torch.randn(t, out, dtype=dt)
    wx = padded.rehome(w, r) if pad else None
    assert torch.equal(w, w0)
    xs = x.clone().requires_grad_()
    bs = (b.float() if pad else b.clone()).requires_grad_()  # padded: the float32 master goes in

    def layer():
        if pad:
            return BonePaddedCuda.apply(xs, w, bias, bs, r, wx)
        return BoneCuda.apply(xs, w, bias, bs, r)

    y = layer()
    if twice:  # a second consumer of the same input reuses [x | xP]
        y = y + layer()
    y.backward(dy)
    x32 = x.float().requires_grad_()
    b32 = b.float().requires_grad_()
    yr = bone_ref(x32, w0.float(), bias.float(), b32, r)
    if twice:
        yr = 2 * yr
    yr.backward(dy.float())
    e = (rel(y, yr), rel(xs.grad, x32.grad), rel(bs.grad, b32.grad))
    print("bone", t, out, inn, r, "pad" if pad else "   ", "twice" if twice else "", ["%.1e" % v for v in e])
    assert max(e) < 1e-2, e
    assert torch.equal(w, w0)


def check_row(t, out, inn, r, pad, ab):
    x = torch.randn(t, inn, dtype=dt)
    w = nn.Parameter(torch.randn(out, inn, dtype=dt) * inn**-0.5, requires_grad=False)
    w0 = w.detach().clone()
    bias = torch.randn(out, dtype=dt)
    nb = inn // r
    a = (torch.randn(nb, r, r) * 0.1).to(dt)
    c = (torch.randn(nb, r, r) * 0.1).to(dt) if ab else None
    dy = torch.randn(t, out, dtype=dt)
    wx = padded.rehome(w, r) if pad else None
    xs = x.clone().requires_grad_()
    # padded runs pass float32 masters, as the dispatcher does: the kernels cast them on load
    as_ = (a.float() if pad else a.clone()).requires_grad_()
    cs = (c.float() if pad else c.clone()).requires_grad_() if ab else None
    y = RowAffineCuda.apply(xs, w, bias, as_, cs, r, wx)
    y.backward(dy)
    x32 = x.float().requires_grad_()
    a32 = a.float().requires_grad_()
    c32 = c.float().requires_grad_() if ab else a32
    xb = x32.view(t, nb, r)
    u = torch.einsum("tbk,bjk->tbj", xb, a32)
    v = torch.einsum("tbk,bjk->tbj", xb, c32).sum(1)
    z = (xb + u).reshape(t, inn)
    yr = z @ w0.float().t() + bias.float() + v.repeat(1, out // r)
    yr.backward(dy.float())
    e = [rel(y, yr), rel(xs.grad, x32.grad), rel(as_.grad, a32.grad)]
    if ab:
        e.append(rel(cs.grad, c32.grad))
    print("bone-ab" if ab else "bat-row", t, out, inn, r, "pad" if pad else "   ", ["%.1e" % v for v in e])
    assert max(e) < 1e-2, e
    assert torch.equal(w, w0) and as_.grad.dtype == as_.dtype


def check_bat(t, out, inn, r, hadamard, master):
    x = torch.randn(t, inn, dtype=dt)
    w = torch.randn(out, inn, dtype=dt) * inn**-0.5
    b = (torch.randn(out // r, r, r) * 0.1).to(dt)
    dy = torch.randn(t, out, dtype=dt)
    xs = x.clone().requires_grad_()
    bs = (b.float() if master else b.clone()).requires_grad_()
    y = WeightSpaceCuda.apply(xs, w, None, bs, hadamard)
    y.backward(dy)
    x32 = x.float().requires_grad_()
    b32 = b.float().requires_grad_()
    wv = w.float().view(out // r, r, inn // r, r)
    bb = b32[:, :, None, :]
    if hadamard:
        wn = wv * (1 + bb) + bb
    else:
        wn = wv + torch.einsum("aibk,akj->aibj", wv, b32) + bb
    yr = x32 @ wn.reshape(out, inn).t()
    yr.backward(dy.float())
    e = [rel(y, yr), rel(xs.grad, x32.grad), rel(bs.grad, b32.grad)]
    print("bat-hadamard" if hadamard else "bat", t, out, inn, r, "master" if master else "", ["%.1e" % v for v in e])
    assert max(e) < 1e-2, e
    assert bs.grad.dtype == bs.dtype


def check_group(t, outs, inn, r, unused=()):
    """q/k/v-like members on one input (BoneGroupCuda), some outputs left out of the loss."""
    x = torch.randn(t, inn, dtype=dt)
    xs, x32 = x.clone().requires_grad_(), x.float().requires_grad_()
    flat, refs, dys = [], [], []
    for i, out in enumerate(outs):
        w = nn.Parameter(torch.randn(out, inn, dtype=dt) * inn**-0.5, requires_grad=False)
        w0 = w.detach().clone()
        wx = padded.rehome(w, r)
        bias = torch.randn(out, dtype=dt).requires_grad_() if i == 0 else None
        b = (torch.randn(r, out) * 0.1).requires_grad_()  # the float32 master
        flat += [w, bias, b, wx]
        refs.append((w0, bias, b))
        dys.append(None if i in unused else torch.randn(t, out, dtype=dt))
    ys = BoneGroupCuda.apply(xs, r, *flat)
    torch.autograd.backward([y for y, d in zip(ys, dys) if d is not None], [d for d in dys if d is not None])
    errs = []
    for (w0, bias, b), y, d in zip(refs, ys, dys):
        b32 = b.detach().clone().requires_grad_()
        bias32 = None if bias is None else bias.detach().float().requires_grad_()
        yr = bone_ref(x32, w0.float(), 0 if bias is None else bias32, b32, r)
        errs.append(rel(y, yr))
        if d is not None:
            g32 = torch.autograd.grad(yr, [b32] + ([bias32] if bias is not None else []), d.float(), retain_graph=True)
            errs.append(rel(b.grad, g32[0]))
            if bias is not None:
                errs.append(rel(bias.grad, g32[1]))
        else:
            assert b.grad is None
    loss = sum(
        (bone_ref(x32, w0.float(), 0 if bias is None else bias.detach().float(), b.detach(), r) * d.float()).sum()
        for (w0, bias, b), d in zip(refs, dys)
        if d is not None
    )
    loss.backward()
    errs.append(rel(xs.grad, x32.grad))
    print("group", t, outs, inn, r, "unused", unused, ["%.1e" % v for v in errs])
    assert max(errs) < 1e-2, errs


def check_row_group(t, outs, inn, r, ab, unused=()):
    """bat-row / bone-ab members on one input (RowAffineGroupCuda) against each member alone
    through RowAffineCuda (checked against float32 math above)."""
    x = torch.randn(t, inn, dtype=dt)
    nb = inn // r
    members, dys = [], []
    for i, out in enumerate(outs):
        w = nn.Parameter(torch.randn(out, inn, dtype=dt) * inn**-0.5, requires_grad=False)
        wx = padded.rehome(w, r)
        bias = torch.randn(out, dtype=dt) if i == 0 else None
        a = torch.randn(nb, r, r) * 0.1
        c = torch.randn(nb, r, r) * 0.1 if ab else None
        members.append((w, bias, a, c, wx))
        dys.append(None if i in unused else torch.randn(t, out, dtype=dt))

    def leaves():
        return [
            (a.clone().requires_grad_(), None if c is None else c.clone().requires_grad_()) for _, _, a, c, _ in members
        ]

    xg, lg = x.clone().requires_grad_(), leaves()
    flat = [v for (w, bias, _, _, wx), (a, c) in zip(members, lg) for v in (w, bias, a, c, wx)]
    ys = RowAffineGroupCuda.apply(xg, r, *flat)
    torch.autograd.backward([y for y, d in zip(ys, dys) if d is not None], [d for d in dys if d is not None])
    xs, ls = x.clone().requires_grad_(), leaves()
    yss = [RowAffineCuda.apply(xs, w, bias, a, c, r, wx) for (w, bias, _, _, wx), (a, c) in zip(members, ls)]
    torch.autograd.backward([y for y, d in zip(yss, dys) if d is not None], [d for d in dys if d is not None])
    errs = [rel(y, ys_) for y, ys_ in zip(ys, yss)] + [rel(xg.grad, xs.grad)]
    for (ag, cg), (a_s, c_s), d in zip(lg, ls, dys):
        if d is None:
            assert ag.grad is None
            continue
        errs.append(rel(ag.grad, a_s.grad))
        if cg is not None:
            errs.append(rel(cg.grad, c_s.grad))
    print("row group", "bone-ab" if ab else "bat-row", t, outs, inn, r, "unused", unused, ["%.1e" % v for v in errs])
    assert max(errs) < 1e-3, errs


from flashbone.kernels import triton_kernels as K  # noqa: E402


def check_row_bwd_product(t, inn, r, ab):
    """row_affine_bwd with the input given as a product x * x2 (formed in the kernel) against
    the same call on the eager product: bitwise the same input, so the same results."""
    nb = inn // r
    x1, x2 = torch.randn(t, inn, dtype=dt), torch.randn(t, inn, dtype=dt)
    hg = torch.randn(t, inn + r, dtype=dt)
    a = torch.randn(nb, r, r) * 0.1
    c = torch.randn(nb, r, r) * 0.1 if ab else None
    args = (hg[:, :inn], x1, hg[:, inn:], a, c, True, True, ab)
    fused = K.row_affine_bwd(*args, x2=x2)
    ref = K.row_affine_bwd(hg[:, :inn], x1 * x2, *args[2:])
    errs = [rel(p, q) for p, q in zip(fused, ref) if q is not None]
    print("row bwd product", "bone-ab" if ab else "bat-row", t, inn, r, ["%.1e" % v for v in errs])
    assert max(errs) < 1e-6, errs


# the row-affine forward has two kernels: whole rows per program (many tokens) and a split
# over blocks with atomics (few); MIN_T=0 sends these small checks through the first
for min_t in (K.CONFIG["row_affine_rows"]["MIN_T"], 0):
    K.CONFIG["row_affine_rows"]["MIN_T"] = min_t
    print("row_affine_rows MIN_T", min_t)
    for pad in (False, True):
        check_bone(130, 96, 64, 16, pad)
        check_bone(70, 64, 80, 32, pad)  # in % r != 0: a partial last block
        check_bone(70, 48, 96, 16, pad)  # out < in: addend forward, padded backward
        check_bone(50, 64, 64, 32, pad, twice=True)
        check_row(130, 96, 64, 16, pad, False)
        check_row(70, 64, 128, 32, pad, True)
        check_bat(70, 64, 96, 16, False, pad)
        check_bat(50, 32, 64, 16, True, pad)
    check_group(130, [64, 32, 32], 64, 16)  # q, k, v with fewer kv heads
    check_group(70, [128, 128], 64, 32, unused=(1,))  # gate/up, one output unused
    check_group(50, [64, 64], 80, 32)  # in % r != 0
    check_row_group(130, [64, 32, 32], 64, 16, False)
    check_row_group(70, [128, 128], 64, 32, True, unused=(0,))
    check_row_bwd_product(130, 128, 32, False)
    check_row_bwd_product(70, 64, 16, True)

print("ok")
