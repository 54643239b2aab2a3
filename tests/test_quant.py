"""Quantised bases (bitsandbytes 4-bit NF4 and 8-bit) on the CPU: every variant trains, matches
the dense reference of the dequantised weights, never saves a dense weight, merges into a
dequantised full-precision copy (in place: refused); the CLI's --quantize; the error lines."""

import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny_models as tm
from cli_helpers import flashbone, train
from flashbone import BoneConfig, BoneLayer, get_bone_model, loading, quant
from flashbone.errors import MergeError

bnb = pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

VARIANTS = ["bone", "bone-mini", "bat-row", "bone-ab", "bat", "bat-hadamard"]


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    # in_features >= 64: bnb's CPU repacking of 4-bit weights (eval, no grad) needs a whole 64-block;
    # vocab 96: no adapted weight shares a shape with the head
    tm.llama(hidden_size=64, intermediate_size=128, vocab_size=96).save_pretrained(folder)
    return folder


def _quantized(folder, mode):
    # float32 compute: the comparisons below are then exact up to float32 rounding
    return loading.load_model(str(folder), dtype=torch.float32, device="cpu", quantize=mode)


@pytest.mark.parametrize("mode", ["4bit", "8bit"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_on_quantized_base(variant, mode, llama_folder):
    model = _quantized(llama_folder, mode).train()  # no dropout in it; in eval without grad bnb's CPU
    # backend repacks 4-bit weights for a kernel with bfloat16 scales (~1e-3 off its own dequantisation)
    assert sum(quant.is_quantized(m) for m in model.modules()) == 14
    x = torch.randint(3, 64, (2, 5))  # 10 tokens: no activation has a weight's shape
    with torch.no_grad():
        base_logits = model(x).logits
    bm = get_bone_model(model, BoneConfig(variant=variant, r=8, mini_r=8 if variant == "bone-mini" else None))
    assert all(layer.quantized == mode for _, layer in bm.bone_layers())
    with torch.no_grad():
        torch.testing.assert_close(bm(x).logits, base_logits)  # zero-initialised adapters
    opt = torch.optim.AdamW([p for p in bm.parameters() if p.requires_grad], lr=2e-2)
    shapes = {tuple(layer.weight.shape) for _, layer in bm.bone_layers()}
    saved = []
    bm.train()
    losses = []
    for _ in range(4):
        opt.zero_grad()
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(tuple(t.shape) if t.is_floating_point() else None) or t, lambda t: t
        ):
            loss = bm(x, labels=x).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    assert not shapes & set(saved), "a dense (out, in) float weight was kept for backward"
    with torch.no_grad():
        y = bm(x).logits
    with pytest.raises(MergeError, match="merge_and_unload"):
        bm.merge_adapter()
    with pytest.warns(UserWarning, match="dequantised to float32"):
        merged = bm.merge_and_unload()
    assert not any(quant.is_quantized(m) or isinstance(m, BoneLayer) for m in merged.modules())
    # the quantised fast path equals the dense reference on the dequantised W (LLM.int8 also rounds
    # the activations to int8 inside its matmul: a looser bound there)
    tol = 1e-4 if mode == "4bit" else 1e-2
    with torch.no_grad():
        torch.testing.assert_close(merged.train()(x).logits, y, rtol=tol, atol=tol)


def test_bf16_compute_and_fp32_norms(llama_folder):
    model = loading.load_model(str(llama_folder), dtype=torch.bfloat16, device="cpu", quantize="4bit")
    assert model.model.norm.weight.dtype == torch.float32  # prepare_for_training
    bm = get_bone_model(model, BoneConfig(variant="bat", r=8))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    bm.train()
    x = torch.randint(3, 64, (2, 6))
    loss = bm(x, labels=x).loss
    loss.backward()
    grads = [p.grad for p in bm.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_cli_quantize_train_then_merge(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = train(capsys, out, "--quantize", "4bit", "--method", "bat", "--r", "16")
    assert rc == 0, err
    assert "4bit base (bitsandbytes), gradient checkpointing" in stdout
    rc, stdout, err = flashbone(
        capsys, "merge", "--adapter", out / "adapter", "--out", tmp_path / "m", "--quantize", "4bit"
    )
    assert rc == 0, err
    assert "dequantised" in stdout and "full-precision" in stdout
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert not any(quant.is_quantized(m) for m in merged.modules())
    from flashbone import load_adapter

    adapted = load_adapter(loading.load_model(None, quantize="4bit"), out / "adapter")
    x = torch.randint(3, 700, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, adapted(x).logits, rtol=1e-4, atol=1e-4)


def test_errors(tmp_path, capsys, monkeypatch):
    rc, _, err = train(capsys, tmp_path / "a", "--quantize", "4bit", "--method", "full")
    assert rc == 2 and "--method full" in err and "Traceback" not in err
    monkeypatch.setattr(bnb.functional, "quantize_4bit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no")))
    rc, _, err = train(capsys, tmp_path / "b", "--quantize", "4bit")
    assert rc == 2 and "cannot quantise on cpu" in err and "leave out --quantize" in err
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    rc, _, err = train(capsys, tmp_path / "c", "--quantize", "8bit")
    assert rc == 2 and 'pip install "flashbone[quant]"' in err
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_on_quantized_base_cuda(variant, llama_folder):
    """The same checks on the GPU, bf16 compute (bitsandbytes' CUDA kernels, flashbone's GPU paths)."""
    model = loading.load_model(str(llama_folder), dtype=torch.bfloat16, device="cuda", quantize="4bit").train()
    x = torch.randint(3, 64, (2, 8), device="cuda")
    bm = get_bone_model(model, BoneConfig(variant=variant, r=8, mini_r=8 if variant == "bone-mini" else None))
    opt = torch.optim.AdamW([p for p in bm.parameters() if p.requires_grad], lr=2e-2)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = bm(x, labels=x).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    with torch.no_grad():
        y = bm(x).logits.float()
    with pytest.warns(UserWarning, match="dequantised to bfloat16"):
        merged = bm.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits.float(), y, rtol=3e-2, atol=3e-2)
