"""A Triton GEMM with the Bone family's addends in its epilogue (``FLASHBONE_GEMM=triton``).

    C = A @ Bm (+ S @ P) (+ tile(t)) (+ bias)        one GEMM; the addend is never written

``tile(t)[m, n] = t[m, n mod r]``. The alternative to writing the addend and letting cuBLAS
accumulate onto it. Measured slower than cuBLAS on the LLaMA shapes of docs/benchmarks.md, so
it is not the default; ``auto`` times both once per shape.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


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
