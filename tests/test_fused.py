"""flashbone.fused: which modules take liger-kernel's fused RMSNorm / SwiGLU, the wiring of their
arguments (checked on the CPU against a stand-in with liger's signatures), and the errors."""

import sys
import types

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

from flashbone import fused
from flashbone.errors import BoneConfigError
from tiny_models import DECODER, gpt2, llama, qwen2


def _stand_in(monkeypatch):
    """liger_kernel.transformers.functional with its signatures, computed the reference way."""

    def liger_rms_norm(x, w, eps, offset=0.0, casting_mode="llama", in_place=True):
        assert offset == 0.0 and casting_mode == "llama"
        h = x.float()
        return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    def liger_swiglu(a, b):
        return torch.nn.functional.silu(a) * b

    mod = types.ModuleType("liger_kernel.transformers.functional")
    mod.liger_rms_norm, mod.liger_swiglu = liger_rms_norm, liger_swiglu
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", mod)


@pytest.mark.parametrize("make", [llama, qwen2], ids=["llama", "qwen2"])
def test_patched_modules_compute_the_models_function(make, monkeypatch):
    _stand_in(monkeypatch)
    torch.manual_seed(0)
    model = make()
    kinds = [k for _, _, k in fused.patchable(model)]
    assert kinds.count("rms_norm") == 2 * 2 + 1 and kinds.count("swiglu") == 2  # 2 layers, final norm
    ids = torch.randint(3, 60, (2, 9))
    ref = model(ids).logits
    for _, m, kind in fused.patchable(model):
        m.forward = types.MethodType(fused._rms_norm_forward if kind == "rms_norm" else fused._swiglu_forward, m)
    assert torch.allclose(model(ids).logits, ref, atol=1e-6)


def test_other_norms_and_mlps_are_left_alone():
    assert fused.patchable(gpt2()) == []
    gemma = Gemma2ForCausalLM(Gemma2Config(**{**DECODER, "head_dim": 8}))  # 1 + w norms, GELU MLP
    assert fused.patchable(gemma) == []


def test_modes_on_a_cpu_model():
    model = llama()
    assert fused.apply(model, "auto") == 0 and fused.apply(model, "off") == 0  # auto: CUDA only
    with pytest.raises(BoneConfigError, match="run on CUDA"):
        fused.apply(model, "on")
    with pytest.raises(BoneConfigError, match="--liger 'fast'"):
        fused.apply(model, "fast")
