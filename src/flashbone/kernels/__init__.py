"""GPU fast paths of the Bone family (Triton kernels + cuBLAS), chosen automatically on CUDA.

    ops.adapted_linear(x on CUDA, backend "auto")
        -> ops._GPU_PATHS[variant]  = one of the functions below (registered into ops when
                                      this package is imported; ops does not import it)
            -> supported(x, r)?  yes: kernels.functions.<Variant>Cuda (Triton + cuBLAS)
                                 no : the PyTorch path (ops.torch_path(variant))

Importing this package needs neither CUDA nor Triton: Triton is imported on the first CUDA
call only. Supported: bf16/fp16 activations, ``r`` a power of two (16..256 for bone and
bone-mini, 16..128 for the block-matrix variants), ``r`` dividing the GEMM sides where the
variant needs it. Anything else takes the PyTorch path, which computes the same function.
``SETTINGS.kernels = False`` (``FLASHBONE_KERNELS=0``) turns the kernels off, as does
``ops.set_backend("torch")``. Every switch is a field of :data:`flashbone.settings.SETTINGS`
(padding: :mod:`.padded`; input replay: :mod:`.replay`; launch parameters:
:data:`.triton_kernels.CONFIG`; docs/kernel_notes.md has the measurements behind each default).

Small calls take the PyTorch path too: below ``SETTINGS.kernel_min_elements`` input elements
(tokens x in) a layer is bound by host launch overhead, where the kernels' extra launches cost
more than their saved memory passes (H100, hidden 2048: the PyTorch path won at 2k tokens, the
kernels at 4k; docs/kernel_notes.md); bat-row and bone-ab need twice that.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import torch
from torch import Tensor

from .. import ops
from ..settings import SETTINGS
from . import padded

_HARDWARE: bool | None = None


def available() -> bool:
    """True when the kernels can run here: CUDA, Triton, and not switched off (``SETTINGS.kernels``)."""
    global _HARDWARE
    if _HARDWARE is None:
        _HARDWARE = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
    return SETTINGS.kernels and _HARDWARE


def _pow2(r: int, hi: int) -> bool:
    return 16 <= r <= hi and r & (r - 1) == 0


def supported(variant: str, x: Tensor, w: Tensor, r: int) -> bool:
    """Whether the kernels handle this call (else the PyTorch path runs)."""
    if not (x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and w.dtype == x.dtype):
        return False
    # The row-affine variants (bat-row, bone-ab) need twice the size: at 2^23 elements they lost
    # to the PyTorch path on time in three H100 measurements (hidden 2048 x 4k tokens twice,
    # hidden 4096 x 2k tokens once) while bone and bat won at hidden 4096 (docs/kernel_notes.md).
    need = SETTINGS.kernel_min_elements * (2 if variant in ("bat-row", "bone-ab") else 1)
    if not available() or x.numel() < need:
        return False
    if variant in ("bone", "bone-mini"):
        return _pow2(r, 256)
    return _pow2(r, 128) and w.shape[0] % r == 0 and w.shape[1] % r == 0


def _torch_path(variant: str):
    return ops.torch_path(variant)


def _rows(x: Tensor) -> Tensor:
    """``x`` itself when its rows are dense (any row stride: cuBLAS and the kernels take it)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _extended(w: Tensor, call) -> Tensor | None:
    """``W_ext`` (:mod:`.padded`) when this layer's weight pads, else ``None``."""
    return padded.extended(w, call.r, call.variant)


def _bone(x, w, bias, call):
    if not supported(call.variant, x, w, call.r):
        return _torch_path(call.variant)(x, w, bias, call)
    from . import functions as Fn

    x, r = _rows(x), call.r
    # [x | x P] is a copy of x: worth it when out >= in or when an earlier consumer built it
    if call.variant in padded.padded_variants() and (w.shape[0] >= w.shape[1] or Fn.has_extended_input(x, r)):
        wx = _extended(w, call)
        if wx is not None:  # bone's master B goes in: its cast happens in the copy to W_ext
            b = call.master("B") if call.variant == "bone" else call.bone_b(w.shape[0])
            return Fn.BonePaddedCuda.apply(x, w, bias, b, r, wx)
    # bone's master B goes in (cast inside, dB returned float32); bone-mini's tiled B is cast
    b = call.master("B") if call.variant == "bone" else call.bone_b(w.shape[0])
    return Fn.BoneCuda.apply(x, _rows(w), bias, b.contiguous(), r)


_GROUPS = ({"bone", "bone-mini"}, {"bat-row"}, {"bone-ab"})  # variants that can share a node


def layer_group(x: Tensor, members: list) -> list[Tensor] | None:
    """Outputs of padded layers that read the same input ``x`` (``members``:
    ``[(w, bias, call), ...]``), as one autograd node: :class:`.functions.BoneGroupCuda` for
    bone and bone-mini, :class:`.functions.RowAffineGroupCuda` for bat-row or bone-ab.

    ``None`` when the members mix kinds or differ in r, when any of them would not take the
    padded path alone, or under saved-tensor hooks (non-reentrant checkpointing checks that its
    recompute saves what the forward saved, and the first forward of a group runs before its
    members are known)."""
    from . import replay

    variants = {call.variant for _, _, call in members}
    r = members[0][2].r
    if (not any(variants <= g for g in _GROUPS) or not variants <= set(padded.padded_variants())
            or replay.saved_tensor_hooks_active()):
        return None
    flat = []
    for w, bias, call in members:
        if call.r != r or not supported(call.variant, x, w, r):
            return None
        wx = _extended(w, call)
        if wx is None:
            return None
        if call.variant == "bone":
            flat += [w, bias, call.master("B"), wx]
        elif call.variant == "bone-mini":
            flat += [w, bias, call.bone_b(w.shape[0]), wx]
        elif call.variant == "bone-ab":
            flat += [w, bias, _master(call, "A"), _master(call, "B"), wx]
        else:
            flat += [w, bias, _master(call, "B"), None, wx]
    from . import functions as Fn

    fn = Fn.RowAffineGroupCuda if variants & {"bat-row", "bone-ab"} else Fn.BoneGroupCuda
    return list(fn.apply(_rows(x), r, *flat))


def _row_affine(x, w, bias, call):
    if not supported(call.variant, x, w, call.r):
        return _torch_path(call.variant)(x, w, bias, call)
    from .functions import RowAffineCuda

    if call.variant == "bone-ab":
        a, c = _master(call, "A"), _master(call, "B")
    else:
        a, c = _master(call, "B"), None
    return RowAffineCuda.apply(_rows(x), _rows(w), bias, a, c, call.r, _extended(w, call))


def _weight_space(x, w, bias, call):
    if not supported(call.variant, x, w, call.r):
        return _torch_path(call.variant)(x, w, bias, call)
    from .functions import WeightSpaceCuda

    hadamard = call.variant == "bat-hadamard"
    return WeightSpaceCuda.apply(_rows(x), _rows(w), bias, _master(call, "B"), hadamard)


def _master(call, name: str) -> Tensor:
    """The uncast adapter tensor: the Triton kernels cast it as they load it (same rounding as
    a separate cast) and return its gradient in its own dtype, so neither direction runs a
    cast kernel or a cast node (docs/kernel_notes.md)."""
    return call.master(name).contiguous()


GPU_PATHS: dict[str, Callable] = {
    "bone": _bone,
    "bone-mini": _bone,
    "bat-row": _row_affine,
    "bone-ab": _row_affine,
    "bat": _weight_space,
    "bat-hadamard": _weight_space,
}


def _register() -> None:
    """Hand every GPU path to the dispatcher; runs once, when this package is first imported
    (:mod:`flashbone.layer` imports it; :mod:`flashbone.ops` never imports kernels)."""
    for variant, fn in GPU_PATHS.items():
        ops.register_gpu_path(variant, fn)
    ops.register_gpu_group_path(layer_group)


_register()

__all__ = ["available", "supported", "layer_group", "GPU_PATHS"]
