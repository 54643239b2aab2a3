"""The frozen weight with ``r`` spare columns, so cuBLAS runs the rank-r term inside its GEMM.

    W_ext = [ W | X ]   (out x (in + r)), one allocation; the layer's weight is W_ext[:, :in]

    bone        X = B^T   forward   y       = [x | x P] W_ext^T = x W^T + (x P) B     K = in + r
                          backward  [h | ds] = dy W_ext,  dx = h + tile(ds)           N = in + r
    row-affine  X = E     forward   y       = [z | vsum] W_ext^T = z W^T + tile(vsum)
    (bat-row,             backward  [h | g] = dy W_ext          = [dy W | block_sum(dy)]  N = in + r
     bone-ab)

``P`` / ``E`` are the 0/1 matrices of :func:`.triton_kernels.block_ones` (``E[o, j] = 1`` when
``o mod r == j``). Without the spare columns each of these rank-r terms is a separate skinny
GEMM plus an addend that one kernel writes and the token GEMM reads back (``T x out`` or
``T x in`` each way); with them the token GEMM does 1.6% more flops at in = 4096 and the
addend never exists. The activation side needs ``[x | x P]`` or ``[z | vsum]`` in one buffer:
row-affine writes ``z`` there anyway, bone copies ``x`` once per input (q/k/v share it).

The padding is made on the first supported call (:func:`extended`): a frozen CUDA
``nn.Parameter`` that owns its storage is copied into ``W_ext`` and its ``.data`` becomes the
view ``W_ext[:, :in]``: same values and dtype, row stride ``in + r`` (PyTorch and cuBLAS take
such strides without copies; ``.to()``, ``.clone()`` and ``save_pretrained`` give contiguous
tensors again, and :func:`compact_` undoes it in place). Each call writes the ``X`` it needs
before its GEMM (:func:`fill_`; constant content is written once), so adapters of different
kinds may share a layer. Weights that are views into other buffers (FSDP flat parameters, tied
slices), tensor subclasses, trainable weights and code under ``torch.compile`` or CUDA-graph
capture keep their layout and the addend path.
Which variants pad is decided by the caller: :func:`.registry.padded_variants` (each
variant's ``pads_by_default``, measured in docs/kernel_notes.md, unless ``SETTINGS.padded``,
``FLASHBONE_PADDED``: ``0``, ``1`` or a comma list, names them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

_WIDTH = "_flashbone_padded_width"  # attribute on the Parameter: in + r of its W_ext
_FILL = "_flashbone_padded_fill"  # attribute on the Parameter: what the spare columns hold


def view_of(w: Tensor, r: int) -> Tensor | None:
    """``W_ext`` over ``w``'s storage when ``w`` already sits in one with ``r`` spare columns."""
    out, inn = w.shape
    width = inn + r
    if getattr(w, _WIDTH, None) != width or w.stride() != (width, 1) or w.storage_offset():
        return None
    if w.untyped_storage().nbytes() < out * width * w.element_size():
        return None
    # .data: writing the spare columns must not bump w's version (autograd saved it)
    return w.data.as_strided((out, width), (width, 1))


def rehomable(w: Tensor) -> bool:
    """A frozen, contiguous, plain-tensor ``nn.Parameter`` that owns its whole storage."""
    return (
        isinstance(w, nn.Parameter)
        and not w.requires_grad
        and type(w.data) is torch.Tensor
        and w.dim() == 2
        and w.is_contiguous()
        and w.storage_offset() == 0
        and w.untyped_storage().nbytes() == w.numel() * w.element_size()
    )


def rehome(w: nn.Parameter, r: int) -> Tensor:
    """Move ``w`` into a fresh ``(out, in + r)`` buffer (values unchanged); returns ``W_ext``."""
    out, inn = w.shape
    ext = torch.zeros(out, inn + r, dtype=w.dtype, device=w.device)
    ext[:, :inn].copy_(w.data)
    w.data = ext[:, :inn]
    setattr(w, _WIDTH, inn + r)
    setattr(w, _FILL, None)
    return view_of(w, r)


def fill_(w: Tensor, ext: Tensor, source: Tensor, key: object) -> None:
    """Write ``source`` (``out x r``, any dtype: the copy casts) into the spare columns of
    ``ext``, the ``W_ext`` of ``w``, and mark them as holding ``key``.

    A ``key`` that compares equal names constant content (the 0/1 matrix of the row-affine
    variants): when the columns already hold it the write is skipped. Bone passes a fresh
    ``object()`` per forward (``B`` changes every step), which its backward checks with
    :func:`holds` before it reads ``B^T`` back from the columns."""
    if getattr(w, _FILL, None) == key:
        return
    ext[:, w.shape[1] :].copy_(source)
    setattr(w, _FILL, key)


def holds(w: Tensor, key: object) -> bool:
    """Whether the spare columns of ``w``'s ``W_ext`` still hold what :func:`fill_` wrote
    under ``key`` (another adapter's call may have written its own since)."""
    return getattr(w, _FILL, None) is key


def extended(w: Tensor, r: int) -> Tensor | None:
    """``W_ext`` for the layer weight ``w`` (re-homed on first use), or ``None`` when ``w``
    must keep its layout (see the module docstring)."""
    ext = view_of(w, r)
    if ext is not None or not w.is_cuda or not rehomable(w):
        return ext
    if torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
        return None
    return rehome(w, r)


def compact_(module: nn.Module) -> int:
    """Give every padded weight under ``module`` a contiguous storage again (values unchanged,
    same Parameter objects); returns how many were changed."""
    n = 0
    for p in module.parameters():
        if getattr(p, _WIDTH, None) is not None:
            if not p.is_contiguous():
                p.data = p.data.contiguous()
                n += 1
            delattr(p, _WIDTH)
            if hasattr(p, _FILL):
                delattr(p, _FILL)
    return n
