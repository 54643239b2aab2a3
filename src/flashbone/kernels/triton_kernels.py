"""Triton kernels for the Bone family (imported only on CUDA with Triton present).

Shapes as in :mod:`flashbone.ops.torch_ops`: ``x (T, in)``, ``W (out, in)``, block size
``r`` (a power of two >= 16 here), ``na = out/r``, ``nb = in/r``. Every kernel accumulates in
float32 and rounds once on store.

    rank_r           v = block_sum(a) | a @ M;  o = tile(v) | v @ E      (one read of a, o written)
    tn               o = s^T d  for thin s (T, r)                        (one read of d, split over T)
    row_affine_fwd   z_b       = x_b + x_b A_b^T,  vsum += x_b C_b^T     (one read of x, z written)
    row_affine_bwd   dx_b      = U_b + U_b A_b + (g C_b | -g)            (one read of U, x, g)
                     dA_b     += U_b^T x_b,  dC_b += g^T x_b             (atomics, fp32)
    weight_build     W'_ab     = W_ab + W_ab B_a + B_a   (bat)           (one read of W)
                               = W_ab (1 + B_a) + B_a     (bat-hadamard)
    weight_grad      dB_a     += sum_b (W_ab + I)^T G_ab  (bat)          (one read of W, G)
                               = sum_b (W_ab + 1) * G_ab  (bat-hadamard)
    mm_epilogue      C = A @ Bm (+ S @ P) (+ tile(t)) (+ bias)           (one GEMM, fused epilogue)

``tile(t)[m, n] = t[m, n mod r]``. The row-affine and weight kernels are memory-bound: each
tensor is read once and written once; the small ``r x r`` products run on tensor cores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _grid_rows(t: int, bt: int) -> int:
    return triton.cdiv(t, bt)


# --------------------------------------------------------------------------- rank-r pass
@triton.jit
def _rank_r_kernel(a_ptr, m_ptr, e_ptr, v_ptr, o_ptr, bias_ptr, T, K, N, sa, smk, smj, sej, sen,
                   so, R: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
                   REDUCE: tl.constexpr, STORE_V: tl.constexpr, EXPAND: tl.constexpr,
                   HAS_BIAS: tl.constexpr):
    # REDUCE 0: v = load(v_ptr)   1: v[t, j] = sum_b a[t, b*R + j]   2: v = a @ m   (m: K x R)
    # EXPAND 0: none   1: o[t, n] = v[t, n mod R]   2: o = v @ e   (e: R x N)
    # BK and BN are multiples of R, so column c of a chunk sits at block offset c mod R.
    pid = tl.program_id(0)
    rows = pid * BT + tl.arange(0, BT)
    rmask = rows[:, None] < T
    j = tl.arange(0, R)
    if REDUCE == 0:
        v = tl.load(v_ptr + rows[:, None] * R + j[None, :], mask=rmask, other=0.0).to(tl.float32)
    elif REDUCE == 1:  # (BT, BK/R, R) chunks summed over the middle axis
        v = tl.zeros((BT, R), dtype=tl.float32)
        c = tl.arange(0, BK // R)
        off = c[None, :, None] * R + j[None, None, :]
        for k0 in range(0, K, BK):
            a = tl.load(a_ptr + rows[:, None, None] * sa + k0 + off,
                        mask=(rows[:, None, None] < T) & (k0 + off < K), other=0.0)
            v += tl.sum(a.to(tl.float32), axis=1)
    else:
        v = tl.zeros((BT, R), dtype=tl.float32)
        kk = tl.arange(0, BK)
        for k0 in range(0, K, BK):
            k = k0 + kk
            a = tl.load(a_ptr + rows[:, None] * sa + k[None, :], mask=rmask & (k[None, :] < K), other=0.0)
            m = tl.load(m_ptr + k[:, None] * smk + j[None, :] * smj, mask=k[:, None] < K, other=0.0)
            v = tl.dot(a, m, v)
    if REDUCE != 0 and STORE_V:
        tl.store(v_ptr + rows[:, None] * R + j[None, :], v.to(v_ptr.dtype.element_ty), mask=rmask)
    if EXPAND == 1:  # write v tiled: (BT, BN/R, R) chunks of the broadcast row block
        vt = v.to(o_ptr.dtype.element_ty)
        c = tl.arange(0, BN // R)
        off = c[None, :, None] * R + j[None, None, :]
        for n0 in range(0, N, BN):
            o = tl.broadcast_to(vt[:, None, :], (BT, BN // R, R)).to(tl.float32)
            if HAS_BIAS:
                o += tl.load(bias_ptr + n0 + off, mask=n0 + off < N, other=0.0).to(tl.float32)
            tl.store(o_ptr + rows[:, None, None] * so + n0 + off, o.to(o_ptr.dtype.element_ty),
                     mask=(rows[:, None, None] < T) & (n0 + off < N))
    elif EXPAND == 2:
        vb = v.to(o_ptr.dtype.element_ty)
        nn = tl.arange(0, BN)
        for n0 in range(0, N, BN):
            n = n0 + nn
            e = tl.load(e_ptr + j[:, None] * sej + n[None, :] * sen, mask=n[None, :] < N, other=0.0)
            o = tl.dot(vb, e)
            if HAS_BIAS:
                o += tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
            tl.store(o_ptr + rows[:, None] * so + n[None, :], o.to(o_ptr.dtype.element_ty),
                     mask=rmask & (n[None, :] < N))


def rank_r(a: torch.Tensor | None, r: int, *, m: torch.Tensor | None = None,
           v: torch.Tensor | None = None, store_v: bool = False, expand: str | None = None,
           e: torch.Tensor | None = None, n: int = 0, out_dtype: torch.dtype | None = None,
           bias: torch.Tensor | None = None):
    """One pass over the rows of ``a (T, K)``: reduce to ``v (T, r)``, then expand to ``(T, n)``.

    Reduce: ``v`` given (``a=None``), the block sum of ``a`` (``m=None``), or ``a @ m``.
    Expand: ``None``, ``"tile"`` (``o[t, j] = v[t, j mod r]``) or ``"matmul"`` (``o = v @ e``),
    plus ``bias``. Returns ``(v, o)``; a stored ``v`` has ``a``'s dtype (fp32 accumulation).
    This writes the addend that cuBLAS then accumulates its GEMM onto (``beta = 1``).
    """
    t = (a if a is not None else v).shape[0]
    k = a.shape[1] if a is not None else r
    dev = (a if a is not None else v).device
    reduce = 0 if a is None else (1 if m is None else 2)
    if reduce and store_v:
        v = torch.empty(t, r, device=dev, dtype=a.dtype)
    o = None
    if expand is not None:
        o = torch.empty(t, n, device=dev, dtype=out_dtype or (a if a is not None else v).dtype)
    # ~1 program per SM at T=4096: 32 rows each, 16 KB loads in flight per stage
    bt = 32 if t >= 32 * _num_sms(dev) else 16
    bk = max(256, r) if reduce == 1 else (128 if r <= 64 else 64)
    bn = max(128, r) if expand == "tile" else (128 if r <= 64 else 64)
    dummy = o if o is not None else (v if v is not None else a)
    _rank_r_kernel[(triton.cdiv(t, bt),)](
        a if a is not None else dummy, m if m is not None else dummy, e if e is not None else dummy,
        v if v is not None else dummy, o if o is not None else dummy,
        bias if bias is not None else dummy, t, k, n,
        a.stride(0) if a is not None else 0, m.stride(0) if m is not None else 0,
        m.stride(1) if m is not None else 0, e.stride(0) if e is not None else 0,
        e.stride(1) if e is not None else 0, o.stride(0) if o is not None else 0,
        R=r, BT=bt, BK=bk, BN=bn, REDUCE=reduce, STORE_V=bool(reduce and store_v),
        EXPAND={None: 0, "tile": 1, "matmul": 2}[expand], HAS_BIAS=bias is not None,
        num_warps=8, num_stages=3)
    return v, o


def block_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """``s = sum_b x_b`` of ``(T, in) -> (T, r)``; a partial last block is zero-padded."""
    return rank_r(x, r, store_v=True)[0]


@triton.jit
def _tn_kernel(s_ptr, d_ptr, o_ptr, T, N, ROWS, ss, sd, R: tl.constexpr, BT: tl.constexpr,
               BN: tl.constexpr):
    n = tl.program_id(0) * BN + tl.arange(0, BN)
    j = tl.arange(0, R)
    acc = tl.zeros((R, BN), dtype=tl.float32)
    t0 = tl.program_id(1) * ROWS
    for t in range(t0, t0 + ROWS, BT):
        rows = t + tl.arange(0, BT)
        rm = rows[:, None] < T
        sv = tl.load(s_ptr + rows[:, None] * ss + j[None, :], mask=rm, other=0.0)
        dv = tl.load(d_ptr + rows[:, None] * sd + n[None, :], mask=rm & (n[None, :] < N), other=0.0)
        acc = tl.dot(tl.trans(sv), dv, acc)
    tl.atomic_add(o_ptr + j[:, None] * N + n[None, :], acc, mask=n[None, :] < N)


def tn(s: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``s^T d`` (float32) for a thin ``s (T, r)`` and ``d (T, N)``: split over T, one read of d."""
    t, r = s.shape
    n = d.shape[1]
    o = torch.zeros(r, n, device=d.device, dtype=torch.float32)
    bt, bn = 64, 128 if r <= 64 else 64
    tiles = triton.cdiv(n, bn)
    chunks = max(1, min(triton.cdiv(t, bt), triton.cdiv(4 * _num_sms(d.device), tiles)))
    rows = triton.cdiv(triton.cdiv(t, chunks), bt) * bt
    _tn_kernel[(tiles, triton.cdiv(t, rows))](s, d, o, t, n, rows, s.stride(0), d.stride(0),
                                               R=r, BT=bt, BN=bn, num_warps=4)
    return o


# --------------------------------------------------------------------------- row-affine
@triton.jit
def _row_affine_fwd_kernel(x_ptr, a_ptr, c_ptr, z_ptr, v_ptr, T, NB, BPP, sx, sz,
                           R: tl.constexpr, BT: tl.constexpr, HAS_C: tl.constexpr):
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
            # A_b^T as (k, j): element A_b[j, k]
            at = tl.load(a_ptr + b * R * R + j[None, :] * R + j[:, None])
            u = tl.dot(xb, at)
            tl.store(z_ptr + rows[:, None] * sz + cols[None, :],
                     (xb.to(tl.float32) + u).to(z_ptr.dtype.element_ty), mask=rmask)
            if HAS_C:
                ct = tl.load(c_ptr + b * R * R + j[None, :] * R + j[:, None])
                vacc = tl.dot(xb, ct, vacc)
            else:
                vacc += u
    tl.atomic_add(v_ptr + rows[:, None] * R + j[None, :], vacc, mask=rmask)


def row_affine_fwd(x: torch.Tensor, a: torch.Tensor, c: torch.Tensor | None):
    """``z = x + u`` with ``u_b = x_b A_b^T`` and ``vsum = sum_b x_b C_b^T`` (float32)."""
    t, inn = x.shape
    nb, r, _ = a.shape
    z = torch.empty_like(x)
    vsum = torch.zeros(t, r, device=x.device, dtype=torch.float32)
    bt = 64
    nt = _grid_rows(t, bt)
    groups = max(1, min(nb, (4 * _num_sms(x.device) + nt - 1) // nt))
    bpp = triton.cdiv(nb, groups)
    grid = (nt, triton.cdiv(nb, bpp))
    _row_affine_fwd_kernel[grid](x, a, c if c is not None else a, z, vsum, t, nb, bpp,
                                 x.stride(0), z.stride(0), R=r, BT=bt, HAS_C=c is not None,
                                 num_warps=4)
    return z, vsum


@triton.jit
def _row_affine_bwd_kernel(u_ptr, x_ptr, g_ptr, a_ptr, c_ptr, dx_ptr, da_ptr, dc_ptr,
                           T, ROWS, su, sx, sdx, R: tl.constexpr, BT: tl.constexpr,
                           BONE_AB: tl.constexpr, NEED_DX: tl.constexpr, NEED_DA: tl.constexpr,
                           NEED_DC: tl.constexpr):
    b = tl.program_id(0)
    t0 = tl.program_id(1) * ROWS
    j = tl.arange(0, R)
    cols = b * R + j
    am = tl.load(a_ptr + b * R * R + j[:, None] * R + j[None, :])  # A_b as (k, j)
    if BONE_AB:
        cm = tl.load(c_ptr + b * R * R + j[:, None] * R + j[None, :])
    da = tl.zeros((R, R), dtype=tl.float32)
    dc = tl.zeros((R, R), dtype=tl.float32)
    for t in range(t0, t0 + ROWS, BT):
        rows = t + tl.arange(0, BT)
        rmask = rows[:, None] < T
        ub = tl.load(u_ptr + rows[:, None] * su + cols[None, :], mask=rmask, other=0.0)
        gb = tl.load(g_ptr + rows[:, None] * R + j[None, :], mask=rmask, other=0.0)
        if NEED_DA or NEED_DC:
            xb = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=rmask, other=0.0)
        if NEED_DA:
            da = tl.dot(tl.trans(ub), xb, da)
        if NEED_DC:
            dc = tl.dot(tl.trans(gb), xb, dc)
        if NEED_DX:
            dxb = tl.dot(ub, am) + ub.to(tl.float32)
            if BONE_AB:
                dxb = tl.dot(gb, cm, dxb)
            else:
                dxb -= gb.to(tl.float32)
            tl.store(dx_ptr + rows[:, None] * sdx + cols[None, :],
                     dxb.to(dx_ptr.dtype.element_ty), mask=rmask)
    if NEED_DA:
        tl.atomic_add(da_ptr + b * R * R + j[:, None] * R + j[None, :], da)
    if NEED_DC:
        tl.atomic_add(dc_ptr + b * R * R + j[:, None] * R + j[None, :], dc)


def row_affine_bwd(u: torch.Tensor, x: torch.Tensor, g: torch.Tensor, a: torch.Tensor,
                   c: torch.Tensor | None, need_dx: bool, need_da: bool, need_dc: bool):
    """Input gradient and ``dA``/``dC`` (float32) of the row-affine layer from ``U`` and ``g``.

    bat-row (``c=None``): ``U = du = h + tile(g)``; ``dx_b = U_b - g + U_b A_b``.
    bone-ab: ``U = h``; ``dx_b = U_b + U_b A_b + g C_b``, ``dC_b = g^T x_b``.
    """
    t, inn = u.shape
    nb, r, _ = a.shape
    dx = torch.empty_like(u) if need_dx else u
    da = torch.zeros(nb, r, r, device=u.device, dtype=torch.float32) if need_da else g
    dc = torch.zeros(nb, r, r, device=u.device, dtype=torch.float32) if need_dc else g
    bt = 64
    chunks = max(1, min(triton.cdiv(t, bt), (4 * _num_sms(u.device) + nb - 1) // nb))
    rows = triton.cdiv(triton.cdiv(t, chunks), bt) * bt
    grid = (nb, triton.cdiv(t, rows))
    _row_affine_bwd_kernel[grid](u, x, g, a, c if c is not None else a, dx, da, dc, t, rows,
                                 u.stride(0), x.stride(0), dx.stride(0), R=r, BT=bt,
                                 BONE_AB=c is not None, NEED_DX=need_dx, NEED_DA=need_da,
                                 NEED_DC=need_dc, num_warps=4)
    return (dx if need_dx else None, da if need_da else None, dc if need_dc else None)


# --------------------------------------------------------------------------- weight space
@triton.jit
def _weight_build_kernel(w_ptr, b_ptr, o_ptr, NB, BPP, sw, so, R: tl.constexpr,
                         HADAMARD: tl.constexpr):
    a = tl.program_id(0)
    i = tl.arange(0, R)
    bm = tl.load(b_ptr + a * R * R + i[:, None] * R + i[None, :])
    bf = bm.to(tl.float32)
    for bb in range(0, BPP):
        b = tl.program_id(1) * BPP + bb
        if b < NB:
            offs = (a * R + i[:, None]) * sw + b * R + i[None, :]
            wab = tl.load(w_ptr + offs)
            if HADAMARD:
                new = wab.to(tl.float32) * (1.0 + bf) + bf
            else:
                new = tl.dot(wab, bm) + wab.to(tl.float32) + bf
            tl.store(o_ptr + (a * R + i[:, None]) * so + b * R + i[None, :],
                     new.to(o_ptr.dtype.element_ty))


def weight_build(w: torch.Tensor, b: torch.Tensor, hadamard: bool) -> torch.Tensor:
    """``W'`` of bat (``W_ab (I + B_a) + B_a``) or bat-hadamard, in one pass over ``W``."""
    out, inn = w.shape
    na, r, _ = b.shape
    nb = inn // r
    o = torch.empty(out, inn, device=w.device, dtype=w.dtype)
    bpp = _blocks_per_program(na, nb, w.device)
    _weight_build_kernel[(na, triton.cdiv(nb, bpp))](w, b, o, nb, bpp, w.stride(0), o.stride(0),
                                                     R=r, HADAMARD=hadamard, num_warps=4)
    return o


@triton.jit
def _weight_grad_kernel(w_ptr, g_ptr, db_ptr, NB, BPP, sw, sg, R: tl.constexpr,
                        HADAMARD: tl.constexpr):
    a = tl.program_id(0)
    i = tl.arange(0, R)
    acc = tl.zeros((R, R), dtype=tl.float32)
    for bb in range(0, BPP):
        b = tl.program_id(1) * BPP + bb
        if b < NB:
            wab = tl.load(w_ptr + (a * R + i[:, None]) * sw + b * R + i[None, :])
            gab = tl.load(g_ptr + (a * R + i[:, None]) * sg + b * R + i[None, :])
            if HADAMARD:
                acc += (wab.to(tl.float32) + 1.0) * gab.to(tl.float32)
            else:
                acc = tl.dot(tl.trans(wab), gab, acc)
                acc += gab.to(tl.float32)
    tl.atomic_add(db_ptr + a * R * R + i[:, None] * R + i[None, :], acc)


def weight_grad(w: torch.Tensor, g: torch.Tensor, r: int, hadamard: bool) -> torch.Tensor:
    """``dB`` (float32, ``(out/r, r, r)``) of bat / bat-hadamard from ``G = dy^T x``."""
    out, inn = w.shape
    na, nb = out // r, inn // r
    db = torch.zeros(na, r, r, device=w.device, dtype=torch.float32)
    bpp = _blocks_per_program(na, nb, w.device)
    _weight_grad_kernel[(na, triton.cdiv(nb, bpp))](w, g, db, nb, bpp, w.stride(0), g.stride(0),
                                                    R=r, HADAMARD=hadamard, num_warps=4)
    return db


def _blocks_per_program(na: int, nb: int, device) -> int:
    """Enough programs to fill the chip (about 8 per SM), each walking several blocks."""
    want = 8 * _num_sms(device)
    return max(1, triton.cdiv(na * nb, want))


_SMS: dict[int, int] = {}


def _num_sms(device) -> int:
    dev = torch.device(device)
    if dev.type != "cuda":  # Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors
        return 4
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    if idx not in _SMS:
        _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SMS[idx]


# --------------------------------------------------------------------------- GEMM + epilogue
def _mm_configs():
    cfg = [(128, 256, 64, 3, 8), (128, 128, 64, 4, 8), (256, 128, 64, 3, 8)]
    return [triton.Config({"BM": m, "BN": n, "BK": k, "GROUP_M": 8}, num_stages=s, num_warps=w)
            for m, n, k, s, w in cfg]


@triton.autotune(configs=_mm_configs(), key=["M", "N", "K", "HAS_SP", "HAS_TILE", "HAS_BIAS"])
@triton.jit
def _mm_kernel(a_ptr, b_ptr, c_ptr, s_ptr, p_ptr, t_ptr, bias_ptr, M, N, K,
               sam, sak, sbk, sbn, scm, ssm, spk, stm,
               R: tl.constexpr, HAS_SP: tl.constexpr, HAS_TILE: tl.constexpr,
               HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
               GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    am = tl.max_contiguous(tl.multiple_of(rm % M, BM), BM)
    bn = tl.max_contiguous(tl.multiple_of(rn % N, BN), BN)
    rk = tl.arange(0, BK)
    a_ptrs = a_ptr + am[:, None] * sam + rk[None, :] * sak
    b_ptrs = b_ptr + rk[:, None] * sbk + bn[None, :] * sbn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kmask = rk < K - k0
        a = tl.load(a_ptrs, mask=kmask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=kmask[:, None], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BK * sak
        b_ptrs += BK * sbk
    if HAS_SP:  # one more K-slab: acc += S (BM x R) @ P (R x BN)
        j = tl.arange(0, R)
        s = tl.load(s_ptr + am[:, None] * ssm + j[None, :])
        p = tl.load(p_ptr + j[:, None] * spk + bn[None, :])
        acc = tl.dot(s, p, acc)
    cmask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_TILE:  # acc[m, n] += t[m, n mod R]
        acc += tl.load(t_ptr + rm[:, None] * stm + (rn % R)[None, :], mask=cmask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(c_ptr + rm[:, None] * scm + rn[None, :], acc.to(c_ptr.dtype.element_ty), mask=cmask)


def mm_epilogue(a: torch.Tensor, bm: torch.Tensor, s: torch.Tensor | None = None,
                p: torch.Tensor | None = None, tile: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ bm (+ s @ p) (+ tile(tile)) (+ bias)`` in one Triton GEMM.

    ``a (M, K)`` and ``bm (K, N)`` may be any strided views (``W.t()`` is fine); ``s (M, r)``,
    ``p (r, N)``, ``tile (M, r)`` with ``r`` a power of two >= 16.
    """
    m, k = a.shape
    n = bm.shape[1]
    c = torch.empty(m, n, device=a.device, dtype=a.dtype)
    r = s.shape[1] if s is not None else (tile.shape[1] if tile is not None else 16)
    dummy = c
    grid = lambda meta: (triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"]),)  # noqa: E731
    _mm_kernel[grid](
        a, bm, c, s if s is not None else dummy, p if p is not None else dummy,
        tile if tile is not None else dummy, bias if bias is not None else dummy, m, n, k,
        a.stride(0), a.stride(1), bm.stride(0), bm.stride(1), c.stride(0),
        s.stride(0) if s is not None else 0, p.stride(0) if p is not None else 0,
        tile.stride(0) if tile is not None else 0,
        R=r, HAS_SP=s is not None, HAS_TILE=tile is not None, HAS_BIAS=bias is not None,
    )
    return c
