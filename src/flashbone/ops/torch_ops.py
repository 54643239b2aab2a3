"""Fast PyTorch paths: the cheap exact forms, with hand-written backward passes.

Shapes: ``x`` is ``(T, in)`` (callers flatten batch dims), ``W`` is ``(out, in)`` and frozen,
``na = out / r`` output blocks, ``nb = in / r`` input blocks, ``x_b = x[:, b*r:(b+1)*r]``.

    bone           s = sum_b x_b                      y = x W^T + s B
                   dB = s^T dy      ds = dy B^T        dx = dy W + ds (to every block)
    bone group     layers i reading one x: one s, y_i = x W_i^T + s B_i
                   dx = sum_i dy_i W_i + (sum_i dy_i B_i^T) (to every block), one buffer
    row-affine     u_b = x_b A_b^T  v_b = x_b C_b^T    y = (x + u) W^T + tile_out(sum_b v_b)
    (bat-row: A=C=B; bone-ab: A, C=B)
                   h = dy W         g = sum_a dy_a
                   dA_b = h_b^T x_b (+ g^T x_b when C is A)  dC_b = g^T x_b
                   dx_b = h_b + h_b A_b + g C_b
    weight-space   W' = W + dW(W, p) built in forward, NOT saved: rebuilt in backward
    (bat, bat-hadamard, mixed)      y = x W'^T      dx = dy W'    G = dy^T x
                   dp = vjp of dW at G   (bat: dB_a = sum_b (W_ab + I)^T G_ab)

None of them materialises ``dW`` per token, and only ``bone`` gets away with saving less
than ``x`` (it saves ``s``, ``T x r``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

WeightBuild = Callable[[Tensor, Sequence[Tensor]], Tensor]
WeightGrad = Callable[[Tensor, Sequence[Tensor], Tensor], Sequence[Tensor]]


def saved_tensor_hooks_active() -> bool:
    """Whether saved-tensor hooks (e.g. non-reentrant checkpointing) are active right now."""
    try:
        return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None
    except (AttributeError, RuntimeError):  # unknown PyTorch internals: be conservative
        return True


def inside_checkpoint() -> bool:
    """Whether the innermost saved-tensor hooks are ``torch.utils.checkpoint``'s (non-reentrant
    checkpointing: tensors saved in a block's forward are dropped, and kept from its
    recomputation only until its backward). Any other hooks (offloading, ...), or PyTorch
    internals this does not know: False."""
    try:
        hooks = torch._C._autograd._top_saved_tensors_default_hooks(False)
    except (AttributeError, RuntimeError):
        return False
    return hooks is not None and getattr(hooks[0], "__module__", "") == "torch.utils.checkpoint"


def block_sum(x: Tensor, r: int) -> Tensor:
    """``s = sum_b x_b`` of ``(T, in) -> (T, r)``; a partial last block is zero-padded."""
    t, inn = x.shape
    nb, rem = divmod(inn, r)
    s = x[:, : nb * r].reshape(t, nb, r).sum(1)
    if rem:
        s[:, :rem] += x[:, nb * r :]
    return s


def add_to_blocks_(dx: Tensor, ds: Tensor, r: int) -> Tensor:
    """``dx_b += ds`` for every input block ``b`` (in place), the adjoint of ``block_sum``."""
    t, inn = dx.shape
    nb, rem = divmod(inn, r)
    dx[:, : nb * r].view(t, nb, r).add_(ds[:, None, :])
    if rem:
        dx[:, nb * r :] += ds[:, :rem]
    return dx


def _linear(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    return torch.addmm(bias, x, w.t()) if bias is not None else x @ w.t()


def _bias_grad(ctx, dy: Tensor, index: int) -> Tensor | None:
    return dy.sum(0) if ctx.needs_input_grad[index] else None


class BoneLinear(torch.autograd.Function):
    """``y = x W^T + bias + (sum_b x_b) B`` for ``B`` of shape ``(r, out)``."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, bias: Tensor | None, b: Tensor, r: int) -> Tensor:
        s = block_sum(x, r)
        y = _linear(x, w, bias)
        y.addmm_(s, b)  # accumulate into the base output: one GEMM call with beta=1
        ctx.save_for_backward(w, b, s)
        ctx.r = r
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        w, b, s = ctx.saved_tensors
        dx = db = None
        if ctx.needs_input_grad[0]:
            dx = add_to_blocks_(dy @ w, dy @ b.t(), ctx.r)
        if ctx.needs_input_grad[3]:
            db = s.t() @ dy
        return dx, None, _bias_grad(ctx, dy, 2), db, None


class BoneGroupLinear(torch.autograd.Function):
    """Several bone layers that read one input (q/k/v, gate/up) as one autograd node.

    ``weights[i]()`` gives member i's ``(out_i, in)`` weight: the frozen tensor itself, or a
    4-bit one dequantised (:mod:`.quantized`). ``keep``: save the weights for backward (a
    frozen tensor costs nothing; a dequantised one only inside a checkpointed block, whose
    recomputation runs just before its backward, so one block's weights live at a time), else
    call ``weights[i]()`` again there. ``flat`` holds ``(bias, B)`` per member. One Python forward and backward
    for the group, and the members' input gradients summed by cuBLAS into one buffer instead
    of pairwise by autograd: at a few thousand tokens a step is host-bound on exactly this."""

    @staticmethod
    def forward(ctx, x: Tensor, r: int, weights: Sequence[Callable[[], Tensor]], keep: bool, *flat):
        ctx.set_materialize_grads(False)
        s = block_sum(x, r)
        ys, ws = [], []
        for weight, bias, b in zip(weights, flat[::2], flat[1::2]):
            w = weight().to(x.dtype)
            ys.append(_linear(x, w, bias).addmm_(s, b))
            if keep:
                ws.append(w)
        ctx.save_for_backward(s, *flat[1::2], *ws)
        ctx.r, ctx.weights = r, weights
        return tuple(ys)

    @staticmethod
    def backward(ctx, *dys):
        s, *saved = ctx.saved_tensors
        bs, ws = saved[: len(ctx.weights)], saved[len(ctx.weights) :]
        need = ctx.needs_input_grad
        dx = ds = None
        grads = []
        for i, (dy, b, weight) in enumerate(zip(dys, bs, ctx.weights)):
            if dy is None:  # this member's output took no part in the loss
                grads += [None, None]
                continue
            if need[0]:
                w = ws[i] if ws else weight().to(dy.dtype)
                dx = dy @ w if dx is None else dx.addmm_(dy, w)
                ds = dy @ b.t() if ds is None else ds.addmm_(dy, b.t())
            grads += [dy.sum(0) if need[4 + 2 * i] else None, s.t() @ dy if need[5 + 2 * i] else None]
        if dx is not None:
            dx = add_to_blocks_(dx, ds, ctx.r)
        return (dx, None, None, None, *grads)


def block_apply(xb: Tensor, m: Tensor) -> Tensor:
    """``out[t, b] = xb[t, b] @ m_b^T`` for ``xb (T, nb, r)`` and ``m (nb, r, r)``."""
    return torch.bmm(xb.transpose(0, 1), m.transpose(1, 2)).transpose(0, 1)


def block_apply_t(xb: Tensor, m: Tensor) -> Tensor:
    """``out[t, b] = xb[t, b] @ m_b``."""
    return torch.bmm(xb.transpose(0, 1), m).transpose(0, 1)


def block_outer(gb: Tensor, xb: Tensor) -> Tensor:
    """``out_b = sum_t gb[t, b]^T xb[t, b]`` of shape ``(nb, r, r)``."""
    return torch.bmm(gb.transpose(0, 1).transpose(1, 2), xb.transpose(0, 1))


class RowAffineLinear(torch.autograd.Function):
    """``y = (x + u) W^T + bias + tile_out(sum_b v_b)``, ``u_b = x_b A_b^T``, ``v_b = x_b C_b^T``.

    ``c=None`` means ``C = A`` (bat-row); otherwise bone-ab with ``A``, ``C = B``.
    """

    @staticmethod
    def forward(ctx, x, w, bias, a, c, r: int):
        t, inn = x.shape
        out = w.shape[0]
        xb = x.view(t, inn // r, r)
        u = block_apply(xb, a)
        v = u if c is None else block_apply(xb, c)
        y = _linear((x.view(t, -1, r) + u).reshape(t, inn), w, bias)
        y.view(t, out // r, r).add_(v.sum(1)[:, None, :])
        ctx.save_for_backward(x, w, a, c)
        ctx.r = r
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, a, c = ctx.saved_tensors
        r = ctx.r
        t, inn = x.shape
        xb = x.view(t, inn // r, r)
        h = (dy @ w).view(t, inn // r, r)  # gradient of (x + u)
        g = dy.view(t, -1, r).sum(1)  # gradient of every v_b
        du = h + g[:, None, :] if c is None else h  # for bat-row u and v are one tensor
        da = block_outer(du, xb) if ctx.needs_input_grad[3] else None
        dc = None
        if c is not None and ctx.needs_input_grad[4]:
            dc = (g.t() @ x).view(r, -1, r).transpose(0, 1)
        dx = None
        if ctx.needs_input_grad[0]:
            dxb = h + block_apply_t(du, a)
            if c is not None:
                dxb = dxb + torch.einsum("tk,bkj->tbj", g, c)
            dx = dxb.reshape(t, inn)
        return dx, None, _bias_grad(ctx, dy, 2), da, dc, None


class WeightSpaceLinear(torch.autograd.Function):
    """``y = x W'^T + bias`` with ``W' = build(W, params)`` rebuilt in backward, never saved.

    ``grad(W, params, G)`` returns the parameter gradients given ``G = dy^T x``, the
    gradient of ``W'``. Memory stays near the frozen base: only ``x`` and the small
    parameters are saved, ``W'`` and ``G`` live for one layer's backward.
    """

    @staticmethod
    def forward(ctx, x, w, bias, build: WeightBuild, grad: WeightGrad, *params):
        w_new = build(w, params)
        y = _linear(x, w_new, bias)
        ctx.save_for_backward(x, w, *params)
        ctx.build, ctx.grad = build, grad
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, *params = ctx.saved_tensors
        w_new = ctx.build(w, params)
        dx = dy @ w_new if ctx.needs_input_grad[0] else None
        del w_new
        dparams = [None] * len(params)
        if any(ctx.needs_input_grad[5:]):
            dparams = list(ctx.grad(w, params, dy.t() @ x))
        return (dx, None, _bias_grad(ctx, dy, 2), None, None, *dparams)


def autograd_weight_grad(build: WeightBuild) -> WeightGrad:
    """A ``grad`` for :class:`WeightSpaceLinear` from any differentiable ``build``."""

    def grad(w: Tensor, params: Sequence[Tensor], g: Tensor) -> Sequence[Tensor]:
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_() for p in params]
            return torch.autograd.grad(build(w, leaves), leaves, g, allow_unused=True)

    return grad


# -- bat and bat-hadamard in closed form: batched GEMMs on views, no permute copies --------
# W viewed as (na, r*nb, r): row (i, b) of output block a holds W_ab[i, :].


def bat_build(w: Tensor, params: Sequence[Tensor]) -> Tensor:
    """``W'_ab = W_ab (I + B_a) + B_a``."""
    (b,) = params
    na, r, _ = b.shape
    wv = w.reshape(na, -1, r)
    w_new = torch.baddbmm(wv, wv, b)  # W + W B
    w_new.view(na, r, -1, r).add_(b[:, :, None, :])
    return w_new.reshape(w.shape)


def bat_grad(w: Tensor, params: Sequence[Tensor], g: Tensor) -> Sequence[Tensor]:
    """``dB_a = sum_b (W_ab + I)^T G_ab = Wv_a^T Gv_a + sum_b G_ab``."""
    (b,) = params
    na, r, _ = b.shape
    gv = g.reshape(na, -1, r)
    return (torch.baddbmm(gv.view(na, r, -1, r).sum(2), w.reshape(na, -1, r).transpose(1, 2), gv),)


def bat_hadamard_build(w: Tensor, params: Sequence[Tensor]) -> Tensor:
    """``W'_ab = W_ab * (1 + B_a) + B_a``."""
    (b,) = params
    na, r, _ = b.shape
    bb = b[:, :, None, :]
    wb = w.reshape(na, r, -1, r)
    return torch.addcmul(wb + bb, wb, bb).reshape(w.shape)


def bat_hadamard_grad(w: Tensor, params: Sequence[Tensor], g: Tensor) -> Sequence[Tensor]:
    """``dB_a = sum_b (W_ab + 1) * G_ab``."""
    (b,) = params
    na, r, _ = b.shape
    gb = g.view(na, r, -1, r)
    return (((w.reshape(na, r, -1, r) + 1) * gb).sum(2),)
