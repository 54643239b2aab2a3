"""Interoperability with the real ``peft`` package, both ways, and the exact LoRA export."""

import copy

import pytest
import torch
from tiny_models import gpt2, llama, randomize_adapters, roberta_cls, tokens

from flashbone import BoneConfig, get_bone_model, load_adapter

peft = pytest.importorskip("peft")
from peft import MissConfig, PeftModel, get_peft_model  # noqa: E402

# r=12 does not divide hidden 32: bone's padded last block is exercised as well
OURS = [("bone", dict(r=12)), ("bone-mini", dict(r=12, mini_r=8)), ("bat", dict(r=8))]
PEFT_INIT = {"bone": True, "bone-mini": "mini", "bat": "bat"}


def _peft_logits(model, x):
    model.eval()  # PEFT's new dropout modules start in training mode
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("variant,kw", OURS, ids=[v for v, _ in OURS])
def test_ours_loads_in_peft(variant, kw, tmp_path):
    model = llama()
    base = copy.deepcopy(model)
    bm = get_bone_model(model, BoneConfig(variant=variant, **kw))
    randomize_adapters(bm)
    bm.save_adapter(tmp_path)
    pm = PeftModel.from_pretrained(base, tmp_path)
    assert pm.peft_config["default"].init_weights == PEFT_INIT[variant]
    x = tokens()
    torch.testing.assert_close(_peft_logits(pm, x), bm(x).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant,kw", OURS, ids=[v for v, _ in OURS])
def test_peft_folder_loads_here(variant, kw, tmp_path):
    model = llama()
    base = copy.deepcopy(model)
    cfg = MissConfig(
        r=kw["r"],
        mini_r=kw.get("mini_r", 1),
        init_weights=PEFT_INIT[variant],
        miss_dropout=0.1,  # PEFT ignores it for bat; used in training only
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
    )
    pm = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "miss_block" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    pm.save_pretrained(tmp_path)
    ours = load_adapter(base, tmp_path)
    assert ours.configs["default"].variant == variant and len(list(ours.bone_layers())) == 12
    assert ours.configs["default"].dropout == (0.0 if variant == "bat" else 0.1)
    x = tokens()
    torch.testing.assert_close(ours(x).logits, _peft_logits(pm, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,variant", [(llama, "bone"), (llama, "bone-mini"), (gpt2, "bone")])
def test_lora_export_is_exact_in_peft(make, variant, tmp_path):
    model = make()
    base = copy.deepcopy(model)
    bm = get_bone_model(model, BoneConfig(variant=variant, r=12, mini_r=8))
    randomize_adapters(bm)
    bm.export_lora(tmp_path)
    pm = PeftModel.from_pretrained(base, tmp_path)
    assert pm.peft_config["default"].peft_type == "LORA"
    x = tokens()
    torch.testing.assert_close(_peft_logits(pm, x), bm(x).logits, rtol=1e-5, atol=1e-5)
    lora_a = next(p for n, p in pm.named_parameters() if n.endswith("lora_A.default.weight"))
    assert lora_a.shape[0] == 12 and set(lora_a.unique().tolist()) == {0.0, 1.0}


def test_classifier_head_both_ways(tmp_path):
    """RoBERTa classification: the head travels as modules_to_save in PEFT's key names."""
    model = roberta_cls()
    base, base2, base3 = (copy.deepcopy(model) for _ in range(3))
    bm = get_bone_model(
        model, BoneConfig(r=8, target_modules=["query", "value"], modules_to_save=["classifier"], task_type="SEQ_CLS")
    )
    randomize_adapters(bm)
    with torch.no_grad():
        bm.model.classifier.copies["default"].dense.bias.add_(0.3)
    bm.save_adapter(tmp_path / "ours")
    x = tokens()
    pm = PeftModel.from_pretrained(base, tmp_path / "ours")
    torch.testing.assert_close(_peft_logits(pm, x), bm(x).logits, rtol=1e-5, atol=1e-5)

    # PEFT -> ours: PEFT adds modules_to_save ["classifier", "score"] for SEQ_CLS by itself
    pm2 = get_peft_model(base2, MissConfig(r=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    with torch.no_grad():
        for name, p in pm2.named_parameters():
            if "miss_block" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.05)
    pm2.save_pretrained(tmp_path / "peft")
    ours = load_adapter(base3, tmp_path / "peft")
    assert ours.configs["default"].modules_to_save == ["classifier"]
    torch.testing.assert_close(ours(x).logits, _peft_logits(pm2, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["bone", "bat"])
def test_gpt2_conv1d_adapters_are_written_as_ours_since_peft_miss_refuses_conv1d(variant, tmp_path):
    import json

    model = gpt2()
    base = copy.deepcopy(model)
    with pytest.raises(TypeError, match="not supported"):  # why a MISS folder would not load
        get_peft_model(copy.deepcopy(model), MissConfig(r=8, init_weights=PEFT_INIT[variant], target_modules=["c_fc"]))
    bm = get_bone_model(model, BoneConfig(variant=variant, r=8))
    randomize_adapters(bm)
    bm.save_adapter(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["variant"]) == ("FLASHBONE", variant)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(load_adapter(base, tmp_path)(x).logits, bm(x).logits, rtol=0, atol=0)


def test_a_flashbone_folder_in_a_peft_tool_has_a_written_way_out(tmp_path, capsys):
    """lm-eval's ``peft=`` calls PeftModel.from_pretrained: on a bat-row folder that stops at
    KeyError 'FLASHBONE'. The folder's README says why and how through; the way it gives works."""
    import json

    from cli_helpers import flashbone
    from peft import PeftModel

    from flashbone.loading import load_model

    bm = get_bone_model(load_model(None), BoneConfig(variant="bat-row", r=16, base_model_name_or_path="flashbone-tiny"))
    randomize_adapters(bm, std=0.05)
    bm.save_adapter(tmp_path / "a")
    with pytest.raises(KeyError, match="FLASHBONE"):  # what a PEFT-based tool meets
        PeftModel.from_pretrained(load_model(None), str(tmp_path / "a"))
    readme = (tmp_path / "a" / "README.md").read_text()
    assert "KeyError: 'FLASHBONE'" in readme and "bat-row" in readme
    assert "flashbone merge --base flashbone-tiny --adapter THIS_FOLDER --out MERGED" in readme
    rc, _, err = flashbone(
        capsys, "merge", "--base", "flashbone-tiny", "--adapter", tmp_path / "a", "--out", tmp_path / "merged"
    )
    assert rc == 0, err
    x = tokens()
    merged = load_model(str(tmp_path / "merged"))
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, bm(x).logits, rtol=1e-4, atol=1e-4)
    # a MISS folder is PEFT's own: no README of ours
    get_bone_model(load_model(None), BoneConfig(variant="bat", r=16)).save_adapter(tmp_path / "miss")
    assert json.loads((tmp_path / "miss" / "adapter_config.json").read_text())["peft_type"] == "MISS"
    assert not (tmp_path / "miss" / "README.md").exists()
