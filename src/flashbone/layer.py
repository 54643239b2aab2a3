"""Adapted layers: a frozen base linear layer plus named block-affine adapters.

    BoneLayer
      base_layer: nn.Linear | transformers Conv1D      (frozen)
      adapters:   {"default": BlockAdapter(B), "other": BlockAdapter(A, B), ...}

    forward(x) = x @ W_eff^T + bias,  W_eff = W, then every active weight-reading adapter
                 (bat*, bone-ab) in order, then the additive ones (bone, bone-mini)

The math lives in :mod:`flashbone.variants` (dense reference) and :mod:`flashbone.ops`
(fast paths). This file only holds parameters and bookkeeping: which adapters are
active, merged or disabled.
"""

from __future__ import annotations

from typing import Iterable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .errors import BoneConfigError, MergeError, TargetError
from .ops import AdapterCall, adapted_linear
from .variants import VARIANTS, check_shape, get_variant


@runtime_checkable
class AdapterModule(Protocol):
    """Modules holding trainable adapter tensors list their parameter names."""

    def adapter_params(self) -> list[str]: ...


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def is_supported(module: nn.Module) -> bool:
    """``nn.Linear`` or transformers' ``Conv1D`` with a floating-point weight."""
    conv1d = _conv1d_type()
    kinds = (nn.Linear,) + ((conv1d,) if conv1d is not None else ())
    return isinstance(module, kinds) and module.weight.is_floating_point()


class BlockAdapter(nn.Module):
    """The trainable tensors of one adapter on one layer (``B``, and ``A`` for bone-ab)."""

    def __init__(self, variant: str, r: int, out_features: int, in_features: int,
                 mini_r: int | None = None, dropout: float = 0.0, init: str = "zeros",
                 dtype: torch.dtype = torch.float32, device: torch.device | None = None,
                 where: str = "layer"):
        super().__init__()
        v = get_variant(variant)
        check_shape(v, out_features, in_features, r, mini_r, where)
        self.variant, self.r, self.mini_r = v.name, r, mini_r
        for name, shape in v.shapes(out_features, in_features, r, mini_r).items():
            t = torch.zeros(shape, dtype=dtype, device=device)
            if init == "random" and t.device.type != "meta":
                nn.init.normal_(t, std=0.02)
            self.register_parameter(name, nn.Parameter(t))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None

    def tensors(self) -> dict[str, Tensor]:
        return {n: p for n, p in self.named_parameters(recurse=False)}

    def call(self, dtype: torch.dtype) -> AdapterCall:
        params = {n: p.to(dtype) for n, p in self.named_parameters(recurse=False)}
        return AdapterCall(self.variant, self.r, params, self.dropout, self.mini_r)

    def extra_repr(self) -> str:
        shapes = ", ".join(f"{n}={tuple(p.shape)}" for n, p in self.named_parameters(recurse=False))
        return f"variant={self.variant}, r={self.r}, {shapes}"


class BoneLayer(nn.Module):
    """A frozen ``nn.Linear`` / ``Conv1D`` with any number of named block adapters."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        if not is_supported(base_layer):
            raise TargetError(
                f"cannot adapt a {type(base_layer).__name__}: only nn.Linear and "
                "transformers' Conv1D with floating-point weights are supported"
            )
        self.base_layer = base_layer
        self.adapters = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.adapters_disabled = False
        # each merge: (adapter names in applied order, copy of the weight before, or None)
        self._merges: list[tuple[list[str], Tensor | None]] = []
        self.is_conv1d = not isinstance(base_layer, nn.Linear)
        w = base_layer.weight
        self.out_features, self.in_features = (w.shape[1], w.shape[0]) if self.is_conv1d else w.shape

    # -- weights ------------------------------------------------------------------------
    @property
    def weight(self) -> Tensor:
        """The base weight as ``(out, in)`` (a transposed view for ``Conv1D``)."""
        w = self.base_layer.weight
        return w.t() if self.is_conv1d else w

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def _set_weight(self, w: Tensor) -> None:
        """Write an ``(out, in)`` weight back into the base layer, in its own dtype."""
        target = self.base_layer.weight
        with torch.no_grad():
            target.copy_(w.t() if self.is_conv1d else w)

    # -- adapters -----------------------------------------------------------------------
    def add_adapter(self, name: str, adapter: BlockAdapter, active: bool = True) -> None:
        if name in self.adapters:
            raise BoneConfigError(f"adapter {name!r} already exists on this layer")
        self.adapters[name] = adapter
        if active and name not in self.active_adapters:
            self.active_adapters.append(name)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            raise MergeError(f"adapter {name!r} is merged; unmerge it before deleting it")
        del self.adapters[name]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def set_active(self, names: Iterable[str]) -> None:
        self.active_adapters = [n for n in names if n in self.adapters]

    def adapter_params(self) -> list[str]:
        return [f"adapters.{a}.{n}" for a in self.adapters for n, _ in
                self.adapters[a].named_parameters(recurse=False)]

    def _ordered(self, names: Iterable[str]) -> list[str]:
        """Weight-reading adapters first, in the given order, then the additive ones."""
        names = list(names)
        heavy = [n for n in names if VARIANTS[self.adapters[n].variant].reads_weight]
        return heavy + [n for n in names if n not in heavy]

    # -- forward ------------------------------------------------------------------------
    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        live = [a for a in self.active_adapters if a not in self.merged_adapters]
        if self.adapters_disabled:
            if self.merged_adapters:
                raise MergeError(
                    "adapters are disabled but merged into the base weight; unmerge first"
                )
            return self.base_layer(x, *args, **kwargs)
        if not live:
            return self.base_layer(x, *args, **kwargs)
        dtype = _compute_dtype(x, self.base_layer.weight)
        w, bias = self.weight, self.bias
        with torch.autocast(x.device.type, enabled=False):
            calls = [self.adapters[a].call(dtype) for a in self._ordered(live)]
            y = adapted_linear(x.to(dtype), w.to(dtype), None if bias is None else bias.to(dtype), calls)
        return y.to(x.dtype)

    # -- merge --------------------------------------------------------------------------
    def merged_weight(self, names: Iterable[str], weight: Tensor | None = None) -> Tensor:
        """``W`` with the named adapters applied, computed in float32 (float64 stays)."""
        w = self.weight if weight is None else weight
        w = w.to(torch.promote_types(w.dtype, torch.float32))
        for n in self._ordered(names):
            ad = self.adapters[n]
            params = {k: p.detach().to(w.dtype) for k, p in ad.tensors().items()}
            w = w + VARIANTS[ad.variant].delta(w, params, ad.r)
        return w

    def merge(self, names: Iterable[str] | None = None, safe: bool = False,
              keep_original: bool = False) -> None:
        """Fold adapters into the base weight (computed in float32, cast once).

        ``safe`` refuses NaN/Inf results before touching the weight. ``keep_original``
        keeps a copy of the weight so that :meth:`unmerge` is exact and needs no inverse.
        """
        names = [n for n in (self.active_adapters if names is None else names)
                 if n not in self.merged_adapters]
        if not names:
            return
        with torch.no_grad():
            new = self.merged_weight(names)
            if safe and not torch.isfinite(new).all():
                raise MergeError(
                    f"merging adapter(s) {names} gives NaN/Inf weights; the layer is unchanged"
                )
            original = self.weight.detach().clone() if keep_original else None
            self._set_weight(new)
        self._merges.append((self._ordered(names), original))

    @property
    def merged_adapters(self) -> list[str]:
        return [n for names, _ in self._merges for n in names]

    def unmerge(self) -> None:
        """Undo every merge, last first: exact from a kept original, else by inversion."""
        with torch.no_grad():
            while self._merges:
                names, original = self._merges[-1]
                if original is not None:
                    self._set_weight(original)
                    names.clear()
                while names:  # an undo that raises leaves the weight and this list consistent
                    self._set_weight(self._undo(names[-1]))
                    names.pop()
                self._merges.pop()

    def _undo(self, name: str) -> Tensor:
        ad = self.adapters[name]
        v = VARIANTS[ad.variant]
        w = self.weight.to(torch.promote_types(self.weight.dtype, torch.float32))
        params = {k: p.detach().to(w.dtype) for k, p in ad.tensors().items()}
        return v.undo(w, params, ad.r) if v.reads_weight else w - v.delta(w, params, ad.r)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"active={self.active_adapters}, merged={self.merged_adapters}")


def _compute_dtype(x: Tensor, w: Tensor) -> torch.dtype:
    """Autocast's dtype when autocast is on, else the base weight's dtype.

    The base GEMM therefore never runs upcast: a bf16 base computes in bf16 and float32
    adapter tensors are cast down to it.
    """
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return w.dtype
