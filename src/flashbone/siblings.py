"""Adapted layers that read the same input (q/k/v, gate/up), run as one group on the GPU.

    q_proj(x), once its siblings are known:
        ops.adapted_linear_group(x, [q, k, v]) -> y_q, y_k, y_v     one autograd node
        y_k and y_v wait for k_proj(x) and v_proj(x), which return them

Why: at a few thousand tokens per step the GPU waits for the host in the attention block
(docs/kernel_notes.md). A group costs one Python forward and one backward instead of three,
and its backward sums the members' input gradients into one buffer instead of leaving autograd
to add them pairwise.

Siblings are learned on each layer's first forwards: a layer called with an input tensor that
another layer already read (same object, same version) becomes that layer's sibling. Every use
checks again (the same input object, one active adapter, no dropout) and anything that does not
match runs the per-layer path, so a learned group can only ever cost a wasted output, never a
wrong one. Only CUDA calls take part; the bookkeeping lives here, keyed weakly by layer, so
copies of a model learn their own groups. Layers on a 4-bit base group too (bone and
bone-mini: :func:`flashbone.ops.quantized.quantized_bone_group`). ``SETTINGS.groups = False`` (``FLASHBONE_GROUPS=0``) turns grouping off.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import quant
from .ops import adapted_linear_group, as_dtype
from .ops.quantized import quantized_bone_group
from .settings import SETTINGS

if TYPE_CHECKING:
    from .layer import BoneLayer

LEARN_CALLS = 2  # forwards per layer that record who read its input first (>= 2: see run)
_first_reader: dict[int, tuple[weakref.ref, int, weakref.ref]] = {}  # id(x) -> (x, version, layer)
_siblings: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> [ref(layer), ...]
_waiting: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> (ref(x), version, y, adapter)
_learn_left: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def siblings_of(layer: BoneLayer) -> list[BoneLayer]:
    """The layers learned to read the same input after ``layer`` (empty if none)."""
    return [m for m in (ref() for ref in _siblings.get(layer, ())) if m is not None]


def take(layer: BoneLayer, x: Tensor) -> Tensor | None:
    """The output a group computed for ``layer`` on this very input, if one is waiting."""
    hit = _waiting.pop(layer, None)
    if hit is None:
        return None
    ref, version, y, adapter = hit
    live = layer._live()
    if (
        ref() is not x
        or x._version != version
        or layer.adapters_disabled
        or len(live) != 1
        or layer.adapters._modules.get(live[0]) is not adapter
    ):
        return None
    return y


def learn(layer: BoneLayer, x: Tensor) -> None:
    """On the layer's first forwards: note it as the first reader of ``x``, or as a sibling of
    the layer that read ``x`` first."""
    left = _learn_left.get(layer, LEARN_CALLS)
    if left <= 0 or not SETTINGS.groups:
        return
    _learn_left[layer] = left - 1
    key = id(x)
    hit = _first_reader.get(key)
    first = hit[2]() if hit is not None and hit[0]() is x and hit[1] == x._version else None
    if first is None:
        _first_reader[key] = (weakref.ref(x), x._version, weakref.ref(layer))
        weakref.finalize(x, _first_reader.pop, key, None)
    elif first is not layer and layer not in siblings_of(first):
        _siblings.setdefault(first, []).append(weakref.ref(layer))


def run(layer: BoneLayer, x: Tensor, dtype: torch.dtype) -> Tensor | None:
    """``layer(x)`` computed together with its siblings' outputs (left waiting for them), or
    ``None`` when there is no group to run: then the caller runs the layer alone."""
    members = siblings_of(layer) if SETTINGS.groups else []
    # only once every member has finished learning: the grouping then never changes between a
    # checkpointed block's forward and its recomputation, which must save the same tensors
    # (the learning forward and the one after it, its recomputation, both run alone)
    if not members or any(_learn_left.get(m, LEARN_CALLS) > 0 for m in (layer, *members)):
        return None
    members.insert(0, layer)
    kind = layer.quantized  # a group is all dense, or all 4-bit (one dequantised GEMM each)
    if kind not in (None, "4bit"):
        return None
    args, adapters = [], []
    for m in members:
        live = m._live()
        w = m.base_layer.weight
        if m.adapters_disabled or len(live) != 1 or m.is_conv1d or m.quantized != kind:
            return None
        if kind is None and w.dtype != dtype:
            return None
        adapter = m.adapters._modules[live[0]]
        call = adapter.call(dtype)
        if call.dropout is not None:
            return None
        bias = m.base_layer.bias
        bias = None if bias is None else as_dtype(bias, dtype)
        args.append((w, bias, call) if kind is None else (quant.dequantizer(m.base_layer), bias, call, m.out_features))
        adapters.append(adapter)
    outs = (adapted_linear_group if kind is None else quantized_bone_group)(as_dtype(x, dtype), args)
    if outs is None:
        return None
    for m, adapter, y in zip(members[1:], adapters[1:], outs[1:]):
        _waiting[m] = (weakref.ref(x), x._version, as_dtype(y, x.dtype), adapter)
    return as_dtype(outs[0], x.dtype)
