"""Padding-free micro-batches: the micro-batch's rows end to end in one sequence, attention
within each row by variable-length (flash) attention.

    rows of n_1 .. n_k tokens  ->  input_ids (1, N), N = n_1 + ... + n_k, positions 0..n_i-1 per row
    cu_seqlens = [0, n_1, n_1 + n_2, ..., N]                       (on the host, from the lengths)
    attention:  out[row i] = causal softmax(q_i k_i^T * scale) v_i    (no token sees another row)

So every projection runs on N real tokens instead of rows x longest row, and attention needs
no mask. CUDA: ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention); elsewhere the same
per row with SDPA, the reference that the CPU tests check. The function is registered with
transformers' ``AttentionInterface`` and switched on only inside :func:`flat_attention`, so
the model generates and evaluates with its own attention outside it. Only architectures whose
attention goes through that interface with full causal attention (``VARLEN_MODEL_TYPES``, no
sliding window) take this path, and every forward checks that each layer called it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

NAME = "flashbone_varlen"
VARLEN_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


class _State:
    """What the attention function needs during one flat forward (set by :func:`flat_attention`)."""

    cu_seqlens: torch.Tensor | None = None
    max_len: int = 0
    calls: int = 0


_STATE = _State()


@functools.cache
def _cuda_varlen():
    """``varlen_attn`` and the keywords that make it causal (and grouped-query) on this
    PyTorch, or None where it has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        return None
    return varlen_attn, causal, "enable_gqa" in params


def _per_row(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: list[int], scale: float | None) -> torch.Tensor:
    """The reference: causal SDPA on each row; q (N, H, D), k/v (N, Hkv, D) -> (N, H, D)."""
    out = []
    for s, e in zip(cu[:-1], cu[1:]):
        if e == s:  # an empty row (graphs.py pads the row count with them)
            continue
        qi, ki, vi = (t[s:e].transpose(0, 1) for t in (q, k, v))
        out.append(
            F.scaled_dot_product_attention(
                qi, ki, vi, is_causal=True, scale=scale, enable_gqa=ki.shape[0] != qi.shape[0]
            ).transpose(0, 1)
        )
    return torch.cat(out)


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: query (1, H, N, D), key/value (1, Hkv, N, D) ->
    output (1, N, H, D)."""
    if _STATE.cu_seqlens is None or query.shape[0] != 1:
        raise RuntimeError(f"{NAME} attention runs only inside flashbone.varlen.flat_attention, on one sequence")
    if dropout:
        raise RuntimeError(f"{NAME} attention has no dropout; the model asked for {dropout}")
    _STATE.calls += 1
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (N, heads, D)
    fast = _cuda_varlen() if q.is_cuda else None
    if fast is not None and q.dtype not in (torch.float16, torch.bfloat16):  # FlashAttention: half types only
        if torch.is_autocast_enabled("cuda"):  # as SDPA does under autocast (e.g. float32 full fine-tuning)
            q, k, v = (t.to(torch.get_autocast_dtype("cuda")) for t in (q, k, v))
        else:
            fast = None
    if fast is None:
        out = _per_row(q, k, v, _STATE.cu_seqlens.tolist(), scaling)
    else:
        fn, causal, has_gqa = fast
        if k.shape[1] != q.shape[1] and not has_gqa:
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        gqa = {"enable_gqa": True} if has_gqa and k.shape[1] != q.shape[1] else {}
        cu = _STATE.cu_seqlens
        out = fn(q, k, v, cu, cu, _STATE.max_len, _STATE.max_len, scale=scaling, **causal, **gqa)
    return out.unsqueeze(0), None


@functools.cache
def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, attention)


def _transformers_config(model: nn.Module):
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "model_type") and hasattr(cfg, "_attn_implementation"):
            return cfg
    return None


def supported(model: nn.Module) -> bool:
    """Whether ``model``'s attention can run padding-free here (see the module docstring)."""
    cfg = _transformers_config(model)
    if cfg is None or cfg.model_type not in VARLEN_MODEL_TYPES:
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False
    return not getattr(cfg, "attention_dropout", 0.0)


def cu_seqlens(lengths: list[int]) -> torch.Tensor:
    """[0, n_1, n_1 + n_2, ...] as int32 (FlashAttention's format)."""
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)


def check_calls(layers: int) -> None:
    """After a forward inside :func:`flat_attention`: every one of the ``layers`` attention
    layers ran through :func:`attention`, so no row attended to another."""
    if _STATE.calls != layers:
        raise RuntimeError(
            f"padding-free packing: {_STATE.calls} of the model's {layers} attention layers ran "
            f"through {NAME}; train without --packing"
        )


def num_layers(model: nn.Module) -> int:
    return int(_transformers_config(model).num_hidden_layers)


@contextlib.contextmanager
def flat_attention(model: nn.Module, cu: torch.Tensor, max_len: int) -> Iterator[None]:
    """Inside: ``model``'s attention is :func:`attention` over the rows that ``cu`` (on the
    model's device) delimits. Keep backward inside too: gradient checkpointing recomputes the
    attention there."""
    cfg = _transformers_config(model)
    _register()
    before = cfg._attn_implementation
    _STATE.cu_seqlens, _STATE.max_len, _STATE.calls = cu, max_len, 0
    cfg._attn_implementation = NAME
    try:
        yield
    finally:
        cfg._attn_implementation = before
        _STATE.cu_seqlens = None


__all__ = [
    "attention",
    "supported",
    "cu_seqlens",
    "flat_attention",
    "check_calls",
    "num_layers",
    "NAME",
    "VARLEN_MODEL_TYPES",
]
