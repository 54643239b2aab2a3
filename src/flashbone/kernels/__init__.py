"""GPU fast paths of the Bone family (Triton kernels + cuBLAS), chosen automatically on CUDA.

    ops.adapted_linear(x on CUDA, backend "auto")
        -> ops._GPU_PATHS[variant]  = registry.GPU_PATHS[variant] (each variant registers its
                                      kernels in .paths when this package is imported; ops
                                      does not import it)
            -> supported(x, r)?  yes: kernels.functions.<Family>Cuda (Triton + cuBLAS)
                                 no : the PyTorch path (ops.torch_path(variant))

    registry.py   VariantKernels (one variant's path and limits), register(), supported(),
                  padded_variants(), layer_group(): nothing there names a variant
    paths.py      the register() call of each variant that has kernels
    functions.py  the autograd Functions; triton_kernels.py the Triton passes
    padded.py     the frozen weight with r spare columns; replay.py inputs recomputed in backward

Importing this package needs neither CUDA nor Triton: Triton is imported on the first CUDA
call only. Supported: bf16/fp16 activations, ``r`` a power of two (16..256 for bone and
bone-mini, 16..128 for the block-matrix variants), ``r`` dividing the GEMM sides where the
variant needs it (each variant's :class:`.registry.VariantKernels`). Anything else, and any
variant that registered no kernels, takes the PyTorch path, which computes the same function.
``SETTINGS.kernels = False`` (``FLASHBONE_KERNELS=0``) turns the kernels off, as does
``ops.set_backend("torch")``. Every switch is a field of :data:`flashbone.settings.SETTINGS`
(padding: :mod:`.padded`; input replay: :mod:`.replay`; launch parameters:
:data:`.triton_kernels.CONFIG`; docs/kernel_notes.md has the measurements behind each default).

Small calls take the PyTorch path too: below ``SETTINGS.kernel_min_elements`` input elements
(tokens x in) a layer is bound by host launch overhead, where the kernels' extra launches cost
more than their saved memory passes (H100, hidden 2048: the PyTorch path won at 2k tokens, the
kernels at 4k; docs/kernel_notes.md); bat-row and bone-ab need twice that
(``VariantKernels.min_elements_factor``). Steps recorded as CUDA graphs pay no launch cost:
inside :func:`any_size` the deterministic variants (bone, bone-mini) take the kernels at every size.
"""

from __future__ import annotations

from . import paths  # noqa: F401  (each variant registers its kernels on import)
from .registry import (
    GPU_PATHS,
    KERNELS,
    GroupKind,
    VariantKernels,
    any_size,
    available,
    layer_group,
    padded_variants,
    register,
    supported,
)

__all__ = [
    "any_size",
    "available",
    "supported",
    "layer_group",
    "padded_variants",
    "register",
    "GroupKind",
    "VariantKernels",
    "KERNELS",
    "GPU_PATHS",
]
