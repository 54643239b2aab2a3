"""Adapted linear layers over a quantised base (see :mod:`flashbone.quant` for the forms).

The base is given as two callables: ``base(x)``, the quantised layer's own forward (with its
input gradient), and ``dequant()``, a fresh dense ``(out, in)`` weight. Nothing here keeps a
dense copy of ``W`` beyond the one layer's forward or backward that needs it.

    4-bit base, bone / bone-mini first:  one node (torch_ops.BoneGroupLinear with one member),
    W dequantised in forward and in backward (q/k/v and gate/up: one node for the group,
    ``quantized_bone_group``); inside a checkpointed block, W is dequantised once for the
    recomputation and its backward
        y  = x W^T + bias + s B,        s = sum_b x_b        (T, r)
        dx = dy W + tile_in(dy B^T),    dB = s^T dy
    bitsandbytes' own 4-bit forward is this ``dequantize -> F.linear`` too, but through four
    Python layers and a separate autograd node; at the papers' micro-batch the step was
    host-bound on them (docs/benchmarks.md). LLM.int8 (8-bit) is not a dequantised GEMM, so
    8-bit bases keep ``base(x)``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import AdapterCall, _additive_update, _composite_build, _flat, _split
from . import torch_ops as T

Dequant = Callable[[], Tensor]


class DequantWeightSpaceLinear(torch.autograd.Function):
    """``y = x W'^T + bias``, ``W' = build(dequant(), params)``: ``W`` dequantised in forward and
    again in backward, never saved (only ``x`` and the small parameters are)."""

    @staticmethod
    def forward(ctx, x, bias, dequant: Dequant, build, grad, *params):
        w = dequant().to(x.dtype)
        y = F.linear(x, build(w, params), bias)
        ctx.save_for_backward(x, *params)
        ctx.dequant, ctx.build, ctx.grad = dequant, build, grad
        return y

    @staticmethod
    def backward(ctx, dy):
        x, *params = ctx.saved_tensors
        w = ctx.dequant().to(x.dtype)
        dx = dy @ ctx.build(w, params) if ctx.needs_input_grad[0] else None
        dparams = [None] * len(params)
        if any(ctx.needs_input_grad[5:]):
            dparams = list(ctx.grad(w, params, dy.t() @ x))
        dbias = dy.sum(0) if ctx.needs_input_grad[1] else None
        return (dx, dbias, None, None, None, *dparams)


def quantized_bone_group(
    x: Tensor, members: Sequence[tuple[Dequant, Tensor | None, AdapterCall, int]]
) -> list[Tensor] | None:
    """``quantized_linear`` of several 4-bit layers that read ``x`` (``(..., in)``), each
    ``(dequant, bias, call, out)`` with one adapter, as one node (:class:`torch_ops.BoneGroupLinear`,
    each weight dequantised in forward and again in backward); ``None`` unless every member is
    bone or bone-mini without dropout, all of one rank."""
    r = members[0][2].r
    if any(c.variant not in _BLOCK_SUM or c.dropout is not None or c.r != r for _, _, c, _ in members):
        return None
    lead = x.shape[:-1]
    flat = [t for _, bias, c, out in members for t in (bias, c.bone_b(out))]
    keep = T.inside_checkpoint()  # checkpointed: dequantise once for recompute and backward
    ys = T.BoneGroupLinear.apply(x.reshape(-1, x.shape[-1]), r, [m[0] for m in members], keep, *flat)
    return [y.view(*lead, y.shape[-1]) for y in ys]


# Hand-written (build, grad) of W' = W + dW(W); any other weight-reading variant builds W'
# from its dense delta and gets its gradient by autograd (T.autograd_weight_grad).
_WEIGHT_PATHS = {"bat": (T.bat_build, T.bat_grad), "bat-hadamard": (T.bat_hadamard_build, T.bat_hadamard_grad)}
_ROW_AFFINE = ("bat-row", "bone-ab")  # their own path: the base layer's forward on x + u
_BLOCK_SUM = ("bone", "bone-mini")  # additive, y += (sum_b x_b) B


def _row_affine(x: Tensor, base: Callable[[Tensor], Tensor], out: int, c: AdapterCall, dtype) -> Tensor:
    """bat-row / bone-ab: ``base(x + u) + tile_out(sum_b v_b)`` with plain autograd."""
    t, inn, r = x.shape[0], x.shape[1], c.r
    xb = x.view(t, inn // r, r)
    a = c.params["A"] if c.variant == "bone-ab" else c.params["B"]
    u = T.block_apply(xb, a)
    v = T.block_apply(xb, c.params["B"]) if c.variant == "bone-ab" else u
    y = base((xb + u).reshape(t, inn)).to(dtype)
    return (y.view(t, out // r, r) + v.sum(1)[:, None, :]).view(t, out)


def quantized_linear(
    x: Tensor,
    base: Callable[[Tensor], Tensor],
    dequant: Dequant,
    bias: Tensor | None,
    out: int,
    calls: Sequence[AdapterCall],
    dtype: torch.dtype,
    dequant_is_base: bool = False,
) -> Tensor:
    """``x @ W_adapted^T + bias`` with ``W`` quantised; same semantics as ``adapted_linear``.
    ``dequant_is_base``: ``base(x)`` is ``F.linear(x, dequant())`` (bitsandbytes 4-bit), so
    bone and bone-mini may fuse with it into one node."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(dtype)
    reading, additive = _split(calls)
    if len(reading) == 1 and reading[0].variant in _ROW_AFFINE:
        y = _row_affine(x2, base, out, reading[0], dtype)
    elif reading:
        hand_written = _WEIGHT_PATHS.get(reading[0].variant) if len(reading) == 1 else None
        if hand_written is not None:
            build, grad = hand_written
        else:
            build = _composite_build(reading)
            grad = T.autograd_weight_grad(build)
        b = None if bias is None else bias.to(dtype)
        y = DequantWeightSpaceLinear.apply(x2, b, dequant, build, grad, *_flat(reading))
    elif dequant_is_base and additive and additive[0].variant in _BLOCK_SUM and additive[0].dropout is None:
        c, additive = additive[0], additive[1:]
        b = None if bias is None else bias.to(dtype)
        (y,) = T.BoneGroupLinear.apply(x2, c.r, [dequant], T.inside_checkpoint(), b, c.bone_b(out))
    else:
        y = base(x2).to(dtype)
    for c in additive:
        y = y + _additive_update(x2, out, c)
    return y.view(*lead, out)


__all__ = ["DequantWeightSpaceLinear", "quantized_bone_group", "quantized_linear"]
