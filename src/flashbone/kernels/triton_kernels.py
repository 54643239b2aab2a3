"""Triton kernels for the Bone family (imported only on CUDA with Triton present).

Shapes as in :mod:`flashbone.ops.torch_ops`: ``x (T, in)``, ``W (out, in)``, block size
``r`` (a power of two >= 16 here), ``na = out/r``, ``nb = in/r``. Every kernel accumulates in
float32 and rounds once on store.

    rank_r           v = block_sum(a) | a @ M;  o = tile(v) | v @ E      (one read of a, o written;
                     two launches: a K-split reduce with atomics, a 2-D-grid expand; the
                     default paths use only the expand: cuBLAS reduces faster, block_sum)
    tn               o = s^T d  for thin s (T, r)                        (one read of d, split over T)
    row_affine_fwd   z_b       = x_b + x_b A_b^T,  vsum = sum_b x_b C_b^T (one read of x, z written;
                     a program owns whole rows, or, with few tokens, splits blocks + atomics)
    row_affine_bwd   dx_b = h_b + h_b A_b + g C_b   (bat-row: C = A, so du_b = h_b + g)
                     dA_b += h_b^T x_b (+ g^T x_b: bat-row),  dC_b += g^T x_b
                     (one read of h, x, g; dx added to a sibling's in place; fp32 atomics)
    weight_build     W'_ab     = W_ab + W_ab B_a + B_a   (bat)           (one read of W)
                               = W_ab (1 + B_a) + B_a     (bat-hadamard)
    weight_grad      dB_a     += sum_b (W_ab + I)^T G_ab  (bat)          (one read of W, G)
                               = sum_b (W_ab + 1) * G_ab  (bat-hadamard)
    mul_cast_mul     o = a * (b * c).to(a.dtype)   (RMSNorm output, recomputed by replay.py)
    extend_input     xe = [x | s], s = block_sum(x)                      (one read of x, xe written)

``tile(t)[m, n] = t[m, n mod r]``. All are memory-bound: each tensor is read once and written
once; the small ``r x r`` products run on tensor cores. The token GEMMs stay with cuBLAS
(a Triton GEMM with these addends in its epilogue was slower: docs/kernel_notes.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..settings import SETTINGS


def _grid_rows(t: int, bt: int) -> int:
    return triton.cdiv(t, bt)


# Launch parameters of each kernel (block sizes, warps, pipeline depth). The defaults were
# picked on an H100 by ``scripts/tune_kernels.py``, which sweeps them at the bench's layer
# shapes; docs/kernel_notes.md has the sweep.
CONFIG: dict[str, dict[str, int]] = {
    "reduce": dict(BT=64, BK=256, num_warps=4, num_stages=3),
    "expand": dict(BT=64, BN=128, num_warps=4, num_stages=3),
    # bone's backward: PADDED=1 takes [h | ds] = dy W_ext (the ds columns out of the token GEMM)
    # and one tile-add pass; 0 keeps ds = dy B^T as skinny GEMMs and the tile as cuBLAS's addend
    "bone_bwd": dict(PADDED=1),
    "extend": dict(BT=16, BK=256, num_warps=4, num_stages=3),
    "row_affine_fwd": dict(BT=64, PER_SM=4, num_warps=4, num_stages=3),
    # PER_SM=0: as many programs as fit on the GPU at once (one wave, from the compiled
    # kernel's registers and shared memory). ACC=1: a group's members add their input
    # gradients into one dx inside this kernel; 0: dx.add_ after it. X_MUL=1: an input that
    # is a product of two saved tensors (silu(gate) * up) is formed as it is loaded.
    "row_affine_bwd": dict(BT=64, PER_SM=0, ACC=1, X_MUL=1, num_warps=4, num_stages=4),
    "row_affine_rows": dict(BT=32, MIN_T=2048, PAIRS=1, num_warps=8, num_stages=5),
    "weight_build": dict(num_warps=4, num_stages=3),
    "weight_grad": dict(num_warps=8, num_stages=2),
    "mul_cast_mul": dict(BR=4, BC=1024, num_warps=4, num_stages=3),
}


def _apply_overrides() -> None:
    """``SETTINGS.kernel_config`` (``FLASHBONE_KERNEL_CONFIG='{"weight_grad": {"num_warps": 4}}'``)
    overrides CONFIG entries; read when this module is first imported (the first CUDA call)."""
    for name, values in SETTINGS.kernel_config.items():
        if name not in CONFIG:
            raise ValueError(f"FLASHBONE_KERNEL_CONFIG: unknown kernel {name!r}; choose from {', '.join(CONFIG)}")
        CONFIG[name] = {**CONFIG[name], **values}


_apply_overrides()


def _launch(name: str) -> dict[str, int]:
    """``num_warps`` / ``num_stages`` of kernel ``name`` (the launch keywords)."""
    c = CONFIG[name]
    return {"num_warps": c["num_warps"], "num_stages": c["num_stages"]}


# --------------------------------------------------------------------------- rank-r pass
@triton.jit
def _reduce_kernel(
    a_ptr,
    m_ptr,
    v_ptr,
    T,
    K,
    KCHUNK,
    sa,
    smk,
    smj,
    R: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    MATMUL: tl.constexpr,
):
    # v[t, :] += sum over this program's K-chunk: block sum (a[t, b*R + j]) or a @ m
    # (float32 atomics: each element gets K / KCHUNK adds). BK is a multiple of R.
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    k_lo = tl.program_id(1) * KCHUNK
    j = tl.arange(0, R)
    v = tl.zeros((BT, R), dtype=tl.float32)
    if MATMUL:
        kk = tl.arange(0, BK)
        for k0 in range(k_lo, k_lo + KCHUNK, BK):
            k = k0 + kk
            a = tl.load(a_ptr + rows[:, None] * sa + k[None, :], mask=(rows[:, None] < T) & (k[None, :] < K), other=0.0)
            m = tl.load(m_ptr + k[:, None] * smk + j[None, :] * smj, mask=k[:, None] < K, other=0.0)
            v = tl.dot(a, m, v)
    else:  # (BT, BK/R, R) chunks summed over the middle axis
        off = tl.arange(0, BK // R)[None, :, None] * R + j[None, None, :]
        for k0 in range(k_lo, k_lo + KCHUNK, BK):
            a = tl.load(
                a_ptr + rows[:, None, None] * sa + k0 + off, mask=(rows[:, None, None] < T) & (k0 + off < K), other=0.0
            )
            v += tl.sum(a.to(tl.float32), axis=1)
    tl.atomic_add(v_ptr + rows[:, None] * R + j[None, :], v, mask=rows[:, None] < T)


@triton.jit
def _expand_kernel(
    v_ptr,
    e_ptr,
    o_ptr,
    bias_ptr,
    add_ptr,
    T,
    N,
    sv,
    sej,
    sen,
    so,
    sadd,
    R: tl.constexpr,
    BT: tl.constexpr,
    BN: tl.constexpr,
    MATMUL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_ADD: tl.constexpr,
):
    # o[t, n] = v[t, n mod R] (tile) or (v @ e)[t, n], plus bias[n], plus add[t, n];
    # one (BT, BN) tile each
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    n = tl.program_id(1) * BN + tl.arange(0, BN)
    j = tl.arange(0, R)
    mask = (rows[:, None] < T) & (n[None, :] < N)
    if MATMUL:
        vb = tl.load(v_ptr + rows[:, None] * sv + j[None, :], mask=rows[:, None] < T, other=0.0)
        e = tl.load(e_ptr + j[:, None] * sej + n[None, :] * sen, mask=n[None, :] < N, other=0.0)
        o = tl.dot(vb.to(e.dtype), e)
    else:
        o = tl.load(v_ptr + rows[:, None] * sv + (n % R)[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        o += tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
    if HAS_ADD:
        o += tl.load(add_ptr + rows[:, None] * sadd + n[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(o_ptr + rows[:, None] * so + n[None, :], o.to(o_ptr.dtype.element_ty), mask=mask)


def rank_r(
    a: torch.Tensor | None,
    r: int,
    *,
    m: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    store_v: bool = False,
    expand: str | None = None,
    e: torch.Tensor | None = None,
    n: int = 0,
    out_dtype: torch.dtype | None = None,
    bias: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
):
    """Reduce the rows of ``a (T, K)`` to ``v (T, r)``, then expand ``v`` to ``o (T, n)``.

    Reduce: ``v`` given (``a=None``), the block sum of ``a`` (``m=None``), or ``a @ m``;
    one read of ``a``, split over K so the whole chip streams it (float32 atomics into v).
    Expand: ``None``, ``"tile"`` (``o[t, j] = v[t, j mod r]``) or ``"matmul"`` (``o = v @ e``),
    plus ``bias`` and ``add`` (``T x n``, any row stride); one write of ``o``. Returns ``(v, o)``; a computed ``v`` is returned in
    ``a``'s dtype when ``store_v`` (else float32). ``o`` is the addend cuBLAS accumulates onto.
    """
    dev = (a if a is not None else v).device
    if a is not None:
        t, k = a.shape
        vacc = torch.zeros(t, r, device=dev, dtype=torch.float32)
        cfg = CONFIG["reduce"]
        bt, bk = cfg["BT"], max(cfg["BK"], r)
        row_tiles = triton.cdiv(t, bt)
        splits = max(1, min(triton.cdiv(k, bk), triton.cdiv(4 * _num_sms(dev), row_tiles)))
        kchunk = triton.cdiv(triton.cdiv(k, splits), bk) * bk
        _reduce_kernel[(row_tiles, triton.cdiv(k, kchunk))](
            a,
            m if m is not None else a,
            vacc,
            t,
            k,
            kchunk,
            a.stride(0),
            m.stride(0) if m is not None else 0,
            m.stride(1) if m is not None else 0,
            R=r,
            BT=bt,
            BK=bk,
            MATMUL=m is not None,
            **_launch("reduce"),
        )
        v = vacc.to(a.dtype) if store_v else vacc
        vsrc = v if expand == "matmul" else vacc  # the tile copies exact float32 sums
    else:
        t = v.shape[0]
        vsrc = v
    o = None
    if expand is not None:
        o = torch.empty(t, n, device=dev, dtype=out_dtype or (a if a is not None else v).dtype)
        if expand == "matmul" and e is None:
            raise ValueError("rank_r: expand='matmul' needs e")
        _expand(vsrc, o, r, e=e if expand == "matmul" else None, bias=bias, add=add)
    return v, o


def _expand(
    v: torch.Tensor,
    o: torch.Tensor,
    r: int,
    *,
    e: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    add: torch.Tensor | None = None,
) -> None:
    t, n = o.shape
    cfg = CONFIG["expand"]
    bt, bn = cfg["BT"], cfg["BN"]
    if add is not None and (add.shape != o.shape or add.stride(1) != 1):
        raise ValueError(f"rank_r: add must be {tuple(o.shape)} with dense rows, got {tuple(add.shape)}")
    _expand_kernel[(triton.cdiv(t, bt), triton.cdiv(n, bn))](
        v,
        e if e is not None else o,
        o,
        bias if bias is not None else o,
        add if add is not None else o,
        t,
        n,
        v.stride(0),
        e.stride(0) if e is not None else 0,
        e.stride(1) if e is not None else 0,
        o.stride(0),
        add.stride(0) if add is not None else 0,
        R=r,
        BT=bt,
        BN=bn,
        MATMUL=e is not None,
        HAS_BIAS=bias is not None,
        HAS_ADD=add is not None,
        **_launch("expand"),
    )


@triton.jit
def _extend_kernel(x_ptr, xe_ptr, s_ptr, T, K, sx, sxe, R: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    # xe[t, :K] = x[t], xe[t, K:] = s[t] = sum_b x[t, b*R:(b+1)*R]; BT rows per program
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    j = tl.arange(0, R)
    off = tl.arange(0, BK // R)[None, :, None] * R + j[None, None, :]
    rmask = rows[:, None, None] < T
    acc = tl.zeros((BT, R), dtype=tl.float32)
    for k0 in range(0, K, BK):
        m = rmask & (k0 + off < K)
        a = tl.load(x_ptr + rows[:, None, None] * sx + k0 + off, mask=m, other=0.0)
        tl.store(xe_ptr + rows[:, None, None] * sxe + k0 + off, a, mask=m)
        acc += tl.sum(a.to(tl.float32), axis=1)
    sb = acc.to(xe_ptr.dtype.element_ty)
    smask = rows[:, None] < T
    tl.store(xe_ptr + rows[:, None] * sxe + K + j[None, :], sb, mask=smask)
    tl.store(s_ptr + rows[:, None] * R + j[None, :], sb, mask=smask)


def extend_input(x: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``xe = [x | s]`` (``T x (in + r)``) and ``s = x P`` (``T x r``, its own copy) in one pass
    over ``x``: the activation side of bone's padded GEMM (:mod:`.padded`)."""
    t, k = x.shape
    xe = torch.empty(t, k + r, device=x.device, dtype=x.dtype)
    s = torch.empty(t, r, device=x.device, dtype=x.dtype)
    cfg = CONFIG["extend"]
    bt, bk = cfg["BT"], max(cfg["BK"], r)
    _extend_kernel[(triton.cdiv(t, bt),)](
        x, xe, s, t, k, x.stride(0), xe.stride(0), R=r, BT=bt, BK=bk, **_launch("extend")
    )
    return xe, s


_ONES: dict[tuple, torch.Tensor] = {}


def block_ones(k: int, r: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``P (k, r)`` with ``P[i, i mod r] = 1``: ``x @ P`` is the block sum of ``x``'s columns
    and ``v @ P^T`` tiles ``v``. Cached per shape, dtype and device (k x r: at most a few MB)."""
    key = (k, r, dtype, torch.device(device))
    p = _ONES.get(key)
    if p is None:
        p = torch.zeros(k, r, dtype=dtype, device=device)
        idx = torch.arange(k, device=device)
        p[idx, idx % r] = 1
        _ONES[key] = p
    return p


def block_sum(x: torch.Tensor, r: int) -> torch.Tensor:
    """``s = sum_b x_b`` of ``(T, in) -> (T, r)``; a partial last block is zero-padded.

    One cuBLAS GEMM with the 0/1 matrix of :func:`block_ones` (float32 accumulation, rounded
    once): on an H100 it streams x faster than the Triton reduce above (21.9 against 24.5 us at
    4096 x 4096, scripts/tune_kernels.py) and costs half the host time to launch."""
    return x @ block_ones(x.shape[1], r, x.dtype, x.device)


# --------------------------------------------------------------------------- input replay
@triton.jit
def _mul_cast_mul_kernel(
    a_ptr, b_ptr, c_ptr, o_ptr, ROWS, COLS, sar, sac, sbr, sbc, scr, scc, so, BR: tl.constexpr, BC: tl.constexpr
):
    # o = a * (b * c).to(o.dtype), each product in float32 rounded once, as eager PyTorch does
    rows = tl.program_id(0) * BR + tl.arange(0, BR)[:, None]
    cols = tl.program_id(1) * BC + tl.arange(0, BC)[None, :]
    mask = (rows < ROWS) & (cols < COLS)
    b = tl.load(b_ptr + rows * sbr + cols * sbc, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + rows * scr + cols * scc, mask=mask, other=0.0).to(tl.float32)
    inner = (b * c).to(o_ptr.dtype.element_ty).to(tl.float32)
    a = tl.load(a_ptr + rows * sar + cols * sac, mask=mask, other=0.0).to(tl.float32)
    tl.store(o_ptr + rows * so + cols, (a * inner).to(o_ptr.dtype.element_ty), mask=mask)


def mul_cast_mul(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * (b * c).to(a.dtype)`` with broadcasting, in one pass (RMSNorm's output
    ``w * (h * rsqrt(var)).to(bf16)``: three eager kernels and a float32 temporary otherwise).
    ``b`` and ``c`` float32, ``a`` half precision: then it equals the eager result bitwise.
    Raises ``RuntimeError`` for broadcasts that do not flatten to rows x columns."""
    shape = torch.broadcast_shapes(a.shape, b.shape, c.shape)
    cols = shape[-1] if shape else 1
    a2, b2, c2 = (t.expand(shape).view(-1, cols) for t in (a, b, c))
    rows = a2.shape[0]
    o = torch.empty(rows, cols, device=a.device, dtype=a.dtype)
    cfg = CONFIG["mul_cast_mul"]
    grid = (triton.cdiv(rows, cfg["BR"]), triton.cdiv(cols, cfg["BC"]))
    _mul_cast_mul_kernel[grid](
        a2,
        b2,
        c2,
        o,
        rows,
        cols,
        a2.stride(0),
        a2.stride(1),
        b2.stride(0),
        b2.stride(1),
        c2.stride(0),
        c2.stride(1),
        o.stride(0),
        BR=cfg["BR"],
        BC=cfg["BC"],
        **_launch("mul_cast_mul"),
    )
    return o.view(shape)


# --------------------------------------------------------------------------- row-affine
@triton.jit
def _row_affine_fwd_kernel(
    x_ptr, a_ptr, c_ptr, z_ptr, v_ptr, T, NB, BPP, sx, sz, R: tl.constexpr, BT: tl.constexpr, HAS_C: tl.constexpr
):
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
            # A_b loaded row-major and transposed in registers (the same speed as loading
            # A_b^T directly: 44.0 against 43.5 us at 4096 x 4096, calls 55 and 56)
            blk = b * R * R + j[:, None] * R + j[None, :]
            at = tl.trans(tl.load(a_ptr + blk).to(xb.dtype))
            u = tl.dot(xb, at)
            tl.store(
                z_ptr + rows[:, None] * sz + cols[None, :],
                (xb.to(tl.float32) + u).to(z_ptr.dtype.element_ty),
                mask=rmask,
            )
            if HAS_C:
                ct = tl.trans(tl.load(c_ptr + blk).to(xb.dtype))
                vacc = tl.dot(xb, ct, vacc)
            else:
                vacc += u
    tl.atomic_add(v_ptr + rows[:, None] * R + j[None, :], vacc, mask=rmask)


@triton.jit
def _row_affine_rows_kernel(
    x_ptr,
    a_ptr,
    c_ptr,
    z_ptr,
    v_ptr,
    T,
    NB,
    sx,
    sz,
    sv,
    R: tl.constexpr,
    BT: tl.constexpr,
    HAS_C: tl.constexpr,
    PAIRS: tl.constexpr,
):
    # One program owns BT whole rows: it walks every block b, so vsum is complete in its
    # registers and is stored once, in v's dtype (no zeroed buffer, no atomics, no copy).
    # PAIRS: two blocks per step, twice the bytes in flight for the same pipeline depth.
    rows = tl.program_id(0) * BT + tl.arange(0, BT)
    j = tl.arange(0, R)
    rmask = rows[:, None] < T
    vacc = tl.zeros((BT, R), dtype=tl.float32)
    for b0 in range(0, NB, 1 + PAIRS):
        for k in tl.static_range(1 + PAIRS):
            b = b0 + k
            cols = b * R + j
            m = rmask & (cols[None, :] < NB * R)  # b < NB, as a tensor (see below)
            xb = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=m, other=0.0)
            blk = b * R * R + j[:, None] * R + j[None, :]
            inside = blk < NB * R * R  # b < NB as a tensor mask (Triton's interpreter takes no scalar one)
            am = tl.load(a_ptr + blk, mask=inside, other=0.0)
            u = tl.dot(xb, tl.trans(am.to(xb.dtype)))
            tl.store(
                z_ptr + rows[:, None] * sz + cols[None, :], (xb.to(tl.float32) + u).to(z_ptr.dtype.element_ty), mask=m
            )
            if HAS_C:
                cm = tl.load(c_ptr + blk, mask=inside, other=0.0)
                vacc = tl.dot(xb, tl.trans(cm.to(xb.dtype)), vacc)
            else:
                vacc += u
    tl.store(v_ptr + rows[:, None] * sv + j[None, :], vacc.to(v_ptr.dtype.element_ty), mask=rmask)


def row_affine_fwd(
    x: torch.Tensor,
    a: torch.Tensor,
    c: torch.Tensor | None,
    z: torch.Tensor | None = None,
    vsum: torch.Tensor | None = None,
):
    """``z = x + u`` with ``u_b = x_b A_b^T`` and ``vsum = sum_b x_b C_b^T``.

    ``z`` may be given (``T x in``, rows strided: the first columns of a wider buffer), and
    ``vsum`` too (``T x r``, any float dtype, rows strided: the padded path passes the last r
    columns of that same buffer); by default ``vsum`` is a new float32 tensor. With enough
    rows to fill the GPU, one program owns whole rows and stores ``vsum`` once; with fewer,
    programs also split the blocks and add float32 partial sums atomically.
    """
    t, inn = x.shape
    nb, r, _ = a.shape
    z = torch.empty_like(x) if z is None else z
    out = vsum
    cfg = CONFIG["row_affine_rows"]
    if t >= cfg["MIN_T"]:
        if out is None:
            out = torch.empty(t, r, device=x.device, dtype=torch.float32)
        args = [x, a, c if c is not None else a, z, out, t, nb, x.stride(0), z.stride(0), out.stride(0)]
        kw = dict(R=r, BT=cfg["BT"], HAS_C=c is not None, PAIRS=bool(cfg["PAIRS"]), **_launch("row_affine_rows"))
        kw, _ = _fit(_row_affine_rows_kernel, args, kw, x.device)
        _row_affine_rows_kernel[(triton.cdiv(t, cfg["BT"]),)](*args, **kw)
        return z, out
    acc = torch.zeros(t, r, device=x.device, dtype=torch.float32)
    bt = CONFIG["row_affine_fwd"]["BT"]
    nt = _grid_rows(t, bt)
    want = CONFIG["row_affine_fwd"]["PER_SM"] * _num_sms(x.device)  # programs to launch
    groups = max(1, min(nb, (want + nt - 1) // nt))
    bpp = triton.cdiv(nb, groups)
    grid = (nt, triton.cdiv(nb, bpp))
    _row_affine_fwd_kernel[grid](
        x,
        a,
        c if c is not None else a,
        z,
        acc,
        t,
        nb,
        bpp,
        x.stride(0),
        z.stride(0),
        R=r,
        BT=bt,
        HAS_C=c is not None,
        **_launch("row_affine_fwd"),
    )
    if out is None:
        return z, acc
    out.copy_(acc)
    return z, out


@triton.jit
def _row_affine_bwd_kernel(
    u_ptr,
    x_ptr,
    x2_ptr,
    g_ptr,
    a_ptr,
    c_ptr,
    dx_ptr,
    da_ptr,
    dc_ptr,
    T,
    ROWS,
    su,
    sx,
    sx2,
    sg,
    sdx,
    R: tl.constexpr,
    BT: tl.constexpr,
    BONE_AB: tl.constexpr,
    NEED_DX: tl.constexpr,
    NEED_DA: tl.constexpr,
    NEED_DC: tl.constexpr,
    ACC: tl.constexpr,
    X_MUL: tl.constexpr,
):
    b = tl.program_id(0)
    t0 = tl.program_id(1) * ROWS
    j = tl.arange(0, R)
    cols = b * R + j
    # A_b as (k, j), cast here to the activation dtype (A may be the float32 master)
    am = tl.load(a_ptr + b * R * R + j[:, None] * R + j[None, :]).to(dx_ptr.dtype.element_ty)
    if BONE_AB:
        cm = tl.load(c_ptr + b * R * R + j[:, None] * R + j[None, :]).to(dx_ptr.dtype.element_ty)
    else:
        cm = am
    da = tl.zeros((R, R), dtype=tl.float32)
    dc = tl.zeros((R, R), dtype=tl.float32)
    for t in range(t0, t0 + ROWS, BT):
        rows = t + tl.arange(0, BT)
        rmask = rows[:, None] < T
        ub = tl.load(u_ptr + rows[:, None] * su + cols[None, :], mask=rmask, other=0.0)
        gb = tl.load(g_ptr + rows[:, None] * sg + j[None, :], mask=rmask, other=0.0)
        if NEED_DA or NEED_DC:
            xb = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=rmask, other=0.0)
            if X_MUL:  # x = x * x2 rounded once, as the eager product (silu(gate) * up)
                x2 = tl.load(x2_ptr + rows[:, None] * sx2 + cols[None, :], mask=rmask, other=0.0)
                xb = (xb.to(tl.float32) * x2.to(tl.float32)).to(xb.dtype)
        # every dot reads loaded tiles as they are, so the pipeliner prefetches them (forming
        # du = h + g first and reading du was 15 to 20% slower, call 62); bat-row is bone-ab
        # with C = A and dC added into dA
        if NEED_DA:
            da = tl.dot(tl.trans(ub), xb, da)
            if not BONE_AB:
                da = tl.dot(tl.trans(gb), xb, da)
        if NEED_DC:
            dc = tl.dot(tl.trans(gb), xb, dc)
        if NEED_DX:
            dxb = tl.dot(ub, am, ub.to(tl.float32))
            dxb = tl.dot(gb, cm, dxb)
            if ACC:  # a sibling's input gradient is already there: add, saving an add_ pass
                dxb += tl.load(dx_ptr + rows[:, None] * sdx + cols[None, :], mask=rmask, other=0.0).to(tl.float32)
            tl.store(dx_ptr + rows[:, None] * sdx + cols[None, :], dxb.to(dx_ptr.dtype.element_ty), mask=rmask)
    if NEED_DA:
        tl.atomic_add(da_ptr + b * R * R + j[:, None] * R + j[None, :], da)
    if NEED_DC:
        tl.atomic_add(dc_ptr + b * R * R + j[:, None] * R + j[None, :], dc)


def row_affine_bwd(
    u: torch.Tensor,
    x: torch.Tensor,
    g: torch.Tensor,
    a: torch.Tensor,
    c: torch.Tensor | None,
    need_dx: bool,
    need_da: bool,
    need_dc: bool,
    grads: torch.Tensor | None = None,
    dx: torch.Tensor | None = None,
    x2: torch.Tensor | None = None,
):
    """Input gradient and ``dA``/``dC`` (float32) of the row-affine layer from ``h = dy W``.

    bat-row (``c=None``): ``dx_b = h_b + (h_b + g) A_b``, ``dA_b = (h_b + g)^T x_b``, each
    as two dots on the loaded tiles. bone-ab: ``dx_b = h_b + h_b A_b + g C_b``,
    ``dA_b = h_b^T x_b``, ``dC_b = g^T x_b``. ``grads`` may give their zeroed float32 buffer, ``(need_da + need_dc,
    nb, r, r)`` (a group zeroes all its members' in one launch). With ``dx`` given (a
    sibling's input gradient, same shape), this layer's is added into it in place. With
    ``x2`` (same shape and dtype as ``x``), the layer input is ``x * x2``, formed as it is
    loaded (the down_proj input ``silu(gate) * up`` is never recomputed into memory).
    """
    t, inn = u.shape
    nb, r, _ = a.shape
    acc = dx is not None and need_dx
    if not acc:
        dx = torch.empty(t, inn, device=u.device, dtype=u.dtype) if need_dx else u
    if grads is None and (need_da or need_dc):
        grads = torch.zeros(need_da + need_dc, nb, r, r, device=u.device, dtype=torch.float32)
    da = grads[0] if need_da else g
    dc = grads[-1] if need_dc else g
    cfg = CONFIG["row_affine_bwd"]
    xm = x2 is not None and (need_da or need_dc)
    args = [
        u,
        x,
        x2 if xm else x,
        g,
        a,
        c if c is not None else a,
        dx,
        da,
        dc,
        t,
        cfg["BT"],
        u.stride(0),
        x.stride(0),
        x2.stride(0) if xm else 0,
        g.stride(0),
        dx.stride(0),
    ]
    kw = dict(
        R=r,
        BT=cfg["BT"],
        BONE_AB=c is not None,
        NEED_DX=need_dx,
        NEED_DA=need_da,
        NEED_DC=need_dc,
        ACC=acc,
        X_MUL=xm,
        **_launch("row_affine_bwd"),
    )
    # one wave: each program walks `rows` tokens of one block, summing its dA in registers
    kw, fit = _fit(_row_affine_bwd_kernel, args, kw, u.device)
    per_sm = cfg["PER_SM"] or fit
    chunks = max(1, min(triton.cdiv(t, cfg["BT"]), per_sm * _num_sms(u.device) // nb))
    rows = triton.cdiv(triton.cdiv(t, chunks), cfg["BT"]) * cfg["BT"]
    args[10] = rows
    _row_affine_bwd_kernel[(nb, triton.cdiv(t, rows))](*args, **kw)
    return (dx if need_dx else None, da if need_da else None, dc if need_dc else None)


# --------------------------------------------------------------------------- weight space
@triton.jit
def _weight_build_kernel(w_ptr, b_ptr, o_ptr, NB, BPP, sw, so, R: tl.constexpr, HADAMARD: tl.constexpr):
    a = tl.program_id(0)
    i = tl.arange(0, R)
    # B_a cast here to W's dtype (B may be the float32 master): the same rounding as a cast
    bm = tl.load(b_ptr + a * R * R + i[:, None] * R + i[None, :]).to(o_ptr.dtype.element_ty)
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
            tl.store(o_ptr + (a * R + i[:, None]) * so + b * R + i[None, :], new.to(o_ptr.dtype.element_ty))


def weight_build(w: torch.Tensor, b: torch.Tensor, hadamard: bool) -> torch.Tensor:
    """``W'`` of bat (``W_ab (I + B_a) + B_a``) or bat-hadamard, in one pass over ``W``."""
    out, inn = w.shape
    na, r, _ = b.shape
    nb = inn // r
    o = torch.empty(out, inn, device=w.device, dtype=w.dtype)
    bpp = _blocks_per_program(na, nb, w.device)
    _weight_build_kernel[(na, triton.cdiv(nb, bpp))](
        w, b, o, nb, bpp, w.stride(0), o.stride(0), R=r, HADAMARD=hadamard, **_launch("weight_build")
    )
    return o


@triton.jit
def _weight_grad_kernel(w_ptr, g_ptr, db_ptr, NB, BPP, sw, sg, R: tl.constexpr, HADAMARD: tl.constexpr):
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
    _weight_grad_kernel[(na, triton.cdiv(nb, bpp))](
        w, g, db, nb, bpp, w.stride(0), g.stride(0), R=r, HADAMARD=hadamard, **_launch("weight_grad")
    )
    return db


def _blocks_per_program(na: int, nb: int, device) -> int:
    """Enough programs to fill the chip (about 8 per SM), each walking several blocks."""
    want = 8 * _num_sms(device)
    return max(1, triton.cdiv(na * nb, want))


_SMS: dict[int, int] = {}


_FITTED: dict[tuple, tuple[dict, int]] = {}


def _fit(fn, args: list, kwargs: dict, device) -> tuple[dict, int]:
    """``(kwargs, per_sm)`` for launching ``fn`` on these arguments: ``num_stages`` lowered
    until the compiled kernel fits an SM's shared memory (each stage holds one step's tiles,
    so a larger r, float32 operands or a second adapter need more room per stage), and how
    many of its programs one SM holds at once: the least that its registers, shared memory
    and warp slots allow. A grid of ``per_sm`` programs per SM runs in one wave; one more
    per SM starts a second. Cached per constexpr/launch setting and dtypes; on the CPU
    (Triton's interpreter) the kwargs as given and 2."""
    key = (fn, tuple(kwargs.items()), tuple(v.dtype for v in args if torch.is_tensor(v)))
    hit = _FITTED.get(key)
    if hit is not None:
        return hit
    if torch.device(device).type != "cuda":
        return kwargs, 2
    kw = dict(kwargs)
    while True:
        try:
            k = fn.warmup(*args, grid=(1,), **kw)  # compiles (or finds) it, launches nothing
            k._init_handles()  # loads it: checks its shared memory, fills n_regs
            break
        except triton.runtime.errors.OutOfResources:
            if kw["num_stages"] <= 1:
                raise
            kw["num_stages"] -= 1
    props = torch.cuda.get_device_properties(device)
    warps = k.metadata.num_warps
    per_warp = -(-k.n_regs * 32 // 256) * 256  # registers are allocated per warp, 256 at a time
    by_regs = getattr(props, "regs_per_multiprocessor", 65536) // (per_warp * warps)
    smem = getattr(props, "shared_memory_per_multiprocessor", 233472)
    by_smem = smem // (k.metadata.shared + 1024)  # the runtime reserves 1 KiB per block
    by_warps = props.max_threads_per_multi_processor // (32 * warps)
    hit = _FITTED[key] = (kw, max(1, min(by_regs, by_smem, by_warps, 32)))
    return hit


def _num_sms(device) -> int:
    dev = torch.device(device)
    if dev.type != "cuda":  # Triton's interpreter (TRITON_INTERPRET=1) on CPU tensors
        return 4
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    if idx not in _SMS:
        _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SMS[idx]
