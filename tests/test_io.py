"""Adapter folders: our formats, several adapters, legacy PEFT BONE, bad and corrupt files."""

import copy
import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import llama, randomize_adapters, roberta_cls, tokens

from flashbone import AdapterFileError, BoneConfig, BoneLayer, get_bone_model, load_adapter
from flashbone.variants import VARIANTS

PEFT_INIT = {"bone": True, "bone-mini": "mini", "bat": "bat"}


def _trained(variant, model=None, **kw):
    """A model with a random adapter, and an untouched copy of its base."""
    model = model or llama()
    base = copy.deepcopy(model)
    bm = get_bone_model(model, BoneConfig(variant=variant, r=8, mini_r=8, **kw))
    randomize_adapters(bm)
    return bm, base


def _snapshot(model):
    return ({n: type(m) for n, m in model.named_modules()}, {k: v.clone() for k, v in model.state_dict().items()})


def _unchanged(model, snap):
    now = _snapshot(model)
    return now[0] == snap[0] and all(torch.equal(now[1][k], v) for k, v in snap[1].items())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_save_load_round_trip(variant, tmp_path):
    bm, base = _trained(variant)
    bm.save_adapter(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    keys = load_file(tmp_path / "adapter_model.safetensors")
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    if variant in PEFT_INIT:  # PEFT's own format, so PEFT loads it
        assert cfg["peft_type"] == "MISS" and cfg["init_weights"] == PEFT_INIT[variant]
    else:  # same layout, our own type
        assert cfg["peft_type"] == "FLASHBONE" and cfg["variant"] == variant
    assert cfg["r"] == 8 and len(cfg["target_modules"]) == 14
    assert torch.equal(keys[f"{q}.miss_block"], bm.model.model.layers[0].self_attn.q_proj.adapters["default"].B)
    assert (f"{q}.miss_A" in keys) == (variant == "bone-ab")
    loaded = load_adapter(base, tmp_path)
    assert loaded.configs["default"].variant == variant
    x = tokens()
    torch.testing.assert_close(loaded(x).logits, bm(x).logits, rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_is_trainable_makes_the_loaded_adapter_trainable(tmp_path):
    bm, base = _trained("bat")
    bm.save_adapter(tmp_path)
    loaded = load_adapter(base, tmp_path, is_trainable=True)
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert len(trainable) == 14 and all(".adapters.default.B" in n for n in trainable)


def test_several_adapters_in_peft_layout(tmp_path):
    bm, base = _trained("bone")
    bm.add_adapter("math", BoneConfig(variant="bat", r=8, target_modules=["q_proj", "v_proj"]))
    randomize_adapters(bm, seed=1)
    x = tokens()
    y_default = bm(x).logits
    bm.set_adapter("math")
    y_math = bm(x).logits
    bm.save_adapter(tmp_path)  # "default" at the root, the others in subfolders
    assert (tmp_path / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "math" / "adapter_config.json").read_text())["init_weights"] == "bat"
    loaded = load_adapter(base, tmp_path)
    torch.testing.assert_close(loaded(x).logits, y_default, rtol=0, atol=0)
    loaded = load_adapter(loaded, tmp_path / "math", adapter_name="math")
    assert loaded.active_adapters == ["default"]  # joins inactive, as in PEFT
    loaded.set_adapter("math")
    torch.testing.assert_close(loaded(x).logits, y_math, rtol=0, atol=0)
    bm.save_adapter(tmp_path / "only", adapter_name="math")  # one named adapter: at the root
    assert json.loads((tmp_path / "only" / "adapter_config.json").read_text())["init_weights"] == "bat"


@pytest.mark.parametrize("init", [True, "bat"])
def test_legacy_peft_bone_folder_loads(init, tmp_path):
    """A folder as PEFT <= 0.18 wrote it for BoneConfig (peft_type BONE, *.bone_block keys)."""
    model = llama()
    base = copy.deepcopy(model)
    targets = ["q_proj", "down_proj"]
    cfg = {
        "peft_type": "BONE",
        "r": 8,
        "init_weights": init,
        "target_modules": targets,
        "exclude_modules": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "bias": "none",
        "modules_to_save": None,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": None,
        "revision": None,
        "inference_mode": True,
        "auto_mapping": None,
    }
    g = torch.Generator().manual_seed(0)
    tensors, dense = {}, {}
    for name, mod in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets:
            out, inn = mod.weight.shape
            shape = (8, out) if init is True else (out // 8, 8, 8)
            b = torch.randn(shape, generator=g) * 0.05
            tensors[f"base_model.model.{name}.bone_block"] = b
            variant = "bone" if init is True else "bat"
            dense[name] = mod.weight + VARIANTS[variant].delta(mod.weight, {"B": b}, 8)
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(tensors, tmp_path / "adapter_model.safetensors", metadata={"format": "pt"})
    loaded = load_adapter(model, tmp_path)
    assert loaded.configs["default"].variant == ("bone" if init is True else "bat")
    with torch.no_grad():  # the expected model: the dense adapted weights, no adapters
        for name, w in dense.items():
            base.get_submodule(name).weight.copy_(w)
    x = tokens()
    torch.testing.assert_close(loaded(x).logits, base(x).logits, rtol=1e-5, atol=1e-5)


def test_modules_to_save_are_saved_and_loaded(tmp_path):
    model = roberta_cls()
    bm, base = _trained("bone", model, target_modules=["query", "value"], modules_to_save=["classifier"])
    with torch.no_grad():
        bm.model.classifier.copies["default"].out_proj.bias.add_(0.5)
    bm.save_adapter(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors")
    assert "base_model.model.classifier.out_proj.bias" in keys  # PEFT's key names
    loaded = load_adapter(base, tmp_path)
    x = tokens()
    torch.testing.assert_close(loaded(x).logits, bm(x).logits, rtol=0, atol=0)
    two_labels = roberta_cls(num_labels=2)  # the same body, a head of another shape
    snap = _snapshot(two_labels)
    with pytest.raises(
        AdapterFileError,
        match=r"key 'base_model\.model\.classifier\.out_proj\.bias' "
        r"has shape \(3,\), the model's .* has \(2,\)",
    ):
        load_adapter(two_labels, tmp_path)
    assert _unchanged(two_labels, snap)


# -- bad folders: a clear error and the model left as it was ---------------------------------


def _saved_folder(tmp_path, variant="bone"):
    bm, base = _trained(variant)
    bm.save_adapter(tmp_path)
    return base


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors_file(damage, tmp_path):
    base = _saved_folder(tmp_path)
    f = tmp_path / "adapter_model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x07" * 64, "empty": b""}[damage])
    snap = _snapshot(base)
    with pytest.raises(AdapterFileError, match=r"adapter_model\.safetensors is not a readable safetensors"):
        load_adapter(base, tmp_path)
    assert _unchanged(base, snap)


def test_shapes_from_another_model_name_the_first_bad_key(tmp_path):
    _saved_folder(tmp_path, "bat")
    other = llama(intermediate_size=48)  # gate/up (48, 32), down (32, 48)
    snap = _snapshot(other)
    # down_proj (32, 48) takes the same (4, 8, 8) tensor; gate_proj (48, 32) is the first misfit
    with pytest.raises(
        AdapterFileError,
        match=r"key 'base_model\.model\.model\.layers\.0\.mlp\.gate_proj\."
        r"miss_block' has shape \(8, 8, 8\).*\(48, 32\).*needs \(6, 8, 8\)",
    ):
        load_adapter(other, tmp_path)
    assert _unchanged(other, snap)


def test_module_names_from_another_model(tmp_path):
    base = _saved_folder(tmp_path)
    f = tmp_path / "adapter_model.safetensors"
    tensors = load_file(f)
    key = "base_model.model.model.layers.0.self_attn.q_proj.miss_block"
    tensors["base_model.model.model.layers.7.self_attn.q_proj.miss_block"] = tensors[key].clone()
    save_file(tensors, f)
    snap = _snapshot(base)
    with pytest.raises(
        AdapterFileError,
        match=r"key 'base_model\.model\.model\.layers\.7\.self_attn\.q_proj"
        r"\.miss_block' names module .*LlamaForCausalLM does not have",
    ):
        load_adapter(base, tmp_path)
    assert _unchanged(base, snap)
    tensors.pop("base_model.model.model.layers.7.self_attn.q_proj.miss_block")
    tensors["base_model.model.lm_head.weight"] = torch.zeros(64, 32)  # not a modules_to_save key
    save_file(tensors, f)
    with pytest.raises(AdapterFileError, match=r"'base_model\.model\.lm_head\.weight' is neither an adapter"):
        load_adapter(base, tmp_path)
    assert _unchanged(base, snap)


def test_loading_onto_a_bone_model_that_cannot_take_it_changes_nothing(tmp_path):
    _saved_folder(tmp_path)
    bm, _ = _trained("bat", llama(intermediate_size=48))
    snap = _snapshot(bm)
    with pytest.raises(AdapterFileError):
        load_adapter(bm, tmp_path, adapter_name="second")
    assert _unchanged(bm, snap) and bm.adapter_names == ["default"]


def test_only_safetensors_and_json_are_read(tmp_path, monkeypatch):
    base = _saved_folder(tmp_path)
    (tmp_path / "adapter_model.safetensors").rename(tmp_path / "adapter_model.bin")
    with pytest.raises(
        AdapterFileError, match=r"no adapter_model\.safetensors.*adapter_model\.bin.*never loads pickle"
    ):
        load_adapter(base, tmp_path)

    def refuse(*a, **k):
        raise AssertionError("pickle must never be used to read an adapter")

    _saved_folder(tmp_path / "ok")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    assert isinstance(load_adapter(llama(), tmp_path / "ok").model.model.layers[0].mlp.up_proj, BoneLayer)


@pytest.mark.parametrize(
    "config,message",
    [
        (None, r"has no adapter_config\.json"),
        ("{not json", r"is not valid JSON"),
        ('{"peft_type": "LORA", "r": 8}', r"peft_type 'LORA' is not a Bone-family adapter"),
        ('{"peft_type": "MISS", "r": 8, "init_weights": "odd"}', r"init_weights='odd' is not a MISS variant"),
        ('{"peft_type": "MISS", "init_weights": true}', r"field 'r' is missing"),
        ('{"peft_type": "MISS", "r": 0}', r"r must be a positive integer"),
    ],
)
def test_bad_config_files(config, message, tmp_path):
    base = _saved_folder(tmp_path)
    if config is None:
        (tmp_path / "adapter_config.json").unlink()
    else:
        (tmp_path / "adapter_config.json").write_text(config)
    with pytest.raises(AdapterFileError, match=message):
        load_adapter(base, tmp_path)
    with pytest.raises(AdapterFileError, match="does not exist"):
        load_adapter(base, tmp_path / "nowhere")
