"""A persistent TMA GEMM (Hopper) whose last K-slab is Bone's rank-r term: no addend in memory.

    bone fwd  y  = x W^T  + s B     (+ bias)   a = x (M, K), w = W (N, K): both K-major
    bone bwd  dx = dy W   + tile(ds)           a = dy (M, K), w = W (K, N): N-major
    bat-row   y  = z W^T  + tile(vsum) (+ bias)

    acc  = sum over K tiles  a[m, k] w[k, n]                 (TMA loads, software pipelined)
    acc += S (BM x R) @ E (R x BN)                           one more slab on the tensor cores:
           s B:      S = s,  E = B tile                      (B given as B^T (N, R), K-major)
           tile(t):  S = t,  E[j, n] = (n mod R == j)        (built in registers, exact 0/1)

``tile(ds)[m, n] = ds[m, n mod R]``. With cuBLAS, the addend (``s B`` or ``tile(ds)``, ``T x N``)
is written by one kernel and read back by the GEMM's epilogue; here it never reaches memory.
Tiles are persistent (one program per SM, grouped along M for L2 reuse); block sizes are
autotuned once per shape. Needs Hopper (TMA), 16-byte aligned rows, and bf16/fp16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

try:  # Triton >= 3.4 (host-side TMA descriptors)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # older Triton: usable() says no and the callers take another path
    TensorDescriptor = None


def _configs():
    return [triton.Config({"BM": 128, "BN": bn, "BK": 64, "GROUP_M": 8}, num_stages=s, num_warps=w)
            for bn in (128, 256) for s in (3, 4) for w in (4, 8)
            if not (bn == 256 and s == 4)]  # 128x256 with 4 stages overflows shared memory


@triton.jit
def _tile_pid(tile, num_m, num_n, GROUP_M: tl.constexpr):
    group = GROUP_M * num_n
    first_m = (tile // group) * GROUP_M
    size_m = min(num_m - first_m, GROUP_M)
    return first_m + (tile % group) % size_m, (tile % group) // size_m


@triton.autotune(configs=_configs(), key=["M", "N", "K", "K_MAJOR", "TILE", "HAS_BIAS"])
@triton.jit
def _bone_gemm_kernel(a_desc, w_desc, s_desc, e_desc, c_desc, bias_ptr, M, N, K,
                      R: tl.constexpr, K_MAJOR: tl.constexpr, TILE: tl.constexpr,
                      HAS_BIAS: tl.constexpr,
                      NUM_SMS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr, GROUP_M: tl.constexpr):
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    k_tiles = tl.cdiv(K, BK)
    dtype = c_desc.dtype
    for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_SMS, flatten=True):
        pid_m, pid_n = _tile_pid(tile, num_m, num_n, GROUP_M)
        om = pid_m * BM
        on = pid_n * BN
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for ki in range(k_tiles):
            a = a_desc.load([om, ki * BK])
            if K_MAJOR:
                acc = tl.dot(a, w_desc.load([on, ki * BK]).T, acc)
            else:
                acc = tl.dot(a, w_desc.load([ki * BK, on]), acc)
        s = s_desc.load([om, 0])  # (BM, R): the rank-r slab
        if TILE:
            n = on + tl.arange(0, BN)
            e = ((n[None, :] % R) == tl.arange(0, R)[:, None]).to(dtype)
            acc = tl.dot(s, e, acc)
        else:
            acc = tl.dot(s, e_desc.load([on, 0]).T, acc)
        if HAS_BIAS:
            n = on + tl.arange(0, BN)
            acc += tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
        c_desc.store([om, on], acc.to(dtype))


_SMS: dict[int, int] = {}


def _sms(dev: torch.device) -> int:
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    if idx not in _SMS:
        _SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SMS[idx]


def _set_block_shapes(nargs):
    """Autotune hook: the descriptors' block shapes follow the config being tried."""
    bm, bn, bk, r = nargs["BM"], nargs["BN"], nargs["BK"], nargs["R"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["w_desc"].block_shape = [bn, bk] if nargs["K_MAJOR"] else [bk, bn]
    nargs["s_desc"].block_shape = [bm, r]
    nargs["e_desc"].block_shape = [bn, r]
    nargs["c_desc"].block_shape = [bm, bn]


for _c in _bone_gemm_kernel.configs:
    _c.pre_hook = _set_block_shapes


def _alloc(size: int, alignment: int, stream):
    return torch.empty(size, device="cuda", dtype=torch.int8)


def usable(*tensors: torch.Tensor) -> bool:
    """Hopper or newer, 2-D, unit last stride and 16-byte aligned rows and bases (TMA's rules)."""
    t0 = tensors[0]
    if TensorDescriptor is None or not (t0.is_cuda and torch.cuda.get_device_capability(t0.device)[0] >= 9):
        return False
    for t in tensors:
        es = t.element_size()
        if t.dim() != 2 or t.stride(1) != 1 or (t.stride(0) * es) % 16 or t.data_ptr() % 16:
            return False
    return True


def bone_gemm(a: torch.Tensor, w: torch.Tensor, s: torch.Tensor, *, k_major: bool,
              bt: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
    """One persistent TMA GEMM with a rank-r slab, never writing the addend:

    ``a @ W^T`` (``k_major``, ``w = W (N, K)``) or ``a @ W`` (``w = W (K, N)``), plus
    ``s @ B`` when ``bt = B^T (N, R)`` is given, else ``tile(s)``; plus ``bias``."""
    m, k = a.shape
    n = w.shape[0] if k_major else w.shape[1]
    r = s.shape[1]
    c = torch.empty(m, n, device=a.device, dtype=a.dtype)
    e = bt if bt is not None else s  # the tile form builds E in registers: a placeholder
    descs = [TensorDescriptor.from_tensor(t, [1, 1]) for t in (a, w, s, e, c)]
    nsm = _sms(a.device)
    triton.set_allocator(_alloc)
    grid = lambda meta: (min(nsm, triton.cdiv(m, meta["BM"]) * triton.cdiv(n, meta["BN"])),)  # noqa: E731
    _bone_gemm_kernel[grid](*descs, bias if bias is not None else c, m, n, k, R=r,
                            K_MAJOR=k_major, TILE=bt is None, HAS_BIAS=bias is not None,
                            NUM_SMS=nsm)
    return c
