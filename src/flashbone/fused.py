"""Fused kernels for the frozen base's element-wise work (liger-kernel), patched into one
model instance before the adapters are attached.

    RMSNorm:  y = w * (x * rsqrt(mean(x^2) + eps)).to(dtype)   (float32 inside)  -> one kernel each way
    SwiGLU:   down(silu(gate(x)) * up(x))                      -> silu(a)*b one kernel each way;
              gate, up and down stay the model's own layers (adapters attach to them as before)

Eager PyTorch runs each of these as five to ten element-wise kernels over the activations,
float32 in between: on a 1.1 B Llama at 9.6k tokens a step that is about 44 ms of GPU time
(a quarter of the step), 16 ms fused (docs/benchmarks.md). Only the classes whose math is
exactly the formulas above are patched (``RMS_NORMS``, ``SWIGLU_MLPS``; Gemma's ``1 + w``
norm and Phi-3's fused gate/up are not), per instance: other models in the process keep
their own forward.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from .errors import BoneConfigError

INSTALL = 'pip install "flashbone[liger]"'
MODES = ("auto", "on", "off")
RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})
SWIGLU_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})


def available() -> bool:
    try:
        import liger_kernel.transformers.functional  # noqa: F401
    except Exception:  # ImportError, or Triton failing to initialise on this machine
        return False
    return True


def _rms_norm_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_rms_norm

    return liger_rms_norm(hidden_states, self.weight, self.variance_epsilon, 0.0, "llama", True)


def _swiglu_forward(self, x: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_swiglu

    return self.down_proj(liger_swiglu(self.gate_proj(x), self.up_proj(x)))


def _is_silu(mlp: nn.Module) -> bool:
    act = getattr(getattr(mlp, "config", None), "hidden_act", None)
    return act in ("silu", "swish") or isinstance(getattr(mlp, "act_fn", None), nn.SiLU)


def patchable(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, kind) of every module :func:`apply` would patch."""
    found = []
    for name, m in model.named_modules():
        cls = type(m).__name__
        if cls in RMS_NORMS and hasattr(m, "variance_epsilon") and getattr(m, "weight", None) is not None:
            found.append((name, m, "rms_norm"))
        elif cls in SWIGLU_MLPS and all(hasattr(m, a) for a in ("gate_proj", "up_proj", "down_proj")) and _is_silu(m):
            found.append((name, m, "swiglu"))
    return found


def apply(model: nn.Module, mode: str = "auto", device: torch.device | None = None) -> int:
    """Patch ``model``'s RMSNorm and SwiGLU modules with liger-kernel's fused kernels.

    ``mode``: ``auto`` patches on CUDA when liger-kernel is installed, ``on`` requires it (one
    clear error otherwise), ``off`` leaves the model as it is. Returns the number of modules
    patched. The patched model computes the same function; it is for training and inference
    on CUDA (the kernels are Triton).
    """
    if mode not in MODES:
        raise BoneConfigError(f"--liger {mode!r}: choose one of {', '.join(MODES)}")
    device = device or next(model.parameters()).device
    if mode == "off" or (mode == "auto" and (device.type != "cuda" or not available())):
        return 0
    if device.type != "cuda":
        raise BoneConfigError(
            f"--liger on: liger-kernel's kernels run on CUDA, the model is on {device.type}; use --liger auto or off"
        )
    if not available():
        raise BoneConfigError(f"--liger on: liger-kernel is not installed; {INSTALL}")
    found = patchable(model)
    for _, m, kind in found:
        m.forward = types.MethodType(_rms_norm_forward if kind == "rms_norm" else _swiglu_forward, m)
    return len(found)


__all__ = ["apply", "available", "patchable", "MODES", "INSTALL", "RMS_NORMS", "SWIGLU_MLPS"]
