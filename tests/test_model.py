"""Model surgery: targets, freezing, all-or-nothing injection, several adapters, dtypes."""

import pytest
import torch
from tiny_models import gpt2, llama, randomize_adapters, roberta_cls, tokens
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from flashbone import (
    BlockAdapter,
    BoneConfig,
    BoneLayer,
    BoneShapeError,
    MergeError,
    get_adapter_params,
    get_bone_model,
    num_params,
)
from flashbone.layer import SavedModule
from flashbone.ops import use_backend
from flashbone.variants import VARIANTS

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def adapted(bm):
    return sorted(name for name, _ in bm.bone_layers())


def layer_names(n_layers, kinds):
    mod = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn"}
    return sorted(f"model.layers.{i}.{mod.get(k, 'mlp')}.{k}" for i in range(n_layers) for k in kinds)


# -- which modules ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "targets,layers,expected_kinds,expected_layers",
    [
        (["q_proj", "v_proj"], None, ["q_proj", "v_proj"], 2),
        (r".*\.mlp\.(gate|up|down)_proj", None, ["gate_proj", "up_proj", "down_proj"], 2),
        ("all-linear", None, PROJ, 2),
        ("all-linear", [1], PROJ, 1),
    ],
)
def test_targets(targets, layers, expected_kinds, expected_layers):
    bm = get_bone_model(llama(), BoneConfig(r=8, target_modules=targets, layers_to_transform=layers))
    expected = layer_names(2, expected_kinds)
    if layers == [1]:
        expected = [n for n in expected if ".layers.1." in n]
    assert adapted(bm) == expected
    assert isinstance(bm.model.lm_head, nn.Linear)  # the output head is never a target


def test_gpt2_conv1d_all_linear_and_head_excluded():
    bm = get_bone_model(gpt2(), BoneConfig(r=8))
    kinds = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert adapted(bm) == sorted(f"transformer.h.{i}.{k}" for i in range(2) for k in kinds)
    layer = bm.model.transformer.h[0].mlp.c_fc
    assert layer.is_conv1d and (layer.out_features, layer.in_features) == (128, 32)
    assert layer.adapters["default"].B.shape == (8, 128)


def test_all_linear_skips_classification_heads():
    bm = get_bone_model(roberta_cls(), BoneConfig(r=8))
    names = adapted(bm)
    assert len(names) == 2 * 6 and not any(n.startswith("classifier") for n in names)
    assert "roberta.encoder.layer.1.attention.self.query" in names


def test_everything_else_frozen_and_report_counts():
    model = llama()
    total = sum(p.numel() for p in model.parameters())
    bm = get_bone_model(model, BoneConfig(variant="bat-row", r=8))
    trainable = {n for n, p in bm.model.named_parameters() if p.requires_grad}
    assert trainable == set(get_adapter_params(bm.model))
    assert all(n.endswith(".adapters.default.B") for n in trainable) and len(trainable) == 14
    shapes = {
        "q_proj": (32, 32),
        "k_proj": (16, 32),
        "v_proj": (16, 32),
        "o_proj": (32, 32),
        "gate_proj": (64, 32),
        "up_proj": (64, 32),
        "down_proj": (32, 64),
    }
    expect = 2 * sum(num_params("bat-row", o, i, 8) for o, i in shapes.values())
    report = bm.trainable_report()
    assert (report.adapter, report.modules_to_save) == (expect, 0)
    assert report.total == total + expect
    assert f"{expect:,}" in str(report)


def test_starts_equal_to_base_then_trains():
    model = llama()
    x = tokens()
    base_logits = model(x).logits
    bm = get_bone_model(model, BoneConfig(variant="bat", r=8))
    torch.testing.assert_close(bm(x).logits, base_logits)  # zero init: the base model
    opt = torch.optim.SGD([p for p in bm.parameters() if p.requires_grad], lr=0.1)
    bm(x, labels=x).loss.backward()
    opt.step()
    assert not torch.allclose(bm(x).logits, base_logits)


# -- all or nothing ------------------------------------------------------------------------


def _snapshot(model):
    return (
        {n: m for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def test_failed_injection_leaves_model_unchanged():
    model = llama()
    model.model.embed_tokens.requires_grad_(False)  # a non-default pattern of flags
    before = _snapshot(model)
    # bat r=32 fits q/o (32, 32) and the MLP, but not k_proj/v_proj with out=16
    with pytest.raises(BoneShapeError, match=r"k_proj.*out_features=16.*r=32.*divide both: \[2, 4, 8, 16\]"):
        get_bone_model(model, BoneConfig(variant="bat", r=32))
    after = _snapshot(model)
    assert after[0].keys() == before[0].keys()
    assert all(after[0][n] is m for n, m in before[0].items())
    assert not any(isinstance(m, BoneLayer) for m in model.modules())
    assert after[1] == before[1]
    for k, v in before[2].items():
        assert torch.equal(after[2][k], v)


def test_failed_second_adapter_leaves_first_untouched():
    bm = get_bone_model(llama(), BoneConfig(variant="bone", r=8))
    grads = {n: p.requires_grad for n, p in bm.named_parameters()}
    with pytest.raises(BoneShapeError):
        bm.add_adapter("wide", BoneConfig(variant="bat", r=32))
    assert bm.adapter_names == ["default"] and bm.active_adapters == ["default"]
    assert all(list(layer.adapters) == ["default"] for _, layer in bm.bone_layers())
    assert {n: p.requires_grad for n, p in bm.named_parameters()} == grads


# -- several adapters ------------------------------------------------------------------------


def test_add_set_disable_delete():
    model = llama()
    x = tokens()
    base = model(x).logits
    bm = get_bone_model(model, BoneConfig(variant="bone", r=8, init="random"))
    y_a = bm(x).logits
    bm.add_adapter("b", BoneConfig(variant="bat", r=8, init="random", target_modules=["q_proj"]))
    assert bm.active_adapters == ["default"]  # later adapters join inactive and frozen
    assert not any(p.requires_grad for n, p in bm.named_parameters() if ".b." in n)
    torch.testing.assert_close(bm(x).logits, y_a)
    bm.set_adapter("b")
    assert all(p.requires_grad == (".adapters.b." in n) for n, p in bm.named_parameters())
    y_b = bm(x).logits
    assert not torch.allclose(y_b, y_a) and not torch.allclose(y_b, base)
    with bm.disable_adapter():
        torch.testing.assert_close(bm(x).logits, base)
    with pytest.raises(RuntimeError), bm.disable_adapter():
        raise RuntimeError("leaves the context")
    torch.testing.assert_close(bm(x).logits, y_b)  # enabled again
    bm.delete_adapter("b")
    assert bm.adapter_names == ["default"] and bm.active_adapters == ["default"]
    assert all("b" not in layer.adapters for _, layer in bm.bone_layers())
    torch.testing.assert_close(bm(x).logits, y_a)


def test_delete_merged_adapter_refused_and_nothing_deleted():
    bm = get_bone_model(llama(), BoneConfig(r=8, init="random"))
    bm.merge_adapter()
    with pytest.raises(MergeError, match="unmerge"):
        bm.delete_adapter("default")
    assert all("default" in layer.adapters for _, layer in bm.bone_layers())


@pytest.mark.parametrize("order", [["bone", "bat", "row"], ["row", "bone", "bat"]])
def test_mixed_variants_on_one_layer_match_dense_reference(order):
    """bat* adapters read the weight first, additive ones after, in any activation order."""
    model = llama().double()
    bm = get_bone_model(model, BoneConfig(variant="bone", r=8), adapter_name="bone")
    bm.add_adapter("bat", BoneConfig(variant="bat", r=8, target_modules=["q_proj", "down_proj"]))
    bm.add_adapter("row", BoneConfig(variant="bat-row", r=16, target_modules=["q_proj"]))
    randomize_adapters(bm, std=0.1)
    bm.set_adapter(order)
    x = tokens()
    y = bm(x).logits
    with use_backend("reference"):
        y_ref = bm(x).logits
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
    # the dense reference spelled out for one layer: W' = row(bat(W)), then + bone
    q = bm.model.model.layers[0].self_attn.q_proj
    w = q.weight
    for name in ["bat", "row", "bone"] if order[0] != "row" else ["row", "bat", "bone"]:
        ad = q.adapters[name]
        w = w + VARIANTS[ad.variant].delta(w, ad.detached(w.dtype), ad.r)
    h = torch.randn(5, 32, dtype=torch.float64)
    torch.testing.assert_close(q(h), h @ w.t(), rtol=1e-9, atol=1e-9)


# -- modules_to_save --------------------------------------------------------------------


def test_modules_to_save_trains_a_copy_per_adapter():
    model = roberta_cls()
    x = tokens()
    base_logits = model(x).logits
    head_before = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    bm = get_bone_model(model, BoneConfig(r=8, target_modules=["query", "value"], modules_to_save=["classifier"]))
    assert isinstance(bm.model.classifier, SavedModule)
    saved = bm.model.classifier
    assert all(p.requires_grad for p in saved.copies["default"].parameters())
    assert not any(p.requires_grad for p in saved.original_module.parameters())
    report = bm.trainable_report()
    assert report.modules_to_save == sum(p.numel() for p in saved.copies["default"].parameters())
    opt = torch.optim.SGD([p for p in bm.parameters() if p.requires_grad], lr=0.5)
    bm(x, labels=torch.tensor([0, 2])).loss.backward()
    opt.step()
    trained = bm(x).logits
    assert not torch.allclose(trained, base_logits)
    for k, v in saved.original_module.state_dict().items():  # the original is untouched
        assert torch.equal(v, head_before[k])
    with bm.disable_adapter():
        torch.testing.assert_close(bm(x).logits, base_logits)
    # a second adapter gets its own fresh copy of the original head
    bm.add_adapter("other", BoneConfig(r=8, target_modules=["query"], modules_to_save=["classifier"]))
    bm.set_adapter("other")
    torch.testing.assert_close(bm(x).logits, base_logits)
    bm.set_adapter("default")
    torch.testing.assert_close(bm(x).logits, trained)
    assert saved.out_proj is saved.copies["default"].out_proj  # attributes reach the copy
    bm.delete_adapter("other")
    merged = bm.merge_and_unload()
    assert not any(isinstance(m, (SavedModule, BoneLayer)) for m in merged.modules())
    torch.testing.assert_close(merged(x).logits, trained, rtol=1e-5, atol=1e-5)


def test_unload_gives_back_the_original_head():
    model = roberta_cls()
    x = tokens()
    base_logits = model(x).logits
    bm = get_bone_model(model, BoneConfig(r=8, init="random", modules_to_save=["classifier"]))
    with torch.no_grad():
        bm.model.classifier.copies["default"].out_proj.bias.add_(1.0)
    plain = bm.unload()
    assert isinstance(plain.classifier.out_proj, nn.Linear)
    torch.testing.assert_close(plain(x).logits, base_logits)


# -- dtypes ---------------------------------------------------------------------------------


class _GemmDtypes(TorchDispatchMode):
    """The dtypes of the operands of every matrix product (forward and backward)."""

    OPS = {"mm", "addmm", "bmm", "baddbmm"}

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in self.OPS:
            self.seen.append({a.dtype for a in args if isinstance(a, torch.Tensor)})
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("variant", ["bone", "bone-mini", "bat", "bat-row", "bone-ab"])
def test_base_gemm_runs_in_base_dtype_with_fp32_adapters(variant, dtype):
    base = nn.Linear(32, 16, dtype=dtype).requires_grad_(False)
    layer = BoneLayer(base)
    ad = BlockAdapter(variant, 8, 16, 32, mini_r=4, init="random")
    assert all(p.dtype == torch.float32 for p in ad.parameters())  # the default master dtype
    layer.add_adapter("a", ad)
    x = torch.randn(2, 5, 32, dtype=dtype, requires_grad=True)
    with _GemmDtypes() as gemms:
        y = layer(x)
        y.float().square().sum().backward()
    assert y.dtype == x.grad.dtype == dtype
    assert gemms.seen and all(s == {dtype} for s in gemms.seen), gemms.seen
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ad.parameters())
    # the same as the dense adapted weight used in the base dtype
    dense = (base.weight.float() + _delta(ad, base.weight.float())).to(dtype)
    ref = nn.functional.linear(x.detach(), dense, base.bias)
    tol = 0 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(y.detach(), ref, rtol=tol or 1e-5, atol=tol or 1e-5)


def _delta(ad, w):
    return VARIANTS[ad.variant].delta(w, ad.detached(w.dtype), ad.r)


def test_model_dtypes_bf16_base():
    bm = get_bone_model(llama().to(torch.bfloat16), BoneConfig(variant="bat", r=8))
    b = bm.model.model.layers[0].self_attn.q_proj
    assert b.weight.dtype == torch.bfloat16 and b.adapters["default"].B.dtype == torch.float32
    out = bm(tokens(), output_hidden_states=True)
    assert out.logits.dtype == out.hidden_states[-1].dtype == torch.bfloat16
    auto = get_bone_model(llama().to(torch.bfloat16), BoneConfig(r=8, adapter_dtype="auto"))
    assert auto.model.model.layers[0].mlp.up_proj.adapters["default"].B.dtype == torch.bfloat16


def test_attributes_pass_through_and_custom_adapter_modules_are_found():
    bm = get_bone_model(llama(), BoneConfig(r=8, target_modules=["q_proj"]))
    assert bm.config.hidden_size == 32
    assert bm.generate(tokens(1, 4), max_new_tokens=2, do_sample=False).shape == (1, 6)

    class MyAdapter(nn.Module):  # anything with adapter_params() counts, as in torchtune
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.scale = nn.Parameter(torch.ones(4))

        def adapter_params(self):
            return ["scale"]

    wrapper = nn.ModuleDict({"bm": bm.model, "mine": MyAdapter()})
    params = get_adapter_params(wrapper)
    assert "mine.scale" in params and "mine.lin.weight" not in params
    assert len(params) == 1 + 2  # and the two q_proj adapters
