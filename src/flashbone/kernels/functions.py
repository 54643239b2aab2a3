"""CUDA autograd Functions of the Bone family: Triton kernels around cuBLAS GEMMs.

Same math as :mod:`flashbone.ops.torch_ops`; what changes is how many passes over memory
each step makes (``|x|`` = one read or write of a ``T x in`` tensor)::

    bone        fwd  s = x P (block sum), z = s B         one read of x (shared by q/k/v), z written
                     y = z + x W^T   (+ bias)             GEMM accumulating onto z
                bwd  ds = dy B^T, c = tile_in(ds)         one read of dy, c written (Triton)
                     dx = c + dy W;  dB = s^T dy          GEMM onto c; skinny GEMM over dy
    bone, padded fwd y = [x | s] W_ext^T, W_ext = [W|B^T] one GEMM, K = in + r
                bwd  [h | ds] = dy W_ext                  one GEMM, N = in + r (members accumulate)
                     dx = h + tile_in(ds); dB = s^T dy    one pass (Triton); skinny GEMM over dy
    row-affine  fwd  z, vsum = row_affine_fwd(x)          one read of x, one write of z
                     y = tile_out(vsum) + z W^T           tile written (rank_r), GEMM onto it
                bwd  g = dy P (block sum); h = dy W       one read of dy; the base GEMM
                     dx, dA, dC = row_affine_bwd(h, x, g) one read of h and x, one write of dx
    weight      fwd  W' = build(W, B); y = x W'^T         one pass over W, GEMM
    space       bwd  W' rebuilt; dx = dy W'; G = dy^T x   two GEMMs (G: the third token GEMM)
                     dB = weight_grad(W, G)               one read of W and G

``P`` is the 0/1 matrix of :func:`.triton_kernels.block_ones`: the skinny GEMMs (``x P``,
``s B``, ``dy B^T``, ``s^T dy``) go to cuBLAS, which streams these operands at least as fast as
our Triton reduce and costs half its host time per launch (scripts/tune_kernels.py).
"Onto" means cuBLAS reads the addend as ``C`` with ``beta = 1`` in its
epilogue (about 1.2 ms/step for bone on the bench shape; a Triton GEMM that adds the rank-r term
before storing was 5 to 9% slower than cuBLAS on H100 and was removed: docs/kernel_notes.md).
The other way needs no addend at all: with the frozen weight padded to ``W_ext = [W | X]`` (:mod:`.padded`) cuBLAS runs the rank-r term as r
more columns of K or N of the token GEMM (bat-row both ways, bone's forward: BonePaddedCuda).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import padded, replay
from . import triton_kernels as K


def _bias_grad(ctx, dy: Tensor, index: int) -> Tensor | None:
    return dy.sum(0) if ctx.needs_input_grad[index] else None


def _shared_block_sum(x: Tensor, r: int) -> Tensor:
    """``x P``, computed once per input while it lives (q/k/v read the same input)."""
    s = replay.cached(x, ("block_sum", r))
    if s is None:
        s = K.block_sum(x, r)
        replay.store(x, ("block_sum", r), s)
    return s


class BoneCuda(torch.autograd.Function):
    """``y = x W^T + bias + (sum_b x_b) B`` for ``B (r, out)``; saves only ``s`` (``T x r``).

    ``b`` may be the float32 master: it is cast here (no autograd node) and ``dB`` comes back
    in its dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None, b_master: Tensor, r: int) -> Tensor:
        b = b_master if b_master.dtype == x.dtype else b_master.to(x.dtype)

        s = _shared_block_sum(x, r)  # once per input; z = s B + bias, then z += x W^T
        z = torch.addmm(bias, s, b) if bias is not None else s @ b
        y = z.addmm_(x, w.t())
        ctx.save_for_backward(w, b, s)
        ctx.r, ctx.b_dtype = r, b_master.dtype
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        w, b, s = ctx.saved_tensors
        dx, _, dbias, db = _bone_backward(ctx, dy.contiguous(), w, b, s, ctx.r, ctx.b_dtype)
        return dx, None, dbias, None if db is None else db.to(ctx.b_dtype), None


def _bone_backward(ctx, dy: Tensor, w: Tensor, b: Tensor, s: Tensor, r: int, db_dtype: torch.dtype) -> tuple:
    """``(dx, None, dbias, dB)`` of bone: ``dx = dy W + tile_in(dy B^T)``, ``dB = s^T dy``
    (float32 straight from its GEMM when ``db_dtype`` is float32, else in ``dy``'s dtype)."""
    inn = w.shape[1]
    dx = db = None
    if ctx.needs_input_grad[0]:
        ds = dy @ b.t()
        dx = K.rank_r(None, r, v=ds, expand="tile", n=inn)[1].addmm_(dy, w)
    if ctx.needs_input_grad[3]:  # (computing dB right after ds measured slower: call 43)
        db = _bone_db(s, dy, db_dtype)
    return dx, None, _bias_grad(ctx, dy, 2), db


def _bone_db(s: Tensor, dy: Tensor, dtype: torch.dtype) -> Tensor:
    """``dB = s^T dy``: float32 straight from the GEMM for a float32 master, else ``dy``'s dtype."""
    return mm_float32(s.t(), dy) if dtype == torch.float32 else s.t() @ dy


def _compute_b(w: Tensor, b: Tensor, key: object, r: int, dtype: torch.dtype) -> Tensor:
    """``B (r, out)`` in the compute dtype for a padded bone backward: read back from the spare
    columns when this forward's copy is still there, else cast again."""
    if padded.holds(w, key):
        return _extended_saved(w, r)[:, w.shape[1] :].t()
    return b.to(dtype)


class BonePaddedCuda(torch.autograd.Function):
    """bone with the padded weight ``W_ext = [W | B^T]`` (:mod:`.padded`): one GEMM forward,
    ``y = [x | s] W_ext^T``, over a copy ``[x | s]`` that q/k/v (or gate/up) share.

    ``b`` is the master ``B`` (float32 in training): the forward's one copy into the spare
    columns also casts it, and ``dB`` is computed in float32 by its GEMM, so no separate cast
    runs in either direction. The backward takes ``[h | ds] = dy W_ext`` and one tile-add pass
    (:func:`_padded_input_grad`; the columns are written again if another call used them
    since). ``CONFIG["bone_bwd"]["PADDED"] = 0`` keeps the addend path instead (``ds = dy B^T``,
    its tile, cuBLAS adding onto it): 1.123x against 1.096x the floor at 4 x 409 tokens, both
    as CUDA graphs on an H200 (docs/benchmarks.md).
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None, b: Tensor, r: int, wx: Tensor) -> Tensor:
        xe, s = shared_extended_input(x, r)
        ctx.key = object()
        padded.fill_(w, wx, b.t(), key=ctx.key)
        y = torch.addmm(bias, xe, wx.t()) if bias is not None else xe @ wx.t()
        ctx.save_for_backward(w, b, s)
        ctx.r = r
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        w, b, s = ctx.saved_tensors
        dy = dy.contiguous()
        if K.CONFIG["bone_bwd"]["PADDED"]:
            dx = _padded_input_grad([(dy, w, b, ctx.key)], ctx.r) if ctx.needs_input_grad[0] else None
            db = _bone_db(s, dy, b.dtype).to(b.dtype) if ctx.needs_input_grad[3] else None
            return dx, None, _bias_grad(ctx, dy, 2), db, None, None
        bc = _compute_b(w, b, ctx.key, ctx.r, dy.dtype)
        dx, _, dbias, db = _bone_backward(ctx, dy, w, bc, s, ctx.r, b.dtype)
        return dx, None, dbias, None if db is None else db.to(b.dtype), None, None


def _padded_input_grad(members: list[tuple[Tensor, Tensor, Tensor, object]], r: int) -> Tensor:
    """``dx = sum_i (dy_i W_i + tile(dy_i B_i^T))`` for members ``(dy_i, w_i, b_i, key_i)``:
    ``[h | ds] = sum_i dy_i W_ext_i`` (N = in + r: the ``ds`` columns come out of the token
    GEMMs, which cuBLAS accumulates over the members), then one pass ``dx = h + tile(ds)``.
    Instead of a skinny split-K GEMM per member for ``ds``, a tile write and cuBLAS reading it
    back: fewer, larger kernels (what a micro-batch of a few thousand tokens is short of)."""
    hg = None
    for dy, w, b, key in members:
        wx = _extended_saved(w, r)
        padded.fill_(w, wx, b.t(), key=key)  # (skipped when the columns still hold this forward's B^T)
        hg = dy @ wx if hg is None else hg.addmm_(dy, wx)
    inn = hg.shape[1] - r
    return K.rank_r(None, r, v=hg[:, inn:], expand="tile", n=inn, add=hg[:, :inn])[1]


class BoneGroupCuda(torch.autograd.Function):
    """Several padded bone layers that read the same input (q/k/v, gate/up) as one node.

    Forward: one shared ``[x | s]``, then per member its ``B^T`` copy and its GEMM, as in
    :class:`BonePaddedCuda`. Backward: ``ds = sum_i dy_i B_i^T`` accumulated by cuBLAS, one tile
    of it, then ``dx = tile(ds) + sum_i dy_i W_i`` with every GEMM adding onto the same buffer:
    one tile launch instead of one per member, and no separate sums of the members' input
    gradients (autograd would add them pairwise). One Python forward and backward serve the group,
    which is host time the attention and MLP blocks are short of (docs/kernel_notes.md).

    ``flat`` holds ``(w, bias, b, wx)`` per member; ``b`` is the master ``B`` (or bone-mini's
    tiled copy) and ``dB`` comes back in its dtype.
    """

    @staticmethod
    def forward(ctx, x: Tensor, r: int, *flat):
        ctx.set_materialize_grads(False)
        xe, s = shared_extended_input(x, r)
        ys, saved, keys = [], [], []
        for i in range(0, len(flat), 4):
            w, bias, b, wx = flat[i : i + 4]
            key = object()
            padded.fill_(w, wx, b.t(), key=key)
            ys.append(torch.addmm(bias, xe, wx.t()) if bias is not None else xe @ wx.t())
            saved += [w, b]
            keys.append(key)
        ctx.save_for_backward(*saved, s)
        ctx.r, ctx.keys = r, keys
        return tuple(ys)

    @staticmethod
    def backward(ctx, *dys):
        *saved, s = ctx.saved_tensors
        r, need = ctx.r, ctx.needs_input_grad
        inn = saved[0].shape[1]
        padded_bwd = K.CONFIG["bone_bwd"]["PADDED"]
        ds, live, grads = None, [], []
        for i, dy in enumerate(dys):
            w, b = saved[2 * i], saved[2 * i + 1]
            if dy is None:  # this member's output took no part in the loss
                grads += [None, None, None, None]
                continue
            dy = dy.contiguous()
            if need[0] and padded_bwd:
                live.append((dy, w, b, ctx.keys[i]))
            elif need[0]:
                bc = _compute_b(w, b, ctx.keys[i], r, dy.dtype)
                ds = dy @ bc.t() if ds is None else ds.addmm_(dy, bc.t())
                live.append((dy, w))
            db = None
            if need[2 + 4 * i + 2]:
                db = _bone_db(s, dy, b.dtype).to(b.dtype)
            grads += [None, _bias_grad(ctx, dy, 2 + 4 * i + 1), db, None]
        dx = None
        if padded_bwd and live:
            dx = _padded_input_grad(live, r)
        elif ds is not None:
            dx = K.rank_r(None, r, v=ds, expand="tile", n=inn)[1]
            for dy, w in live:
                dx.addmm_(dy, w)
        return (dx, None, *grads)


class RowAffineGroupCuda(torch.autograd.Function):
    """Several padded row-affine layers (bat-row or bone-ab) that read the same input, as one
    node: each member runs as in :class:`RowAffineCuda` with its padded weight, but the group
    saves (or plans the recompute of) ``x`` once and has one Python forward and backward.

    ``flat`` holds ``(w, bias, a, c, wx)`` per member (``c`` is ``None`` for bat-row).
    """

    @staticmethod
    def forward(ctx, x: Tensor, r: int, *flat):
        ctx.set_materialize_grads(False)
        ys, rest = [], []
        for i in range(0, len(flat), 5):
            w, bias, a, c, wx = flat[i : i + 5]
            ys.append(_row_affine_padded_fwd(x, w, bias, a, c, r, wx))
            rest += [w, a, c]
        replay.save_input(ctx, x, *rest)
        ctx.r = r
        return tuple(ys)

    @staticmethod
    def backward(ctx, *dys):
        x, *rest = replay.saved_input(ctx)
        r, need = ctx.r, ctx.needs_input_grad
        # one zeroed buffer for every member's dA (and dC): each gradient is a slice of it
        wants = [
            (need[2 + 5 * i + 2], rest[3 * i + 2] is not None and need[2 + 5 * i + 3])
            if dy is not None
            else (False, False)
            for i, dy in enumerate(dys)
        ]
        bufs = torch.zeros(sum(map(sum, wants)), *rest[1].shape, device=x.device, dtype=torch.float32)
        dx, grads, used = None, [], 0
        for i, dy in enumerate(dys):
            w, a, c = rest[3 * i : 3 * i + 3]
            at = 2 + 5 * i  # this member's first input index
            if dy is None:  # this member's output took no part in the loss
                grads += [None] * 5
                continue
            k = sum(wants[i])
            into = dx if K.CONFIG["row_affine_bwd"]["ACC"] else None  # add inside the kernel
            dxi, da, dc = _row_affine_padded_bwd(
                dy.contiguous(), x, w, a, c, r, need[0], *wants[i], bufs[used : used + k] if k else None, into
            )
            used += k
            if dxi is not None and dxi is not dx:
                dx = dxi if dx is None else dx.add_(dxi)
            grads += [
                None,
                _bias_grad(ctx, dy, at + 1),
                None if da is None else da.to(a.dtype),
                None if dc is None else dc.to(c.dtype),
                None,
            ]
        return (dx, None, *grads)


_MM_DTYPE: bool | None = None  # whether torch.mm takes out_dtype here (CUDA, PyTorch >= 2.8)


def mm_float32(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of half-precision operands, returned in float32 by the GEMM itself (no
    rounding to half and no cast kernel: the gradient of a float32 master tensor)."""
    global _MM_DTYPE
    if _MM_DTYPE is not False and a.is_cuda:
        try:
            y = torch.mm(a, b, out_dtype=torch.float32)
            _MM_DTYPE = True
            return y
        except (TypeError, RuntimeError, NotImplementedError):
            if _MM_DTYPE:  # it worked before: a real error
                raise
            _MM_DTYPE = False
    return (a @ b).float()


class RowAffineCuda(torch.autograd.Function):
    """``y = (x + u) W^T + bias + tile_out(sum_b v_b)``; bat-row (``c=None``) and bone-ab.

    With ``wx`` (``W_ext = [W | E]``, :mod:`.padded`): ``y = [z | vsum] W_ext^T`` and
    ``[h | g] = dy W_ext``, so neither the tile of ``vsum`` nor ``g``'s pass over ``dy`` exists.
    """

    @staticmethod
    def forward(ctx, x, w, bias, a, c, r: int, wx: Tensor | None):
        out = w.shape[0]
        if wx is not None:
            y = _row_affine_padded_fwd(x, w, bias, a, c, r, wx)
        else:
            z, vsum = K.row_affine_fwd(x, a, c)
            y = K.rank_r(None, r, v=vsum, expand="tile", n=out, out_dtype=x.dtype, bias=bias)[1].addmm_(z, w.t())
        replay.save_input(ctx, x, w, a, c)
        ctx.r, ctx.padded = r, wx is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        if K.CONFIG["row_affine_bwd"]["X_MUL"]:  # x = x1 * x2 formed inside the kernel
            (x, w, a, c), x2 = replay.saved_input_factors(ctx)
        else:
            (x, w, a, c), x2 = replay.saved_input(ctx), None
        dy = dy.contiguous()
        r, need = ctx.r, ctx.needs_input_grad
        wants = (need[0], need[3], c is not None and need[4])
        if ctx.padded:
            dx, da, dc = _row_affine_padded_bwd(dy, x, w, a, c, r, *wants, x2=x2)
        else:
            g = K.block_sum(dy, r)
            u = dy @ w  # h, the gradient of z = x + u
            dx, da, dc = K.row_affine_bwd(u, x, g, a, c, *wants, x2=x2)
        return (
            dx,
            None,
            _bias_grad(ctx, dy, 2),
            None if da is None else da.to(a.dtype),
            None if dc is None else dc.to(c.dtype),
            None,
            None,
        )


def _row_affine_padded_fwd(
    x: Tensor, w: Tensor, bias: Tensor | None, a: Tensor, c: Tensor | None, r: int, wx: Tensor
) -> Tensor:
    """``y = [z | vsum] W_ext^T`` (K = in + r): the row-affine pass writes ``z`` into the first
    columns of one buffer and ``vsum`` into the last r, and ``W_ext = [W | E]``."""
    out, inn = w.shape
    ze = torch.empty(x.shape[0], inn + r, device=x.device, dtype=x.dtype)
    K.row_affine_fwd(x, a, c, z=ze[:, :inn], vsum=ze[:, inn:])
    padded.fill_(w, wx, K.block_ones(out, r, x.dtype, x.device), key=("E", r))
    return torch.addmm(bias, ze, wx.t()) if bias is not None else ze @ wx.t()


def _row_affine_padded_bwd(
    dy: Tensor,
    x: Tensor,
    w: Tensor,
    a: Tensor,
    c: Tensor | None,
    r: int,
    need_dx: bool,
    need_da: bool,
    need_dc: bool,
    grads: Tensor | None = None,
    dx: Tensor | None = None,
    x2: Tensor | None = None,
):
    """``(dx, dA, dC)`` from ``[h | g] = dy [W | E]`` (N = in + r): ``g = sum_a dy_a``, the
    gradient of every ``v_b``, comes out of the token GEMM. A given ``dx`` is added to; with
    ``x2`` the layer input is ``x * x2``."""
    out, inn = w.shape
    wx = _extended_saved(w, r)
    padded.fill_(w, wx, K.block_ones(out, r, dy.dtype, dy.device), key=("E", r))
    hg = dy @ wx
    return K.row_affine_bwd(hg[:, :inn], x, hg[:, inn:], a, c, need_dx, need_da, need_dc, grads, dx, x2)


def _extended_saved(w: Tensor, r: int) -> Tensor:
    """``W_ext`` around a weight saved in forward (its storage still has the spare columns)."""
    out, inn = w.shape
    if w.stride() != (inn + r, 1):
        raise RuntimeError(
            f"the base weight {tuple(w.shape)} lost its padded layout between forward and "
            "backward (moved or copied in between?); set FLASHBONE_PADDED=0 to avoid padding"
        )
    return w.data.as_strided((out, inn + r), (inn + r, 1))


def has_extended_input(x: Tensor, r: int) -> bool:
    """Whether ``[x | x P]`` was built for this input (an earlier consumer of ``x``)."""
    return replay.cached(x, ("extended", r)) is not None


def shared_extended_input(x: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """``([x | s], s)`` with ``s = x P``: one pass over ``x`` (:func:`.triton_kernels.extend_input`),
    kept while ``x`` lives so that q/k/v (or gate/up) share it."""
    hit = replay.cached(x, ("extended", r))
    if hit is None:
        hit = K.extend_input(x, r)
        replay.store(x, ("extended", r), hit)
        replay.store(x, ("block_sum", r), hit[1])
    return hit


class WeightSpaceCuda(torch.autograd.Function):
    """``y = x W'^T + bias``, ``W'`` built in one pass in forward and again in backward."""

    @staticmethod
    def forward(ctx, x, w, bias, b, hadamard: bool):
        w_new = K.weight_build(w, b, hadamard)
        y = torch.addmm(bias, x, w_new.t()) if bias is not None else x @ w_new.t()
        replay.save_input(ctx, x, w, b)
        ctx.hadamard = hadamard
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, b = replay.saved_input(ctx)
        dy = dy.contiguous()
        dx = db = None
        if ctx.needs_input_grad[0]:
            w_new = K.weight_build(w, b, ctx.hadamard)
            dx = dy @ w_new
            del w_new
        if ctx.needs_input_grad[3]:
            g = dy.t() @ x  # gradient of W' (out, in): the third token GEMM
            db = K.weight_grad(w, g, b.shape[1], ctx.hadamard).to(b.dtype)
        return dx, None, _bias_grad(ctx, dy, 2), db, None
