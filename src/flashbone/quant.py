"""Quantised bases: bitsandbytes 4-bit (NF4, double quantisation) and 8-bit linear layers.

A ``Linear4bit`` / ``Linear8bitLt`` base keeps its packed weight; adapters never hold a
full-precision copy of it. The additive variants (bone, bone-mini) and the row-affine ones
(bat-row, bone-ab) call the quantised layer itself::

    bone:     y = base(x) + (sum_b x_b) B
    bat-row:  y = base(x + u) + tile_out(sum_b u_b),   u_b = B_b x_b
    bone-ab:  y = base(x + u) + tile_out(sum_b B_b x_b), u_b = A_b x_b

The variants that need ``W`` itself (bat, bat-hadamard) dequantise it per layer on the fly,
in forward and again in backward (:class:`flashbone.ops.quantized.DequantWeightSpaceLinear`):
one layer's dense weight lives only while that layer computes.

Merging cannot write into a 4/8-bit weight without rounding the adapter away, so an in-place
merge is refused; :func:`dequantize_` turns every quantised layer into a plain ``nn.Linear``
holding the dequantised weight, which ``merge_and_unload`` then merges into (a full-precision
model, the weights the adapter was trained against).

bitsandbytes is an optional extra (``pip install "flashbone[quant]"``); nothing here imports
it unless a model already holds its layers or a quantised load is asked for.
"""

from __future__ import annotations

import logging
import sys

import torch
from torch import Tensor, nn

from .errors import BoneError

INSTALL = 'pip install "flashbone[quant]"'
# bitsandbytes' CPU backend warns on import (peft imports it whenever it is installed) that an
# optional faster kernel package is missing: not the user's concern, and it would print on every
# command; errors still show
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
MODES = ("4bit", "8bit")


class QuantizationError(BoneError):
    """bitsandbytes is missing or cannot quantise on this machine."""


def _bnb():
    return sys.modules.get("bitsandbytes")


def kind(module: nn.Module) -> str | None:
    """``"4bit"`` / ``"8bit"`` for a bitsandbytes linear layer, else None (never imports bnb)."""
    bnb = _bnb()
    if bnb is None:
        return None
    if isinstance(module, bnb.nn.Linear4bit):
        return "4bit"
    if isinstance(module, bnb.nn.Linear8bitLt):
        return "8bit"
    return None


def is_quantized(module: nn.Module) -> bool:
    return kind(module) is not None


def dequantize(module: nn.Module) -> Tensor:
    """The ``(out, in)`` weight of a quantised layer as a new dense tensor (no autograd)."""
    bnb, w = _bnb(), module.weight
    with torch.no_grad():
        if kind(module) == "4bit":
            data, state = w.data, w.quant_state
            if getattr(state, "packing_format_for_cpu", False):  # bnb repacks for its CPU kernel in eval
                data, state = bnb.functional._convert_weight_packed_for_cpu_inverse(data, state)
            return bnb.functional.dequantize_4bit(data, state)
        # LLM.int8 stores row-wise absmax scales: W = W_int8 * SCB / 127 (after the first forward
        # bnb keeps them in the layer's state instead of on the weight)
        scb = w.SCB if getattr(w, "SCB", None) is not None else module.state.SCB
        return w.data.float() * (scb.float()[:, None] / 127.0)


def dequantizer(module: nn.Module):
    """A callable giving ``dequantize(module)``. For a 4-bit layer on the GPU it calls
    bitsandbytes' two kernels directly (the double-quantised absmax, then the weight), as
    ``bitsandbytes.functional.dequantize_4bit`` does, without its per-call checks: it runs in
    every forward and backward of every layer."""
    w = module.weight
    if kind(module) != "4bit" or not w.is_cuda:
        return lambda: dequantize(module)
    ops, data, st = torch.ops.bitsandbytes, w.data, w.quant_state
    if not st.nested:
        return lambda: ops.dequantize_4bit.default(data, st.absmax, st.blocksize, st.quant_type, st.shape, st.dtype)
    s2, code = st.state2, st.state2.code.to(w.device)

    def dequant() -> Tensor:
        absmax = ops.dequantize_blockwise.default(st.absmax, s2.absmax, code, s2.blocksize, s2.dtype)
        absmax = (absmax + st.offset).float()
        return ops.dequantize_4bit.default(data, absmax, st.blocksize, st.quant_type, st.shape, st.dtype)

    return dequant


def compute_dtype(module: nn.Module, x: Tensor) -> torch.dtype:
    """The dtype a quantised layer computes in: its 4-bit compute dtype, else the input's."""
    d = getattr(module, "compute_dtype", None)
    return d if isinstance(d, torch.dtype) else x.dtype


def require_bitsandbytes(mode: str):
    """Import bitsandbytes, or raise one line with the install command."""
    try:
        import bitsandbytes
    except ImportError:
        raise QuantizationError(f"--quantize {mode}: needs bitsandbytes: {INSTALL}") from None
    return bitsandbytes


def check_backend(mode: str, device: torch.device) -> None:
    """Quantise and dequantise a small tensor on ``device``; one clear line when bnb cannot."""
    bnb = require_bitsandbytes(mode)
    try:
        w = torch.randn(64, 64, device=device)
        if mode == "4bit":
            q, state = bnb.functional.quantize_4bit(w.to(torch.bfloat16), quant_type="nf4")
            bnb.functional.dequantize_4bit(q, state)
        else:
            bnb.functional.int8_vectorwise_quant(w.half())
    except Exception as e:  # no kernel for this device / build
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise QuantizationError(
            f"--quantize {mode}: bitsandbytes {getattr(bnb, '__version__', '')} cannot quantise on "
            f"{device.type} here ({type(e).__name__}: {first}); use a CUDA GPU or leave out --quantize"
        ) from None


def bnb_config(mode: str, compute: torch.dtype):
    """transformers' ``BitsAndBytesConfig``: NF4 with double quantisation, or LLM.int8."""
    from transformers import BitsAndBytesConfig

    if mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def quantize_(root: nn.Module, mode: str, leaf_names, compute: torch.dtype = torch.bfloat16) -> list[str]:
    """Replace the ``nn.Linear`` layers of ``root`` whose last name is in ``leaf_names`` by
    bitsandbytes layers holding the same weight quantised (4-bit: NF4, double quantisation,
    ``compute`` dtype; 8-bit: LLM.int8), on the device the weight is on, one layer at a time;
    returns their names. For models built in memory (``flashbone bench``); a checkpoint on
    disk loads quantised through :func:`flashbone.loading.load_model` instead."""
    bnb = require_bitsandbytes(mode)
    names = [n for n, m in root.named_modules() if type(m) is nn.Linear and n.rpartition(".")[2] in set(leaf_names)]
    for name in names:
        lin = root.get_submodule(name)
        w, dev = lin.weight.data, lin.weight.device
        if mode == "4bit":
            q = bnb.nn.Linear4bit(
                lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=compute,
                quant_type="nf4", compress_statistics=True, device="meta",
            )  # fmt: skip
            q.weight = bnb.nn.Params4bit(w.to(compute), requires_grad=False, quant_type="nf4", compress_statistics=True)
        else:
            q = bnb.nn.Linear8bitLt(
                lin.in_features, lin.out_features, bias=lin.bias is not None, has_fp16_weights=False, device="meta"
            )
            q.weight = bnb.nn.Int8Params(w.to(torch.float16), requires_grad=False, has_fp16_weights=False)
        if lin.bias is not None:
            q.bias = nn.Parameter(lin.bias.data.to(compute), requires_grad=False)
        q.weight = q.weight.to(dev)  # bitsandbytes quantises as the weight moves to its device
        parent, leaf = _parent(root, name)
        setattr(parent, leaf, q)
        del lin
    if names and hasattr(root, "config"):  # the marker transformers sets on a quantised load
        setattr(root, f"is_loaded_in_{mode}", True)
    return names


def prepare_for_training(model: nn.Module) -> None:
    """What peft's ``prepare_model_for_kbit_training`` does, minus casting everything to fp32:
    norm weights in float32 (their statistics are the fragile part in half precision), and
    input gradients on, so that checkpointed blocks whose weights are all frozen still pass
    gradients to the adapters inside them."""
    for module in model.modules():
        if "norm" in type(module).__name__.lower() and any(True for _ in module.parameters(recurse=False)):
            for p in module.parameters(recurse=False):
                p.data = p.data.float()
            module.register_forward_hook(_same_dtype_as_input)  # the next layer still gets bf16
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def _same_dtype_as_input(module: nn.Module, args: tuple, out):
    if args and isinstance(args[0], Tensor) and isinstance(out, Tensor) and out.dtype != args[0].dtype:
        return out.to(args[0].dtype)
    return out


def _parent(root: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, leaf = name.rpartition(".")
    return (root.get_submodule(parent) if parent else root), leaf


def dequantize_(root: nn.Module, dtype: torch.dtype = torch.bfloat16) -> list[str]:
    """Replace every quantised linear layer under ``root`` by an ``nn.Linear`` holding its
    dequantised weight in ``dtype``; returns their names. The model's quantisation config is
    dropped, so ``save_pretrained`` writes a plain full-precision checkpoint."""
    names = [n for n, m in root.named_modules() if is_quantized(m)]
    for name in names:
        q = root.get_submodule(name)
        lin = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None, device="meta")
        lin.weight = nn.Parameter(dequantize(q).to(dtype), requires_grad=False)
        if q.bias is not None:
            lin.bias = nn.Parameter(q.bias.detach().to(dtype), requires_grad=False)
        parent, leaf = _parent(root, name)
        setattr(parent, leaf, lin)
    for m in root.modules():  # transformers' markers of a quantised model
        cfg = getattr(m, "config", None)
        if names and cfg is not None and hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        for attr in ("hf_quantizer", "quantization_method"):
            if names and getattr(m, attr, None) is not None:
                setattr(m, attr, None)
        for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"):
            if names and isinstance(getattr(type(m), attr, None), bool | type(None)) and attr in vars(m):
                setattr(m, attr, False)
    return names


__all__ = [
    "INSTALL",
    "MODES",
    "QuantizationError",
    "kind",
    "is_quantized",
    "dequantize",
    "dequantizer",
    "compute_dtype",
    "require_bitsandbytes",
    "check_backend",
    "bnb_config",
    "quantize_",
    "prepare_for_training",
    "dequantize_",
]
