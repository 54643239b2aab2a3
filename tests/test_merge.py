"""Merge, unmerge, merge_and_unload, unload: exact in fp32, bounded in bf16, safe when asked."""

import pytest
import torch
from tiny_models import llama, randomize_adapters, tokens
from torch import nn

from flashbone import BoneConfig, BoneLayer, MergeError, get_bone_model
from flashbone.variants import VARIANTS

VARIANT_LIST = list(VARIANTS)


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "adapters" not in n}


def _bone(variant, dtype=torch.float32, std=0.05, **kw):
    bm = get_bone_model(llama().to(dtype), BoneConfig(variant=variant, r=8, mini_r=8, **kw))
    randomize_adapters(bm, std=std)
    return bm


@pytest.mark.parametrize("variant", VARIANT_LIST)
def test_round_trip_fp32(variant):
    bm = _bone(variant)
    x = tokens()
    before, y = _weights(bm), bm(x).logits
    bm.merge_adapter()
    assert all(layer.merged_adapters == ["default"] for _, layer in bm.bone_layers())
    torch.testing.assert_close(bm(x).logits, y, rtol=1e-5, atol=1e-5)
    bm.merge_adapter()  # merging again is a no-op
    bm.unmerge_adapter()
    for n, w in _weights(bm).items():
        torch.testing.assert_close(w, before[n], rtol=0, atol=2e-6)
    torch.testing.assert_close(bm(x).logits, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["bone", "bat", "bat-row"])
def test_round_trip_bf16_is_bounded(variant):
    bm = _bone(variant, torch.bfloat16)
    x = tokens()
    before, y = _weights(bm), bm(x).logits.float()
    bm.merge_adapter()
    torch.testing.assert_close(bm(x).logits.float(), y, rtol=0.05, atol=0.05)
    merged = _weights(bm)
    bm.unmerge_adapter()
    for n, w in _weights(bm).items():
        # two roundings to bf16 (merge, unmerge) of values of size |W'|: about one ulp each
        bound = 2.0**-7 * merged[n].float().abs().max()
        assert (w.float() - before[n].float()).abs().max() <= bound, n


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("variant", ["bone", "bat", "bat-hadamard"])
def test_half_precision_merge_computes_in_fp32_and_casts_once(variant, dtype):
    bm = _bone(variant, dtype)
    layer = bm.model.model.layers[0].mlp.down_proj
    ad = layer.adapters["default"]
    w32 = layer.weight.float()
    expect = (w32 + VARIANTS[variant].delta(w32, ad.detached(torch.float32), ad.r)).to(dtype)
    bm.merge_adapter()
    assert layer.weight.dtype == dtype and torch.equal(layer.weight, expect)
    assert ad.B.dtype == torch.float32  # the adapter itself is never cast in place


def test_mixed_adapters_merge_like_their_forward():
    bm = _bone("bone")
    bm.add_adapter("bat", BoneConfig(variant="bat", r=8, target_modules=["q_proj", "up_proj"]))
    randomize_adapters(bm, std=0.05, seed=1)
    bm.set_adapter(["default", "bat"])
    x = tokens()
    before, y = _weights(bm), bm(x).logits
    bm.merge_adapter()
    torch.testing.assert_close(bm(x).logits, y, rtol=1e-5, atol=1e-5)
    bm.unmerge_adapter()
    for n, w in _weights(bm).items():
        torch.testing.assert_close(w, before[n], rtol=0, atol=2e-6)


def test_safe_merge_refuses_nan_and_changes_nothing():
    bm = _bone("bone")
    with torch.no_grad():  # a broken adapter in the last layer only
        bm.model.model.layers[1].mlp.down_proj.adapters["default"].B[0, 0] = float("nan")
    before, x = _weights(bm), tokens()
    y = bm(x).logits
    with pytest.raises(MergeError, match=r"layers\.1\.mlp\.down_proj.*NaN/Inf.*nothing was merged"):
        bm.merge_adapter(safe_merge=True)
    assert all(torch.equal(w, before[n]) for n, w in _weights(bm).items())
    assert not any(layer.merged_adapters for _, layer in bm.bone_layers())
    torch.testing.assert_close(bm(x).logits, y, equal_nan=True)
    with pytest.raises(MergeError):
        bm.merge_and_unload(safe_merge=True)
    assert any(isinstance(m, BoneLayer) for m in bm.model.modules())


def test_safe_merge_refuses_fp16_overflow():
    bm = _bone("bone", torch.float16, std=0.0)
    with torch.no_grad():
        bm.model.model.layers[0].self_attn.q_proj.adapters["default"].B.fill_(1e5)
    before = _weights(bm)
    with pytest.raises(MergeError, match="q_proj"):
        bm.merge_adapter(safe_merge=True)
    assert all(torch.equal(w, before[n]) for n, w in _weights(bm).items())


def test_bat_unmerge_refuses_a_singular_block_and_keep_original_is_exact():
    bm = _bone("bat")
    q = bm.model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        q.adapters["default"].B[2] = -torch.eye(8)  # I + B_2 = 0: W_2b is lost in W'
    before = _weights(bm)
    bm.merge_adapter()
    merged = _weights(bm)
    with pytest.raises(MergeError, match=r"layers\.0\.self_attn\.q_proj: .*block 2.*singular.*keep_original"):
        bm.unmerge_adapter()
    # nothing changed: every layer still merged, weights as merged
    assert all(torch.equal(w, merged[n]) for n, w in _weights(bm).items())
    assert all(layer.merged_adapters == ["default"] for _, layer in bm.bone_layers())
    with pytest.raises(MergeError, match="merged"):
        with bm.disable_adapter():
            pass
    # a kept original makes the way back exact and independent of the inverse
    bm2 = _bone("bat")
    with torch.no_grad():
        bm2.model.model.layers[0].self_attn.q_proj.adapters["default"].B[2] = -torch.eye(8)
    orig = _weights(bm2)
    bm2.merge_adapter(keep_original=True)
    bm2.unmerge_adapter()
    assert all(torch.equal(w, orig[n]) for n, w in _weights(bm2).items())
    assert before.keys() == orig.keys()


def test_merge_and_unload_and_unload():
    x = tokens()
    bm = _bone("bat-row")
    y = bm(x).logits
    merged = bm.merge_and_unload()
    assert not any(isinstance(m, BoneLayer) for m in merged.modules())
    assert isinstance(merged.model.layers[0].self_attn.q_proj, nn.Linear)
    torch.testing.assert_close(merged(x).logits, y, rtol=1e-5, atol=1e-5)

    model = llama()
    base_y, base_w = model(x).logits, _weights(model)
    bm = get_bone_model(model, BoneConfig(variant="bat", r=8))
    randomize_adapters(bm)
    bm.merge_adapter()  # unload undoes merges, then removes the adapters
    plain = bm.unload()
    assert not any(isinstance(m, BoneLayer) for m in plain.modules())
    for n, w in _weights(plain).items():
        torch.testing.assert_close(w, base_w[n.replace(".base_layer", "")], rtol=0, atol=2e-6)
    torch.testing.assert_close(plain(x).logits, base_y, rtol=1e-5, atol=1e-5)
