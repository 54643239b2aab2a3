"""The per-variant registry of CUDA paths, and everything on the kernel side that derives from it.

    kernels.paths:  register(VariantKernels("bone", forward, max_r=256, pads_by_default=True,
                                            group=BONE_GROUP, group_operands=...))
        -> KERNELS["bone"]          what this module reads: supported(), pads(), layer_group()
        -> GPU_PATHS["bone"]        the variant's dispatch function (forward on supported calls,
                                    else the PyTorch path), also handed to
        -> ops.register_gpu_path    (ops never imports kernels)

A variant that registers nothing here (one defined only by its dense ``delta`` in
:mod:`flashbone.variants`) has no GPU path: ``supported`` is false for it, it never pads and it
never joins a group, so the dispatcher runs its PyTorch path on CUDA too. No code here names
a variant.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .. import ops
from ..ops import AdapterCall, FastPath
from ..settings import SETTINGS
from . import padded

# (x (T, in), r, *operands of every member) -> one output per member
GroupFunction = Callable[..., Sequence[Tensor]]
# (W, bias, call, W_ext) -> the member's operands for its group's function
GroupOperands = Callable[[Tensor, "Tensor | None", AdapterCall, Tensor], list]


@dataclass(frozen=True)
class GroupKind:
    """Layers whose adapters are of one kind and read the same input can run as one autograd
    node: ``function(x, r, *operands of member 1, *operands of member 2, ...)``."""

    name: str
    function: GroupFunction


@dataclass(frozen=True)
class VariantKernels:
    """One variant's CUDA path and the conditions under which it runs.

    Attributes:
        variant: the name in :data:`flashbone.variants.VARIANTS`.
        forward: ``(x, W, bias, call) -> y`` for ``x`` (T, in) with dense rows; called only
            when :func:`supported` holds (the dispatch function falls back otherwise).
        max_r: ``r`` must be a power of two in ``16 .. max_r``.
        r_divides_weight: ``r`` must divide both sides of ``W``.
        min_elements_factor: calls need ``factor * SETTINGS.kernel_min_elements`` input
            elements (below that a layer is host-bound and the PyTorch path wins), except
            inside :func:`any_size` for a ``deterministic`` variant.
        deterministic: the kernels add no float32 atomics, so a step repeats bit for bit
            (what exact resume needs).
        pads_by_default: the frozen weight gets r spare columns (:mod:`.padded`) unless
            ``SETTINGS.padded`` says otherwise.
        group: the :class:`GroupKind` this variant's layers form on one input, if any
            (grouping needs the padded weight).
        group_operands: a member's operands for ``group.function``.
    """

    variant: str
    forward: FastPath
    max_r: int = 128
    r_divides_weight: bool = True
    min_elements_factor: int = 1
    deterministic: bool = False
    pads_by_default: bool = False
    group: GroupKind | None = None
    group_operands: GroupOperands | None = None


KERNELS: dict[str, VariantKernels] = {}
GPU_PATHS: dict[str, FastPath] = {}  # variant -> its dispatch function (also in ops)

_HARDWARE: bool | None = None
_ANY_SIZE = False  # inside any_size(): the size threshold is off for deterministic variants


def register(spec: VariantKernels) -> None:
    """Add ``spec``'s variant to the kernels and hand its dispatch function to :mod:`flashbone.ops`."""
    KERNELS[spec.variant] = spec
    GPU_PATHS[spec.variant] = _dispatch(spec)
    ops.register_gpu_path(spec.variant, GPU_PATHS[spec.variant])


def _dispatch(spec: VariantKernels) -> FastPath:
    def gpu_path(x: Tensor, w: Tensor, bias: Tensor | None, call: AdapterCall) -> Tensor:
        if not supported(call.variant, x, w, call.r):
            return ops.torch_path(call.variant)(x, w, bias, call)
        return spec.forward(rows(x), w, bias, call)

    gpu_path.__qualname__ = gpu_path.__name__ = f"gpu_path[{spec.variant}]"
    return gpu_path


def available() -> bool:
    """True when the kernels can run here: CUDA, Triton, and not switched off (``SETTINGS.kernels``)."""
    global _HARDWARE
    if _HARDWARE is None:
        _HARDWARE = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
    return SETTINGS.kernels and _HARDWARE


@contextlib.contextmanager
def any_size():
    """Inside, deterministic variants take the kernels at every size. For steps recorded as
    CUDA graphs: the threshold exists because small calls are bound by the host's launches,
    which a replay does not pay, and on the GPU alone the kernels are faster at every size
    (docs/benchmarks.md). Use it around every run of the step, eager ones included, so that
    every micro-batch takes one path and a resumed run repeats the uninterrupted one."""
    global _ANY_SIZE
    old, _ANY_SIZE = _ANY_SIZE, True
    try:
        yield
    finally:
        _ANY_SIZE = old


def _pow2(r: int, hi: int) -> bool:
    return 16 <= r <= hi and r & (r - 1) == 0


def supported(variant: str, x: Tensor, w: Tensor, r: int) -> bool:
    """Whether the kernels handle this call (else the PyTorch path runs); false for a variant
    that registered no kernels."""
    spec = KERNELS.get(variant)
    if spec is None or not (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and w.dtype == x.dtype):
        return False
    if not available():
        return False
    small = x.numel() < SETTINGS.kernel_min_elements * spec.min_elements_factor
    if small and not (_ANY_SIZE and spec.deterministic):
        return False
    if not _pow2(r, spec.max_r):
        return False
    return not spec.r_divides_weight or (w.shape[0] % r == 0 and w.shape[1] % r == 0)


def padded_variants() -> tuple[str, ...]:
    """The variants whose frozen weight gets r spare columns: ``SETTINGS.padded``, or the
    registered variants with ``pads_by_default`` when it is ``None``."""
    if SETTINGS.padded is not None:
        return SETTINGS.padded
    return tuple(v for v, spec in KERNELS.items() if spec.pads_by_default)


def extended_weight(w: Tensor, call: AdapterCall) -> Tensor | None:
    """``W_ext`` (:mod:`.padded`) when ``call``'s variant pads and this layer's weight can,
    else ``None``."""
    return padded.extended(w, call.r) if call.variant in padded_variants() else None


def rows(x: Tensor) -> Tensor:
    """``x`` itself when its rows are dense (any row stride: cuBLAS and the kernels take it)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def master(call: AdapterCall, name: str) -> Tensor:
    """The uncast adapter tensor: the Triton kernels cast it as they load it (same rounding as
    a separate cast) and return its gradient in its own dtype, so neither direction runs a
    cast kernel or a cast node (docs/kernel_notes.md)."""
    return call.master(name).contiguous()


def layer_group(x: Tensor, members: list) -> list[Tensor] | None:
    """Outputs of padded layers that read the same input ``x`` (``members``:
    ``[(w, bias, call), ...]``) as one autograd node, the ``function`` of their variants'
    common :class:`GroupKind`.

    ``None`` when the members' variants have no group kind or not the same one, when any of
    them differ in r or would not take the padded path alone, or under saved-tensor hooks
    (non-reentrant checkpointing checks that its recompute saves what the forward saved, and
    the first forward of a group runs before its members are known)."""
    from . import replay

    specs = [KERNELS.get(call.variant) for _, _, call in members]
    kinds = {None if spec is None else spec.group for spec in specs}
    padding = padded_variants()
    if (
        len(kinds) != 1
        or None in kinds
        or not all(s.variant in padding for s in specs)
        or replay.saved_tensor_hooks_active()
    ):
        return None
    r = members[0][2].r
    if any(not supported(call.variant, x, w, r) for w, _, call in members):
        # below the kernels' size (or without them): one PyTorch node for the group still
        # saves the host two or three layers' worth of Python and autograd (docs/benchmarks.md)
        return ops.bone_group(rows(x), members)
    flat = []
    for (w, bias, call), spec in zip(members, specs):
        if call.r != r:
            return None
        wx = extended_weight(w, call)
        if wx is None:
            return None
        flat += spec.group_operands(w, bias, call, wx)
    return list(specs[0].group.function(rows(x), r, *flat))


def _register_group_path() -> None:
    """The dispatcher asks :func:`layer_group` for every group (:mod:`flashbone.siblings`)."""
    ops.register_gpu_group_path(layer_group)


_register_group_path()
