"""Dispatch: one adapted linear layer's output, by the fastest path that exists for it.

    adapted_linear(x, W, bias, [AdapterCall, ...])
        |
        +-- backend "reference": F.linear(x, reference_weight(W, calls))   (tests, debugging)
        +-- weight-reading adapters (bat, bat-row, bat-hadamard, bone-ab, ...):
        |     one:   its fast path (a registered GPU kernel on CUDA, else its PyTorch path)
        |     more:  W' = each applied in order, rebuilt in backward, never saved
        |     none:  the base GEMM, fused with the first additive adapter where it can be
        +-- then every additive adapter (bone, bone-mini, ...): + x @ dW^T, by (sum_b x_b) @ B
            for bone and bone-mini

A variant's PyTorch path is its entry in :data:`TORCH_PATHS`, or, for a variant registered
with only its dense ``delta`` (:mod:`flashbone.variants`), :func:`dense_path`: exact, from
``dW`` (weight-reading: ``W' = W + dW(W)`` rebuilt in backward, never saved; additive:
``x @ dW^T``). A GPU kernel slots in per variant with :func:`register_gpu_path`; the PyTorch
path stays the fallback everywhere else. This package imports no kernels: :mod:`flashbone.kernels`
registers its paths here when it is imported (by :mod:`flashbone.layer`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import BoneConfigError
from ..settings import SETTINGS
from ..variants import VARIANTS
from . import torch_ops as T


@dataclass
class AdapterCall:
    """What a layer hands to the dispatcher for one active adapter.

    ``params`` gives the tensors in the compute dtype (a :class:`LazyCast` from layers: the
    cast is part of autograd, so gradients flow back to the float32 master weights, and it
    happens on first access); :meth:`master` gives them uncast.
    """

    variant: str
    r: int
    params: Mapping[str, Tensor]
    dropout: nn.Module | None = None
    mini_r: int | None = field(default=None)

    def master(self, name: str) -> Tensor:
        """The tensor before its cast to the compute dtype (a kernel may fuse the cast)."""
        p = self.params
        return p.masters[name] if isinstance(p, LazyCast) else p[name]

    def bone_b(self, out: int) -> Tensor:
        """``B`` of shape ``(r, out)`` for the additive variants (bone-mini tiled)."""
        b = self.params["B"]
        return b if b.shape[1] == out else b.repeat(1, out // b.shape[1])


def as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)``, skipping the call (and its dispatch) when ``t`` already has ``dtype``."""
    return t if t.dtype == dtype else t.to(dtype)


class LazyCast(Mapping[str, Tensor]):
    """Adapter tensors cast to the compute dtype on first access (inside autograd, so gradients
    reach the float32 masters). A GPU path that writes the cast itself never triggers it."""

    def __init__(self, masters: dict[str, Tensor], dtype: torch.dtype):
        self.masters, self.dtype, self._cast = masters, dtype, {}

    def __getitem__(self, name: str) -> Tensor:
        t = self._cast.get(name)
        if t is None:
            t = self._cast[name] = as_dtype(self.masters[name], self.dtype)
        return t

    def __iter__(self):
        return iter(self.masters)

    def __len__(self) -> int:
        return len(self.masters)


FastPath = Callable[[Tensor, Tensor, "Tensor | None", AdapterCall], Tensor]

BACKENDS = ("auto", "torch", "reference")
_GPU_PATHS: dict[str, FastPath] = {}


def set_backend(name: str) -> None:
    """Choose ``"auto"`` (GPU kernels where registered), ``"torch"`` or ``"reference"``
    (:data:`flashbone.settings.SETTINGS` ``.backend``; ``FLASHBONE_BACKEND`` sets it at start)."""
    if name not in BACKENDS:
        raise BoneConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    SETTINGS.backend = name


def get_backend() -> str:
    return SETTINGS.backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Temporarily switch the backend: ``with use_backend("reference"): ...``."""
    old = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def register_gpu_path(variant: str, fn: FastPath) -> None:
    """Register a CUDA implementation of one variant's single-adapter forward."""
    _GPU_PATHS[variant] = fn


GroupPath = Callable[[Tensor, list], "list[Tensor] | None"]
_GPU_GROUP: list[GroupPath] = []


def register_gpu_group_path(fn: GroupPath) -> None:
    """Register a CUDA implementation of several layers that read one input (see
    :func:`adapted_linear_group`)."""
    _GPU_GROUP[:] = [fn]


# -- PyTorch fast paths: (x (T, in), W (out, in), bias, call) -> y (T, out) ---------------


def _bone(x: Tensor, w: Tensor, bias: Tensor | None, c: AdapterCall) -> Tensor:
    return T.BoneLinear.apply(x, w, bias, c.bone_b(w.shape[0]), c.r)


def _bat_row(x, w, bias, c):
    return T.RowAffineLinear.apply(x, w, bias, c.params["B"], None, c.r)


def _bone_ab(x, w, bias, c):
    return T.RowAffineLinear.apply(x, w, bias, c.params["A"], c.params["B"], c.r)


def _bat(x, w, bias, c):
    return T.WeightSpaceLinear.apply(x, w, bias, T.bat_build, T.bat_grad, c.params["B"])


def _bat_hadamard(x, w, bias, c):
    return T.WeightSpaceLinear.apply(x, w, bias, T.bat_hadamard_build, T.bat_hadamard_grad, c.params["B"])


TORCH_PATHS: dict[str, FastPath] = {
    "bone": _bone,
    "bone-mini": _bone,
    "bat": _bat,
    "bat-row": _bat_row,
    "bat-hadamard": _bat_hadamard,
    "bone-ab": _bone_ab,
}


def dense_path(x: Tensor, w: Tensor, bias: Tensor | None, c: AdapterCall) -> Tensor:
    """The PyTorch path of a variant that has no hand-written one: exact, from its dense
    ``dW`` (:attr:`flashbone.variants.Variant.delta`). A weight-reading variant runs as
    ``x @ (W + dW(W))^T`` with ``W'`` rebuilt in backward instead of saved; an additive one
    as ``x @ W^T + x @ dW^T`` (``dW`` does not read ``W``, autograd keeps it)."""
    if VARIANTS[c.variant].reads_weight:
        build = _composite_build([c])
        return T.WeightSpaceLinear.apply(x, w, bias, build, T.autograd_weight_grad(build), *_flat([c]))
    return F.linear(x, w, bias) + F.linear(x, VARIANTS[c.variant].delta(w, c.params, c.r))


def torch_path(variant: str) -> FastPath:
    """``variant``'s PyTorch path: its hand-written one, else :func:`dense_path`."""
    return TORCH_PATHS.get(variant, dense_path)


def _single_path(x: Tensor, variant: str) -> FastPath:
    if SETTINGS.backend == "auto" and x.is_cuda and variant in _GPU_PATHS:
        return _GPU_PATHS[variant]
    return torch_path(variant)


def _composite_build(calls: Sequence[AdapterCall]) -> T.WeightBuild:
    """Apply weight-reading adapters in order: ``W <- W + dW_k(W)`` (dense reference math)."""
    steps = [(VARIANTS[c.variant], list(c.params), c.r) for c in calls]

    def build(w: Tensor, flat: Sequence[Tensor]) -> Tensor:
        it = iter(flat)
        for v, names, r in steps:
            w = w + v.delta(w, {n: next(it) for n in names}, r)
        return w

    return build


def _additive_update(x: Tensor, out: int, c: AdapterCall) -> Tensor:
    """``dropout(x) @ dW^T`` of one additive adapter: by the block sum for bone and bone-mini
    (``dW[o, i] = B[i mod r, o]``), from the dense ``dW`` for any other additive variant (its
    ``dW`` does not read ``W``, so a zero-stride zero tensor stands in for the weight)."""
    xd = c.dropout(x) if c.dropout is not None else x
    if c.variant in _BLOCK_SUM_UPDATES:
        return T.block_sum(xd, c.r) @ c.bone_b(out)
    shape_only = x.new_zeros(()).expand(out, x.shape[-1])
    return F.linear(xd, VARIANTS[c.variant].delta(shape_only, c.params, c.r))


_BLOCK_SUM_UPDATES = ("bone", "bone-mini")


def adapted_linear(x: Tensor, w: Tensor, bias: Tensor | None, calls: Sequence[AdapterCall]) -> Tensor:
    """``x @ W_adapted^T + bias`` for ``x`` of shape ``(..., in)`` and ``W`` ``(out, in)``.

    ``W_adapted`` applies the weight-reading adapters in order, then adds the additive ones
    (:func:`reference_weight` spells this out densely).
    """
    if SETTINGS.backend == "reference":
        return F.linear(x, reference_weight(w, calls), bias)
    lead, out = x.shape[:-1], w.shape[0]
    x2 = x.reshape(-1, x.shape[-1])
    reading, additive = _split(calls)
    if w.requires_grad:  # the base weight trains too: plain autograd through the dense weight
        y = F.linear(x2, _composite_build(reading)(w, _flat(reading)), bias)
    elif len(reading) > 1:  # W' of all weight-reading adapters, rebuilt in backward
        build = _composite_build(reading)
        y = T.WeightSpaceLinear.apply(x2, w, bias, build, T.autograd_weight_grad(build), *_flat(reading))
    elif reading:
        y = _single_path(x2, reading[0].variant)(x2, w, bias, reading[0])
    elif additive and additive[0].dropout is None:  # the first additive adapter fused with the GEMM
        y = _single_path(x2, additive[0].variant)(x2, w, bias, additive[0])
        additive = additive[1:]
    else:
        y = F.linear(x2, w, bias)
    for c in additive:
        y = y + _additive_update(x2, out, c)
    return y.view(*lead, out)


def _split(calls: Sequence[AdapterCall]) -> tuple[list[AdapterCall], list[AdapterCall]]:
    """``(weight-reading adapters, additive adapters)``, each in the given order."""
    reading = [c for c in calls if VARIANTS[c.variant].reads_weight]
    return reading, [c for c in calls if not VARIANTS[c.variant].reads_weight]


def adapted_linear_group(
    x: Tensor, members: Sequence[tuple[Tensor, Tensor | None, AdapterCall]]
) -> list[Tensor] | None:
    """:func:`adapted_linear` of several layers that read the same ``x`` (q/k/v, gate/up),
    each ``(W, bias, call)`` with one adapter, computed together by a registered GPU path.

    Same values as calling :func:`adapted_linear` per member; ``None`` when no group path
    applies (CPU, another backend, a trainable weight, a variant without one), and the caller
    then runs the members one by one."""
    if SETTINGS.backend != "auto" or not _GPU_GROUP or not x.is_cuda:
        return None
    if any(w.requires_grad for w, _, _ in members):
        return None
    lead = x.shape[:-1]
    outs = _GPU_GROUP[0](x.reshape(-1, x.shape[-1]), list(members))
    return None if outs is None else [y.view(*lead, y.shape[-1]) for y in outs]


def bone_group(x: Tensor, members: Sequence[tuple[Tensor, Tensor | None, AdapterCall]]) -> list[Tensor] | None:
    """The PyTorch path of a group of bone / bone-mini layers (frozen weights, one rank, no
    dropout) on ``x`` of shape ``(T, in)``: one node (:class:`torch_ops.BoneGroupLinear`);
    ``None`` for any other group. The GPU group path runs it where its kernels do not apply."""
    r = members[0][2].r
    if any(c.variant not in _BLOCK_SUM_UPDATES or c.dropout is not None or c.r != r for _, _, c in members):
        return None
    weights = [(lambda w=w: w) for w, _, _ in members]
    flat = [t for w, bias, c in members for t in (bias, c.bone_b(w.shape[0]))]
    return list(T.BoneGroupLinear.apply(x, r, weights, True, *flat))


def _flat(calls: Sequence[AdapterCall]) -> list[Tensor]:
    return [p for c in calls for p in c.params.values()]


def reference_weight(w: Tensor, calls: Sequence[AdapterCall]) -> Tensor:
    """Dense ``W + dW`` with weight-reading adapters first: the semantics every path matches."""
    reading, additive = _split(calls)
    for c in reading + additive:
        w = w + VARIANTS[c.variant].delta(w, c.params, c.r)
    return w


__all__ = [
    "AdapterCall",
    "adapted_linear",
    "adapted_linear_group",
    "bone_group",
    "set_backend",
    "get_backend",
    "use_backend",
    "register_gpu_path",
    "register_gpu_group_path",
    "reference_weight",
    "dense_path",
    "torch_path",
    "TORCH_PATHS",
]
