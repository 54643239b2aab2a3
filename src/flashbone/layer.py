"""Adapted layers: a frozen base linear layer plus named block-affine adapters.

    BoneLayer
      base_layer: nn.Linear | transformers Conv1D      (frozen)
      adapters:   {"default": BlockAdapter(B), "other": BlockAdapter(A, B), ...}

    forward(x) = x @ W_eff^T + bias,  W_eff = W, then every active weight-reading adapter
                 (bat*, bone-ab) in order, then the additive ones (bone, bone-mini)

    SavedModule                                       (modules_to_save, e.g. a classifier)
      original_module: the model's module             (frozen, never changed)
      copies:     {"default": trained copy, ...}      (one per adapter that lists it)

The math lives in :mod:`flashbone.variants` (dense reference) and :mod:`flashbone.ops`
(fast paths); on CUDA, layers that read one input may run as a group
(:mod:`flashbone.siblings`). This file only holds parameters and bookkeeping: which adapters
are active, merged or disabled.
"""

from __future__ import annotations

import copy
from typing import Iterable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from . import kernels  # noqa: F401  (registers the GPU paths into ops on import)
from . import quant, siblings
from .errors import BoneConfigError, MergeError, TargetError
from .ops import AdapterCall, LazyCast, adapted_linear, as_dtype
from .ops.quantized import quantized_linear
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
    """``nn.Linear`` or transformers' ``Conv1D`` with a floating-point weight, or a bitsandbytes
    4-bit / 8-bit linear layer (:mod:`flashbone.quant`)."""
    conv1d = _conv1d_type()
    kinds = (nn.Linear,) + ((conv1d,) if conv1d is not None else ())
    return isinstance(module, kinds) and (module.weight.is_floating_point() or quant.is_quantized(module))


def features(module: nn.Module) -> tuple[int, int]:
    """``(out_features, in_features)`` of a supported layer or a :class:`BoneLayer`."""
    if isinstance(module, BoneLayer):
        return module.out_features, module.in_features
    if quant.is_quantized(module):  # the packed weight has another shape
        return module.out_features, module.in_features
    out, inn = module.weight.shape
    return (out, inn) if isinstance(module, nn.Linear) else (inn, out)  # Conv1D is (in, out)


class BlockAdapter(nn.Module):
    """The trainable tensors of one adapter on one layer (``B``, and ``A`` for bone-ab)."""

    def __init__(
        self,
        variant: str,
        r: int,
        out_features: int,
        in_features: int,
        mini_r: int | None = None,
        dropout: float = 0.0,
        init: str = "zeros",
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
        where: str = "layer",
    ):
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

    def detached(self, dtype: torch.dtype) -> dict[str, Tensor]:
        """The tensors without autograd, in ``dtype`` (for merge arithmetic)."""
        return {n: p.detach().to(dtype) for n, p in self.named_parameters(recurse=False)}

    def call(self, dtype: torch.dtype) -> AdapterCall:
        """The tensors cast to the compute dtype (inside autograd), for the dispatcher."""
        params = LazyCast({n: p for n, p in self._parameters.items() if p is not None}, dtype)
        dropout = self.dropout if self.dropout is not None and self.training else None
        return AdapterCall(self.variant, self.r, params, dropout, self.mini_r)

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
        self.out_features, self.in_features = features(base_layer)
        self.quantized = quant.kind(base_layer)  # "4bit", "8bit" or None

    def refresh_base(self) -> None:
        """Re-read the base layer's kind after it was replaced (e.g. by :func:`quant.dequantize_`)."""
        self.quantized = quant.kind(self.base_layer)

    # -- weights ------------------------------------------------------------------------
    @property
    def weight(self) -> Tensor:
        """The base weight as ``(out, in)`` (a transposed view for ``Conv1D``; a dequantised
        copy for a quantised base)."""
        if self.quantized:
            return quant.dequantize(self.base_layer)
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
        return [f"adapters.{a}.{n}" for a in self.adapters for n, _ in self.adapters[a].named_parameters(recurse=False)]

    def _ordered(self, names: Iterable[str]) -> list[str]:
        """Weight-reading adapters first, in the given order, then the additive ones."""
        names = list(names)
        reading = [n for n in names if VARIANTS[self.adapters[n].variant].reads_weight]
        return reading + [n for n in names if n not in reading]

    # -- forward ------------------------------------------------------------------------
    def _live(self) -> list[str]:
        """Active, unmerged adapters in the order they apply (weight-reading ones first)."""
        active = self.active_adapters
        if len(active) == 1 and not self._merges:  # the common case, on every forward
            return active
        merged = self.merged_adapters
        return self._ordered(a for a in active if a not in merged)

    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        if self.adapters_disabled:
            if self._merges:
                raise MergeError("adapters are disabled but merged into the base weight; unmerge first")
            return self.base_layer(x, *args, **kwargs)
        live = self._live()
        if not live:
            return self.base_layer(x, *args, **kwargs)
        # Compute in the base weight's dtype, or autocast's: the base GEMM never runs upcast,
        # and float32 adapter tensors are cast down (inside autograd: gradients reach them).
        # The result has the dtype the base layer itself returns.
        device = x.device.type
        if self.quantized:
            return self._quantized(x, live)
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            with torch.autocast(device, enabled=False):
                # x.to returns x itself when it is in dtype already (a bf16 base under bf16
                # autocast): siblings still see their shared input tensor
                return self._grouped_or_alone(x.to(dtype), live, dtype)
        return self._grouped_or_alone(x, live, self.base_layer.weight.dtype)

    def _grouped_or_alone(self, x: Tensor, live: list[str], dtype: torch.dtype) -> Tensor:
        # q/k/v and gate/up as one group (flashbone.siblings); not while torch.compile traces
        if x.is_cuda and not torch.compiler.is_compiling():
            y = siblings.take(self, x)
            if y is not None:
                return y
            siblings.learn(self, x)
            y = siblings.run(self, x, dtype)
            if y is not None:
                return y
        return as_dtype(self._adapted(as_dtype(x, dtype), live, dtype), x.dtype)

    def _adapted(self, x: Tensor, live: list[str], dtype: torch.dtype) -> Tensor:
        # runs on every forward: attributes read once (nn.Module lookups cost host time that
        # the GPU waits for at small steps, docs/kernel_notes.md)
        base, adapters = self.base_layer, self.adapters._modules
        w, bias = base.weight, base.bias
        calls = [adapters[a].call(dtype) for a in live]
        bias = None if bias is None else as_dtype(bias, dtype)
        return adapted_linear(x, as_dtype(w.t() if self.is_conv1d else w, dtype), bias, calls)

    def _quantized(self, x: Tensor, live: list[str]) -> Tensor:
        base = self.base_layer
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else quant.compute_dtype(base, x)
        with torch.autocast(device, enabled=False):
            if x.is_cuda and self.quantized == "4bit" and not torch.compiler.is_compiling():
                y = siblings.take(self, x)  # q/k/v and gate/up as one node, as for dense bases
                if y is None:
                    siblings.learn(self, x)
                    y = siblings.run(self, x, dtype)
                if y is not None:
                    return y
            calls = [self.adapters[a].call(dtype) for a in live]
            y = quantized_linear(
                x, base, quant.dequantizer(base), base.bias, self.out_features, calls, dtype, self.quantized == "4bit"
            )
        return as_dtype(y, x.dtype)

    # -- merge ------------------------------------------------------------------------
    # Merging computes in float32 (float64 stays) and casts to the base dtype once. Merged
    # adapters become part of the base weight: adapters still live apply on top of it.

    def merged_weight(self, names: Iterable[str]) -> Tensor:
        """``W`` with the named adapters applied (weight-reading ones first), in float32."""
        w = _wide(self.weight)
        for n in self._ordered(names):
            w = w + self._delta(n, w)
        return w

    def merge(self, names: Iterable[str] | None = None, *, safe: bool = False, keep_original: bool = False) -> None:
        """Fold adapters (default: the active ones) into the base weight.

        ``safe`` refuses NaN/Inf results before touching the weight. ``keep_original``
        keeps a copy of the weight so that :meth:`unmerge` is exact and needs no inverse.
        """
        names = list(self.active_adapters if names is None else names)
        unknown = [n for n in names if n not in self.adapters]
        if unknown:
            raise BoneConfigError(f"no adapter {unknown} on this layer; it has {list(self.adapters)}")
        names = [n for n in names if n not in self.merged_adapters]
        if not names:
            return
        if self.quantized:
            raise MergeError(
                f"the base layer is {self.quantized} (bitsandbytes): merging into it would round the merged "
                "weight back to that precision and lose most of the adapter. Use merge_and_unload(), which "
                "merges into a dequantised full-precision copy, or load the base unquantised to merge"
            )
        with torch.no_grad():
            new = self.merged_weight(names).to(self.weight.dtype)
            if safe and not torch.isfinite(new).all():
                raise MergeError(f"merging adapter(s) {names} gives NaN/Inf weights; the layer is unchanged")
            original = self.weight.detach().clone() if keep_original else None
            self._set_weight(new)
        self._merges.append((self._ordered(names), original))

    @property
    def merged_adapters(self) -> list[str]:
        return [n for names, _ in self._merges for n in names]

    def unmerged_weight(self) -> Tensor:
        """The weight with every merge undone, last first, in float32; changes nothing.

        A kept original is used as is; otherwise additive adapters are subtracted and
        weight-reading ones inverted (raises :class:`MergeError` for a singular block).
        """
        w = _wide(self.weight)
        for names, original in reversed(self._merges):
            if original is not None:
                w = _wide(original)
                continue
            for n in reversed(names):
                ad, v = self.adapters[n], VARIANTS[self.adapters[n].variant]
                params = ad.detached(w.dtype)
                w = v.undo(w, params, ad.r) if v.reads_weight else w - v.delta(w, params, ad.r)
        return w

    def unmerge(self) -> None:
        """Undo every merge; the weight is written once, cast to its dtype once."""
        if self._merges:
            with torch.no_grad():
                self._set_weight(self.unmerged_weight())
            self._merges.clear()

    def _delta(self, name: str, w: Tensor) -> Tensor:
        ad = self.adapters[name]
        return VARIANTS[ad.variant].delta(w, ad.detached(w.dtype), ad.r)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"active={self.active_adapters}, merged={self.merged_adapters}"
        )


def compact_weights(module: nn.Module) -> int:
    """Give every base weight in ``module`` that a GPU path padded with spare columns
    (:mod:`flashbone.kernels.padded`) its own contiguous storage again, in place; returns how
    many. Unloading, merging and the DDP/FSDP wrappers call it before handing weights on."""
    return kernels.padded.compact_(module)


def _wide(w: Tensor) -> Tensor:
    """``w`` in float32 for merge arithmetic (float64 stays float64)."""
    return w.detach().to(torch.promote_types(w.dtype, torch.float32))


class SavedModule(nn.Module):
    """A module that adapters train in full (``modules_to_save``): one copy per adapter.

    The original stays frozen and unchanged, as in PEFT's ``ModulesToSaveWrapper``: two
    adapters never overwrite each other's head, and ``disable_adapter()`` / ``unload()``
    give back the original. ``forward`` runs the copy of the first active adapter that
    has one, else the original; other attributes are read from that module too.
    """

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original_module = original
        self.copies = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.adapters_disabled = False

    def add_copy(self, name: str) -> None:
        self.copies[name] = copy.deepcopy(self.original_module)

    def set_active(self, names: Iterable[str]) -> None:
        self.active_adapters = [n for n in names if n in self.copies]

    @property
    def current(self) -> nn.Module:
        if not self.adapters_disabled and self.active_adapters:
            return self.copies[self.active_adapters[0]]
        return self.original_module

    def forward(self, *args, **kwargs):
        return self.current(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if "adapters_disabled" not in self.__dict__:  # still being built or copied
                raise
            return getattr(self.current, name)
