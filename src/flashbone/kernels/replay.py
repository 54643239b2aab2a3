"""Recompute a layer's input in backward from tensors the autograd graph keeps anyway.

The weight-reading variants need ``x`` for their parameter gradient (``dB = f(dy, x)``), so
saving it would add one ``T x in`` tensor per adapted input. A frozen base layer saves no
input, but the ops that *produced* ``x`` often did save their own operands. In a Llama-style
decoder layer::

    x = w * (h * rsqrt(var)).to(bf16)    RMSNorm output: q/k/v and gate/up inputs
        saved by the graph: w (by the outer mul), h and rsqrt(var) (by the inner mul)
    x = silu(gate) * up                  down_proj input: both operands saved by the mul

:func:`plan` walks ``x.grad_fn`` through ``mul``, ``.to(dtype)`` and reshapes, and returns a
:class:`Replay` when every leaf of that walk is a tensor some node already saved (no extra
memory: the graph holds them until after this layer's backward). Backward then recomputes
``x`` with the same elementwise ops in the same dtypes: bitwise the same tensor (on CUDA,
RMSNorm's ``w * (h * rsqrt).to(bf16)`` runs as one Triton pass with the same roundings
instead of three kernels and a float32 temporary). Consumers of
one ``x`` (q, k and v) share one :class:`Replay`, so ``x`` is recomputed once.

The producers are the model's own code (the Hugging Face RMSNorm and MLP), not ours, so
nothing can tag their outputs: the walk recognises their autograd nodes by class, and learns
those classes by running the same ops once on a two-element tensor (:func:`_node_kinds`)
rather than by PyTorch's internal node names, which are not an API and have changed between
releases.

Anything else (other producers, saved-tensor hooks such as non-reentrant checkpointing, an
in-place change) means no plan, and the caller saves ``x`` as usual. The first plans of a
process are checked against ``x`` (``torch.equal``); a mismatch turns replay off for good.
``SETTINGS.replay = False`` (``FLASHBONE_REPLAY=0``) turns it off.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..ops.torch_ops import saved_tensor_hooks_active
from ..settings import SETTINGS

_VERIFY_LEFT = 8
# id(input) -> (input, its version, Replay, sources): lives as long as the input does
_SHARED: dict[int, tuple[weakref.ref, int, weakref.ref, list[Tensor]]] = {}


class Replay:
    """Recomputes one tensor from ``sources``; shared by all its consumers.

    It holds no tensor of its own between passes: each consumer saves ``sources`` with
    ``ctx.save_for_backward`` (same storage as the graph's copies, so autograd frees them
    after that node's backward and checks them for in-place changes), and passes them back
    to :meth:`acquire`. The recomputed tensor is kept only from the first consumer's
    backward to the last one's.
    """

    def __init__(
        self,
        fn: Callable[[Sequence[Tensor]], Tensor],
        shape: torch.Size,
        versions: list[int],
        product: tuple[int, int] | None = None,
    ):
        self.fn, self.shape, self.versions = fn, shape, versions
        self.product = product  # (i, j) when the tensor is sources[i] * sources[j]
        self.pending = 0
        self.value: Tensor | None = None

    def _check_versions(self, sources: Sequence[Tensor]) -> None:
        if [t._version for t in sources] != self.versions:
            raise RuntimeError(
                "flashbone: a tensor needed to recompute a layer input was modified in "
                "place after the forward pass; set FLASHBONE_REPLAY=0 to save inputs instead"
            )

    def factors(self, sources: Sequence[Tensor]) -> tuple[Tensor, Tensor] | None:
        """``(a, b)`` with the tensor equal to ``a * b`` (same shape and dtype, no broadcast)
        for its last consumer when nobody recomputed it yet, so that consumer's kernel can
        form the product as it loads ``a`` and ``b``; otherwise ``None`` (call
        :meth:`acquire`)."""
        if self.product is None or self.value is not None or self.pending != 1:
            return None
        a, b = (sources[i] for i in self.product)
        if not (
            a.shape == b.shape
            and a.dtype == b.dtype
            and a.numel() == self.shape.numel()
            and a.is_contiguous()
            and b.is_contiguous()
        ):
            return None
        self._check_versions(sources)
        self.pending -= 1
        return a.view(self.shape), b.view(self.shape)

    def acquire(self, sources: Sequence[Tensor]) -> Tensor:
        """The recomputed tensor (computed by the first consumer, dropped after the last)."""
        if self.value is None:
            self._check_versions(sources)
            self.value = self.fn(sources).reshape(self.shape)
        value = self.value
        self.pending -= 1
        if self.pending <= 0:
            self.value = None
        return value


_hooks_active = saved_tensor_hooks_active  # defined with the PyTorch paths (ops.torch_ops)


@dataclass(frozen=True)
class _NodeKinds:
    """The autograd node classes of the ops :func:`_build` can redo."""

    mul: type  # tensor * tensor (its operands saved as ``_saved_self`` / ``_saved_other``)
    cast: type  # .to(dtype)
    views: frozenset  # view, reshape and the unsafe view matmul results go through


@functools.cache
def _node_kinds() -> _NodeKinds:
    """Each node class read off the op that makes it, run once on a tiny tensor (with grad
    mode on: the first call may come from inside an autograd Function's forward)."""
    with torch.inference_mode(False), torch.enable_grad():
        a, b = (torch.ones(2, device="cpu", requires_grad=True) for _ in range(2))
        views = {a.view(2, 1), a.reshape(1, 2), torch.ops.aten._unsafe_view(a, (2, 1))}
        return _NodeKinds(
            type((a * b).grad_fn), type(a.to(torch.float64).grad_fn), frozenset(type(v.grad_fn) for v in views)
        )


# An expression recomputing a forward output from saved tensors, as nested tuples:
#   ("src", i)  ("mul", e1, e2)  ("to", dtype, e)  ("reshape", shape, e)
Expr = tuple


def _build(node, sources: list[Tensor], depth: int) -> Expr | None:
    """The expression recomputing ``node``'s forward output, or ``None``.

    Saved tensors met on the way are appended to ``sources`` and named by position, so the
    expression holds no tensor itself."""
    if node is None or depth > 6:
        return None
    kinds, kind = _node_kinds(), type(node)
    if kind is kinds.mul:
        parts = []
        for idx, attr in ((0, "_saved_self"), (1, "_saved_other")):
            t = getattr(node, attr, None)
            if isinstance(t, Tensor):
                sources.append(t)
                parts.append(("src", len(sources) - 1))
            else:
                sub = _build(node.next_functions[idx][0], sources, depth + 1)
                if sub is None:
                    return None
                parts.append(sub)
        return ("mul", *parts)
    if kind is kinds.cast or kind in kinds.views:
        meta = node._input_metadata[0]  # the forward output's dtype and shape
        sub = _build(node.next_functions[0][0], sources, depth + 1)
        if sub is None:
            return None
        if kind is kinds.cast:
            return ("to", meta.dtype, sub)
        return ("reshape", tuple(meta.shape), sub)
    return None


def _evaluate(expr: Expr, src: Sequence[Tensor]) -> Tensor:
    """Eager PyTorch, the same ops in the same dtypes as the forward: bitwise the same."""
    op = expr[0]
    if op == "src":
        return src[expr[1]]
    if op == "mul":
        return torch.mul(_evaluate(expr[1], src), _evaluate(expr[2], src))
    if op == "to":
        return _evaluate(expr[2], src).to(expr[1])
    return _evaluate(expr[2], src).reshape(expr[1])


def _rmsnorm_operands(expr: Expr, src: Sequence[Tensor]) -> tuple[Tensor, ...] | None:
    """``(w, h, s)`` when ``expr`` is ``w * (h * s).to(w.dtype)`` with ``h, s`` float32 CUDA
    tensors and ``w`` half precision: RMSNorm's output, which one Triton pass recomputes."""
    if expr[0] != "mul":
        return None
    for outer, inner in ((expr[1], expr[2]), (expr[2], expr[1])):
        if (
            outer[0] == "src"
            and inner[0] == "to"
            and inner[2][0] == "mul"
            and inner[2][1][0] == "src"
            and inner[2][2][0] == "src"
        ):
            w, h, s = src[outer[1]], src[inner[2][1][1]], src[inner[2][2][1]]
            if (
                inner[1] == w.dtype
                and w.dtype in (torch.bfloat16, torch.float16)
                and h.dtype == s.dtype == torch.float32
                and w.is_cuda
                and h.is_cuda
                and s.is_cuda
            ):
                return w, h, s
    return None


def _recompute(expr: Expr, src: Sequence[Tensor]) -> Tensor:
    """Recompute ``expr``: one fused kernel for RMSNorm's output, else eager PyTorch."""
    ops = _rmsnorm_operands(expr, src) if SETTINGS.replay_fused else None
    if ops is not None:
        from .triton_kernels import mul_cast_mul

        try:
            return mul_cast_mul(*ops)
        except RuntimeError:  # a broadcast that does not flatten to rows x columns
            pass
    return _evaluate(expr, src)


def plan(x: Tensor) -> tuple[Replay, list[Tensor]] | None:
    """``(replay, sources)`` for ``x`` (a view of a layer input), or ``None`` to save ``x``.

    The caller saves ``sources`` with ``ctx.save_for_backward`` and later calls
    ``replay.acquire(saved_sources)``. Consumers of the same input share one :class:`Replay`.
    """
    global _VERIFY_LEFT
    base = x._base if x._base is not None else x  # inside Function.forward views have no grad_fn
    if not (SETTINGS.replay and base.grad_fn is not None) or _hooks_active():
        return None
    key = id(base)
    hit = _SHARED.get(key)
    if hit is not None and hit[0]() is base and hit[1] == base._version and hit[2]() is not None:
        rp = hit[2]()
        rp.pending += 1
        return rp, hit[3]
    if not (x.is_contiguous() and x.numel() == base.numel() and x.data_ptr() == base.data_ptr()):
        return None
    sources: list[Tensor] = []
    try:
        expr = _build(base.grad_fn, sources, 0)
    except (RuntimeError, AttributeError, IndexError):  # freed or modified saved tensors
        return None
    if expr is None or not sources:
        return None

    def fn(src: Sequence[Tensor]) -> Tensor:
        return _recompute(expr, src)

    if _VERIFY_LEFT > 0 and not (x.is_cuda and torch.cuda.is_current_stream_capturing()):  # (a check syncs)
        _VERIFY_LEFT -= 1
        with torch.no_grad():
            same = torch.equal(fn(sources).reshape(x.shape), x)
        if not same:
            SETTINGS.replay = False
            warnings.warn(
                "flashbone: recomputing layer inputs did not reproduce them exactly; saving inputs instead from now on",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
    product = (expr[1][1], expr[2][1]) if (expr[0] == "mul" and expr[1][0] == "src" and expr[2][0] == "src") else None
    rp = Replay(fn, x.shape, [t._version for t in sources], product)
    rp.pending = 1
    # Shared while the input itself lives (its forward); the entry goes with it.
    _SHARED[key] = (weakref.ref(base), base._version, weakref.ref(rp), sources)
    weakref.finalize(base, _SHARED.pop, key, None)
    return rp, sources


def save_input(ctx, x: Tensor, *rest) -> None:
    """In an autograd Function's forward: save ``x`` and ``rest`` for backward, where ``x``
    is replaced by the tensors it can be recomputed from when :func:`plan` finds them."""
    p = plan(x)
    ctx.replay, ctx.n_src = (None, 1) if p is None else (p[0], len(p[1]))
    ctx.save_for_backward(*([x] if p is None else p[1]), *rest)


def saved_input(ctx) -> list:
    """In backward: ``[x, *rest]`` as given to :func:`save_input` (``x`` recomputed if so)."""
    src, rest = _split_saved(ctx)
    return [_input(ctx, src), *rest]


def _split_saved(ctx) -> tuple[tuple, tuple]:
    saved = ctx.saved_tensors
    return saved[: ctx.n_src], saved[ctx.n_src :]


def _input(ctx, src) -> Tensor:
    return src[0] if ctx.replay is None else ctx.replay.acquire(src)


def saved_input_factors(ctx) -> tuple[list, Tensor | None]:
    """Like :func:`saved_input`, but where ``x`` would be recomputed as a product ``a * b``
    of two saved tensors for this consumer alone (``silu(gate) * up``, the down_proj input),
    returns ``([a, *rest], b)`` instead: a kernel that forms ``x`` as it loads ``a`` and ``b``
    saves the product's pass. Otherwise ``([x, *rest], None)``."""
    src, rest = _split_saved(ctx)
    ab = None if ctx.replay is None else ctx.replay.factors(src)
    if ab is not None:
        return [ab[0], *rest], ab[1]
    return [_input(ctx, src), *rest], None


# ------------------------------------------------------------------ per-input small results
# q/k/v (and gate/up) read the same input: what depends only on it (bone's block sum) is
# computed by the first and reused by the others, for as long as that input lives.
# id(input) -> (input, its version, {tag: value}); one finalizer per input, not per tag
_PER_INPUT: dict[int, tuple[weakref.ref, int, dict]] = {}


def _base_of(x: Tensor) -> Tensor | None:
    base = x._base if x._base is not None else x
    same = x.is_contiguous() and x.data_ptr() == base.data_ptr() and x.numel() == base.numel()
    return base if same else None


def _entry(base: Tensor) -> dict | None:
    hit = _PER_INPUT.get(id(base))
    if hit is not None and hit[0]() is base and hit[1] == base._version:
        return hit[2]
    return None


def cached(x: Tensor, tag: object) -> Tensor | None:
    """The tensor stored with :func:`store` for this input (same object and version), if any."""
    base = _base_of(x)
    values = _entry(base) if base is not None else None
    return None if values is None else values.get(tag)


def store(x: Tensor, tag: object, value) -> None:
    """Keep ``value`` (derived from ``x``) until ``x`` itself is freed or changed in place."""
    base = _base_of(x)
    if base is None:
        return
    values = _entry(base)
    if values is None:
        key = id(base)
        values = {}
        _PER_INPUT[key] = (weakref.ref(base), base._version, values)
        weakref.finalize(base, _drop, key, values)
    values[tag] = value


def _drop(key: int, values: dict) -> None:
    """Forget a freed input's entry (unless a newer input has taken over its id)."""
    hit = _PER_INPUT.get(key)
    if hit is not None and hit[2] is values:
        del _PER_INPUT[key]
