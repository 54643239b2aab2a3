"""Each variant's CUDA path, registered into :mod:`.registry` (and through it into ops).

    bone, bone-mini      BoneCuda / BonePaddedCuda        y = x W^T + (x P) B
    bat-row, bone-ab     RowAffineCuda                    y = (x + u) W^T + tile(sum_b v_b)
    bat, bat-hadamard    WeightSpaceCuda                  y = x (W + dW(W))^T, W' rebuilt in backward

A variant with kernels is one :func:`.registry.register` call below: its forward on supported
calls (``x`` has dense rows), the ``r`` and sizes its kernels take, whether its frozen weight
pads by default and which sibling group it forms. :mod:`.functions` (which needs Triton) is
imported on the first call, so importing this module needs neither CUDA nor Triton.
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..ops import AdapterCall, FastPath
from . import padded
from .registry import GroupKind, VariantKernels, extended_weight, master, padded_variants, register, rows


# --------------------------------------------------------------------------- bone, bone-mini
# The additive variants' B (r, out): bone's float32 master goes in (the kernels cast it, dB
# comes back float32; padded, its cast happens in the copy to W_ext); bone-mini's tiled B is
# cast before.
BoneFactor = Callable[[AdapterCall, int], Tensor]


def _bone_master(call: AdapterCall, out: int) -> Tensor:
    return call.master("B")


def _bone_mini_tiled(call: AdapterCall, out: int) -> Tensor:
    return call.bone_b(out)


def _bone_forward(b_of: BoneFactor) -> FastPath:
    def forward(x: Tensor, w: Tensor, bias: Tensor | None, call: AdapterCall) -> Tensor:
        from . import functions as Fn

        r = call.r
        # [x | x P] is a copy of x: worth it when out >= in or when an earlier consumer built it
        if call.variant in padded_variants() and (w.shape[0] >= w.shape[1] or Fn.has_extended_input(x, r)):
            wx = padded.extended(w, r)
            if wx is not None:
                return Fn.BonePaddedCuda.apply(x, w, bias, b_of(call, w.shape[0]), r, wx)
        return Fn.BoneCuda.apply(x, rows(w), bias, b_of(call, w.shape[0]).contiguous(), r)

    return forward


def _bone_group(x: Tensor, r: int, *flat):
    from .functions import BoneGroupCuda

    return BoneGroupCuda.apply(x, r, *flat)


BONE_GROUP = GroupKind("bone", _bone_group)  # bone and bone-mini members may mix


def _bone_operands(b_of: BoneFactor):
    def operands(w: Tensor, bias: Tensor | None, call: AdapterCall, wx: Tensor) -> list:
        return [w, bias, b_of(call, w.shape[0]), wx]

    return operands


# Padding, measured on an H100 (docs/kernel_notes.md):
# - bone (forward only, the master B cast inside the copy to W_ext): -0.3 to -0.5 ms at 4k
#   tokens, -4.9 ms at 7B with checkpointing (memory +0.001 and +0.013 of the floor).
# - bone-mini (its tiled B^T in the columns): 1.078, 1.065 against 1.086, 1.075 unpadded, two
#   same-call pairs; memory 0.995 against 0.990 of the floor.
# Deterministic: cuBLAS GEMMs and kernels where one program writes each output (no atomics).
for _variant, _b_of in (("bone", _bone_master), ("bone-mini", _bone_mini_tiled)):
    register(
        VariantKernels(
            _variant,
            _bone_forward(_b_of),
            max_r=256,
            r_divides_weight=False,
            deterministic=True,
            pads_by_default=True,
            group=BONE_GROUP,
            group_operands=_bone_operands(_b_of),
        )
    )


# ---------------------------------------------------------------------- bat-row, bone-ab
# (A, C) of the row-affine Function: u_b = x_b A_b^T feeds the GEMM, v_b = x_b C_b^T is summed
# and tiled over the output; bat-row has C = A (None: the kernels reuse u).
RowFactors = Callable[[AdapterCall], "tuple[Tensor, Tensor | None]"]


def _bat_row_factors(call: AdapterCall) -> tuple[Tensor, Tensor | None]:
    return master(call, "B"), None


def _bone_ab_factors(call: AdapterCall) -> tuple[Tensor, Tensor | None]:
    return master(call, "A"), master(call, "B")


def _row_affine_forward(factors: RowFactors) -> FastPath:
    def forward(x: Tensor, w: Tensor, bias: Tensor | None, call: AdapterCall) -> Tensor:
        from .functions import RowAffineCuda

        a, c = factors(call)
        return RowAffineCuda.apply(x, rows(w), bias, a, c, call.r, extended_weight(w, call))

    return forward


def _row_affine_group(x: Tensor, r: int, *flat):
    from .functions import RowAffineGroupCuda

    return RowAffineGroupCuda.apply(x, r, *flat)


def _row_affine_operands(factors: RowFactors):
    def operands(w: Tensor, bias: Tensor | None, call: AdapterCall, wx: Tensor) -> list:
        return [w, bias, *factors(call), wx]

    return operands


# One group kind each: the group kernels take C for every member or for none.
# The row-affine variants need twice the kernels' minimum size: at 2^23 elements they lost to
# the PyTorch path on time in three H100 measurements (hidden 2048 x 4k tokens twice, hidden
# 4096 x 2k tokens once) while bone and bat won at hidden 4096 (docs/kernel_notes.md).
# Padding, measured on an H100:
# - bat-row: -1.5 to -2.5 ms/step at 4k tokens, -9.6 ms at 16k, neutral at 7B with
#   checkpointing; the spare columns cost r / in of the frozen weights (+0.6% peak memory).
# - bone-ab: -1.3 to -1.5 ms at 4k tokens; it fits its 1.05 memory target since the kernels
#   stopped keeping bf16 copies of the adapters (1.038 without the padding).
for _variant, _factors in (("bat-row", _bat_row_factors), ("bone-ab", _bone_ab_factors)):
    register(
        VariantKernels(
            _variant,
            _row_affine_forward(_factors),
            min_elements_factor=2,
            pads_by_default=True,
            group=GroupKind(_variant, _row_affine_group),
            group_operands=_row_affine_operands(_factors),
        )
    )


# ------------------------------------------------------------------------ bat, bat-hadamard
def _weight_space_forward(hadamard: bool) -> FastPath:
    def forward(x: Tensor, w: Tensor, bias: Tensor | None, call: AdapterCall) -> Tensor:
        from .functions import WeightSpaceCuda

        return WeightSpaceCuda.apply(x, rows(w), bias, master(call, "B"), hadamard)

    return forward


register(VariantKernels("bat", _weight_space_forward(hadamard=False)))
register(VariantKernels("bat-hadamard", _weight_space_forward(hadamard=True)))
