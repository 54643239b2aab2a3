"""``BoneConfig``: what to adapt, and how.

The config is a plain dataclass that round-trips through JSON. :mod:`flashbone.adapter_files` maps it
to and from PEFT's ``MISS`` / legacy ``BONE`` files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from .errors import BoneConfigError
from .variants import VARIANTS, get_variant

INITS = ("zeros", "random")
ADAPTER_DTYPES = ("float32", "bfloat16", "float16", "float64", "auto")


@dataclass
class BoneConfig:
    """Configuration of one block-affine adapter.

    Args:
        variant: a name in :data:`flashbone.variants.VARIANTS` (``bone``, ``bone-mini``,
            ``bat``, ``bat-row``, ``bat-hadamard``, ``bone-ab``, ``bat-grouped``; see
            :mod:`flashbone.variants` for the math).
        r: block size (the "rank"). ``r <= in_features``; the ``bat*`` variants and
            ``bone-ab`` need ``r`` to divide both sides of every adapted weight.
        mini_r: the variant's second size, for the variants that have one: ``bone-mini``'s
            distinct output columns ``m`` (``out_features % m == 0``), ``bat-grouped``'s
            number of shared matrices ``g`` (dividing every layer's block count).
        target_modules: ``"all-linear"`` (every ``nn.Linear`` / GPT-2 ``Conv1D`` except the
            output head and ``modules_to_save``), a list of names (a module matches if its
            full name equals an entry or ends with ``"." + entry``), or a regular expression
            matched against the full module name.
        exclude_modules: names or a regex of modules never to adapt.
        layers_to_transform: only adapt modules inside these decoder-layer indices.
        layers_pattern: the name of the layer list (``"layers"``, ``"h"``...); guessed when
            ``None``.
        modules_to_save: modules trained in full and saved with the adapter (for example a
            classification head, ``["classifier"]`` or ``["score"]``).
        dropout: dropout on the input of the additive variants (``bone``, ``bone-mini``).
        init: ``"zeros"`` (the adapted model starts equal to the base) or ``"random"``
            (small normal values; for tests).
        adapter_dtype: storage dtype of the trainable tensors; ``"float32"`` by default (cast
            to the activation dtype for compute), ``"auto"`` keeps the base weight's dtype.
        base_model_name_or_path, task_type: metadata written to ``adapter_config.json``.
    """

    variant: str = "bone"
    r: int = 64
    mini_r: int | None = None
    target_modules: list[str] | str | None = "all-linear"
    exclude_modules: list[str] | str | None = None
    layers_to_transform: list[int] | int | None = None
    layers_pattern: str | None = None
    modules_to_save: list[str] | None = None
    dropout: float = 0.0
    init: str = "zeros"
    adapter_dtype: str = "float32"
    base_model_name_or_path: str | None = None
    task_type: str | None = None

    def __post_init__(self) -> None:
        variant = get_variant(self.variant)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise BoneConfigError(f"r must be a positive integer, got {self.r!r}")
        if variant.mini_r is not None:
            if isinstance(self.mini_r, bool) or not isinstance(self.mini_r, int) or self.mini_r <= 0:
                raise BoneConfigError(
                    f"variant {variant.name!r} needs mini_r, a positive integer: {variant.mini_r}; "
                    f"got mini_r={self.mini_r!r}"
                )
        if not 0.0 <= float(self.dropout) < 1.0:
            raise BoneConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.dropout and variant.reads_weight:
            raise BoneConfigError(
                f"dropout is defined only for the additive variants (bone, bone-mini), "
                f"not for {variant.name!r}; set dropout=0"
            )
        if self.init not in INITS:
            raise BoneConfigError(f"init must be one of {INITS}, got {self.init!r}")
        if self.adapter_dtype not in ADAPTER_DTYPES:
            raise BoneConfigError(f"adapter_dtype must be one of {ADAPTER_DTYPES}, got {self.adapter_dtype!r}")
        if isinstance(self.layers_to_transform, int) and not isinstance(self.layers_to_transform, bool):
            self.layers_to_transform = [self.layers_to_transform]
        if isinstance(self.target_modules, (set, tuple)):
            self.target_modules = sorted(self.target_modules)
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = [self.modules_to_save]
        if self.target_modules is None:
            self.target_modules = "all-linear"

    def torch_dtype(self, base_dtype: torch.dtype) -> torch.dtype:
        """The dtype adapter tensors are stored in, given the base weight's dtype."""
        if self.adapter_dtype == "auto":
            return base_dtype
        return getattr(torch, self.adapter_dtype)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BoneConfig":
        """Build from a dict; unknown keys are an error that lists the known ones."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise BoneConfigError(f"unknown BoneConfig field(s) {unknown}; known fields: {sorted(names)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "BoneConfig":
        return dataclasses.replace(self, **changes)


__all__ = ["BoneConfig", "VARIANTS"]
