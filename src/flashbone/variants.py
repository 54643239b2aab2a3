"""The Bone family: the one place that defines each variant's math.

A linear layer stores ``W`` with shape ``(out, in)`` and computes ``y = x @ W.T``.
``W`` is cut into ``r x r`` blocks ``W_ab = W[a*r:(a+1)*r, b*r:(b+1)*r]``
(``a`` = output block, ``b`` = input block)::

    variant        trainable             delta W                          PEFT MiSS
    -------------  --------------------  -------------------------------  ------------------
    bone           B (r, out)            dW[o, i] = B[i mod r, o]         init_weights=True
    bone-mini      B (r, m)              dW[o, i] = B[i mod r, o mod m]   init_weights="mini"
    bat            B (out/r, r, r)       dW_ab = (W_ab + I) @ B_a         init_weights="bat"
    bat-row        B (in/r, r, r)        dW_ab = (W_ab + I) @ B_b         -
    bat-hadamard   B (out/r, r, r)       dW_ab = W_ab * B_a + B_a         -
    bone-ab        A, B (in/r, r, r)     dW_ab = W_ab @ A_b + B_b         -
    bat-grouped    B (g, r, r)           dW_ab = (W_ab + I) @ B_k,        -
                   (g = mini_r)          k = (a * in/r + b) mod g

``bone`` with ``in % r != 0`` pads ``x`` on the right: the last, partial input block uses
the first ``in mod r`` rows of ``B``. Every other variant needs ``r`` to divide both sides.

The functions below build ``dW`` densely. They are the *reference*: merging uses them and
every fast path in :mod:`flashbone.ops` is tested against them. Adding a variant means
writing its ``delta`` (and ``undo`` if its delta reads ``W``) and registering a
:class:`Variant` in ``VARIANTS``; it then works everywhere through :func:`flashbone.ops.dense_path`,
and a faster path in :mod:`flashbone.ops` or :mod:`flashbone.kernels` is optional
(docs/library.md, "Adding a variant").

``bat-grouped`` is the v1 paper's grouped Block Affine (eq. 4-5): ``W`` as ``(gn, g, r, r)``
blocks, one ``B (g, r, r)`` shared by the ``gn`` groups. ``g = in/r`` gives ``bat-row``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor

from .errors import BoneConfigError, BoneShapeError, MergeError

Params = Mapping[str, Tensor]


def blocks(w: Tensor, r: int) -> Tensor:
    """View ``(out, in)`` as ``(out/r, r, in/r, r)``, indexed ``[a, i, b, j]``."""
    out, inn = w.shape
    return w.reshape(out // r, r, inn // r, r)


def unblocks(wb: Tensor) -> Tensor:
    na, r, nb, _ = wb.shape
    return wb.reshape(na * r, nb * r)


def _by_out_block(b: Tensor) -> Tensor:
    """``(out/r, r, r)`` indexed by ``a`` -> broadcastable to ``[a, i, b, j]``."""
    return b[:, :, None, :]


def _by_in_block(b: Tensor) -> Tensor:
    """``(in/r, r, r)`` indexed by ``b`` -> broadcastable to ``[a, i, b, j]``."""
    return b.permute(1, 0, 2)[None]


# ----------------------------------------------------------------------------- deltas


def bone_delta(w: Tensor, p: Params, r: int) -> Tensor:
    """``dW[o, i] = B[i mod r, o]``: ``B^T`` tiled along the input dimension."""
    out, inn = w.shape
    return p["B"].t().repeat(1, math.ceil(inn / r))[:, :inn]


def bone_mini_delta(w: Tensor, p: Params, r: int) -> Tensor:
    """``dW[o, i] = B[i mod r, o mod m]``: ``B`` tiled along both dimensions."""
    out = w.shape[0]
    full = p["B"].repeat(1, out // p["B"].shape[1])
    return bone_delta(w, {"B": full}, r)


def bat_delta(w: Tensor, p: Params, r: int) -> Tensor:
    """``dW_ab = W_ab @ B_a + B_a``."""
    b = p["B"]
    wb = blocks(w, r)
    return unblocks(torch.einsum("aibj,ajk->aibk", wb, b) + _by_out_block(b))


def bat_row_delta(w: Tensor, p: Params, r: int) -> Tensor:
    """``dW_ab = W_ab @ B_b + B_b``."""
    b = p["B"]
    wb = blocks(w, r)
    return unblocks(torch.einsum("aibj,bjk->aibk", wb, b) + _by_in_block(b))


def bat_hadamard_delta(w: Tensor, p: Params, r: int) -> Tensor:
    """``dW_ab = W_ab * B_a + B_a`` (elementwise)."""
    b = _by_out_block(p["B"])
    return unblocks(blocks(w, r) * b + b)


def bone_ab_delta(w: Tensor, p: Params, r: int) -> Tensor:
    """``dW_ab = W_ab @ A_b + B_b``."""
    wb = blocks(w, r)
    return unblocks(torch.einsum("aibj,bjk->aibk", wb, p["A"]) + _by_in_block(p["B"]))


def _block_groups(w: Tensor, r: int, g: int) -> Tensor:
    """``k[a, b] = (a * in/r + b) mod g``: which of the ``g`` shared matrices block ``W_ab`` uses
    (the blocks in row-major order, cut into groups of ``g``: ``W`` as ``(gn, g, r, r)``)."""
    na, nb = w.shape[0] // r, w.shape[1] // r
    return torch.arange(na * nb, device=w.device).reshape(na, nb) % g


def bat_grouped_delta(w: Tensor, p: Params, r: int) -> Tensor:
    """``dW_ab = W_ab @ B_k + B_k`` with ``k = (a * in/r + b) mod g`` (v1 paper eq. 4-5)."""
    b = p["B"]
    bk = b[_block_groups(w, r, b.shape[0])]  # (out/r, in/r, r, r), indexed [a, b, j, k]
    return unblocks(torch.einsum("aibj,abjk->aibk", blocks(w, r), bk) + bk.permute(0, 2, 1, 3))


# ----------------------------------------------------------------------------- undo
# W' = W + dW(W) for the weight-reading variants is affine in W per block, so W comes back
# through an r x r inverse. Callers run these in float32 or float64.


def _checked_inverse(m: Tensor, what: str) -> Tensor:
    """Batched inverse of ``(n, r, r)``; refuses singular or ill-conditioned blocks."""
    cond = torch.linalg.cond(m)
    bad = ~torch.isfinite(cond) | (cond > 1e6)
    if bad.any():
        k = int(bad.nonzero()[0, 0])
        raise MergeError(
            f"cannot unmerge: block {k} of {what} is singular or ill-conditioned "
            f"(condition number {float(cond[k]):.3g}); the merged weight cannot be inverted. "
            "Reload the base model, or merge with keep_original=True to keep an exact way back."
        )
    return torch.linalg.inv(m)


def _eye(b: Tensor) -> Tensor:
    return torch.eye(b.shape[-1], dtype=b.dtype, device=b.device)


def bat_undo(w_new: Tensor, p: Params, r: int) -> Tensor:
    """``W_ab = (W'_ab - B_a) @ inv(I + B_a)``."""
    b = p["B"]
    inv = _checked_inverse(_eye(b) + b, "I + B (bat)")
    wb = blocks(w_new, r) - _by_out_block(b)
    return unblocks(torch.einsum("aibj,ajk->aibk", wb, inv))


def bat_row_undo(w_new: Tensor, p: Params, r: int) -> Tensor:
    """``W_ab = (W'_ab - B_b) @ inv(I + B_b)``."""
    b = p["B"]
    inv = _checked_inverse(_eye(b) + b, "I + B (bat-row)")
    wb = blocks(w_new, r) - _by_in_block(b)
    return unblocks(torch.einsum("aibj,bjk->aibk", wb, inv))


def bat_hadamard_undo(w_new: Tensor, p: Params, r: int) -> Tensor:
    """``W_ab = (W'_ab - B_a) / (1 + B_a)``."""
    b = _by_out_block(p["B"])
    scale = 1 + b
    if (scale.abs() < 1e-6).any():
        raise MergeError(
            "cannot unmerge bat-hadamard: an entry of 1 + B is zero, so the merged weight "
            "lost that entry of W. Reload the base model, or merge with keep_original=True."
        )
    return unblocks((blocks(w_new, r) - b) / scale)


def bone_ab_undo(w_new: Tensor, p: Params, r: int) -> Tensor:
    """``W_ab = (W'_ab - B_b) @ inv(I + A_b)``."""
    a = p["A"]
    inv = _checked_inverse(_eye(a) + a, "I + A (bone-ab)")
    wb = blocks(w_new, r) - _by_in_block(p["B"])
    return unblocks(torch.einsum("aibj,bjk->aibk", wb, inv))


def bat_grouped_undo(w_new: Tensor, p: Params, r: int) -> Tensor:
    """``W_ab = (W'_ab - B_k) @ inv(I + B_k)``, ``k`` as in :func:`bat_grouped_delta`."""
    b = p["B"]
    inv = _checked_inverse(_eye(b) + b, "I + B (bat-grouped)")
    k = _block_groups(w_new, r, b.shape[0])
    wb = blocks(w_new, r) - b[k].permute(0, 2, 1, 3)
    return unblocks(torch.einsum("aibj,abjk->aibk", wb, inv[k]))


# ----------------------------------------------------------------------------- registry


def _divisors_near(n: int, r: int, k: int = 4) -> list[int]:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    return sorted(sorted(divs, key=lambda d: (abs(d - r), d))[:k])


def _check_bone_mini(out: int, inn: int, r: int, m: int | None) -> str | None:
    if out % m:
        return (
            f"bone-mini needs mini_r to divide out_features={out}, but mini_r={m} does not; "
            f"mini_r values near it that divide {out}: {_divisors_near(out, m)}"
        )
    return None


def _check_bat_grouped(out: int, inn: int, r: int, g: int | None) -> str | None:
    n = (out // r) * (inn // r)
    if n % g:
        return (
            f"bat-grouped needs mini_r (g) to divide the layer's {n} blocks of {r} x {r} "
            f"(weight shape ({out}, {inn})), but mini_r={g} does not; g values near it that "
            f"divide {n}: {_divisors_near(n, g)}"
        )
    return None


@dataclass(frozen=True)
class Variant:
    """Everything flashbone knows about one member of the family.

    Attributes:
        name: the name used in configs and on the command line.
        shapes: ``(out, in, r, mini_r) -> {param: shape}`` of the trainable tensors.
        delta: dense ``dW`` from ``W`` and the trainable tensors (the reference).
        undo: ``W`` back from ``W + dW`` for variants whose delta reads ``W``; ``None`` for
            additive variants, which unmerge by subtraction.
        divisible: whether ``r`` must divide both ``in`` and ``out``.
        peft_init_weights: the value of PEFT ``MissConfig.init_weights`` for this variant,
            or ``None`` when PEFT lacks it.
        paper_name: how the papers call it.
        mini_r: what ``mini_r`` (the config's second size) means for this variant, or ``None``
            when the variant has no second size; when set, ``mini_r`` must be a positive integer.
        check: extra shape rule ``(out, in, r, mini_r) -> error message or None``.
    """

    name: str
    shapes: Callable[[int, int, int, int | None], dict[str, tuple[int, ...]]]
    delta: Callable[[Tensor, Params, int], Tensor]
    undo: Callable[[Tensor, Params, int], Tensor] | None
    divisible: bool
    peft_init_weights: bool | str | None
    paper_name: str
    mini_r: str | None = None
    check: Callable[[int, int, int, int | None], str | None] | None = None

    @property
    def reads_weight(self) -> bool:
        """True when ``dW`` depends on ``W``: such adapters apply before additive ones."""
        return self.undo is not None

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(self.shapes(64, 64, 8, 8))


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant("bone", lambda o, i, r, m: {"B": (r, o)}, bone_delta, None, False, True, "Bone / MiSS (v4 eq. 1)"),
        Variant(
            "bone-mini",
            lambda o, i, r, m: {"B": (r, m)},
            bone_mini_delta,
            None,
            False,
            "mini",
            "MiSS mini",
            mini_r="m, the distinct output columns (divides out_features)",
            check=_check_bone_mini,
        ),
        Variant("bat", lambda o, i, r, m: {"B": (o // r, r, r)}, bat_delta, bat_undo, True, "bat", "Bat / Bone-col"),
        Variant(
            "bat-row",
            lambda o, i, r, m: {"B": (i // r, r, r)},
            bat_row_delta,
            bat_row_undo,
            True,
            None,
            "Bat-row / Bone-row",
        ),
        Variant(
            "bat-hadamard",
            lambda o, i, r, m: {"B": (o // r, r, r)},
            bat_hadamard_delta,
            bat_hadamard_undo,
            True,
            None,
            "Bat-Hadamard (eq. 5)",
        ),
        Variant(
            "bone-ab",
            lambda o, i, r, m: {"A": (i // r, r, r), "B": (i // r, r, r)},
            bone_ab_delta,
            bone_ab_undo,
            True,
            None,
            "Bone-AB",
        ),
        Variant(
            "bat-grouped",
            lambda o, i, r, m: {"B": (m, r, r)},
            bat_grouped_delta,
            bat_grouped_undo,
            True,
            None,
            "Bone, grouped blocks (v1 eq. 4-5)",
            mini_r="g, the shared r x r matrices (divides each layer's block count)",
            check=_check_bat_grouped,
        ),
    ]
}


def get_variant(name: str) -> Variant:
    """Look up a variant by name; the error lists the valid names."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise BoneConfigError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}") from None


def check_shape(variant: Variant, out: int, inn: int, r: int, mini_r: int | None, where: str = "layer") -> None:
    """Raise a clear error if ``variant`` with block size ``r`` cannot adapt ``(out, in)``."""
    if not isinstance(r, int) or r <= 0:
        raise BoneConfigError(f"r must be a positive integer, got {r!r}")
    if r > inn:
        raise BoneShapeError(
            f"{where}: r={r} is larger than in_features={inn} (weight shape ({out}, {inn})); "
            f"use r <= {inn}, or leave this module out of target_modules"
        )
    if variant.divisible and (inn % r or out % r):
        near = _divisors_near(math.gcd(inn, out), r)
        raise BoneShapeError(
            f"{where}: {variant.name} needs r to divide both in_features={inn} and "
            f"out_features={out} (weight shape ({out}, {inn})), but r={r} does not; "
            f"r values near {r} that divide both: {near}"
        )
    if variant.mini_r is not None and (not isinstance(mini_r, int) or mini_r <= 0):
        raise BoneConfigError(f"{variant.name} needs a positive integer mini_r, got {mini_r!r}")
    message = variant.check(out, inn, r, mini_r) if variant.check is not None else None
    if message:
        raise BoneShapeError(f"{where}: {message}")


def num_params(variant: str, out: int, inn: int, r: int, mini_r: int | None = None) -> int:
    """Trainable parameters one adapter of ``variant`` adds to an ``(out, in)`` layer."""
    shapes = get_variant(variant).shapes(out, inn, r, mini_r)
    return sum(math.prod(s) for s in shapes.values())
