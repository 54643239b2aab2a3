"""Bad input gives a BoneError naming the module, shape and r at fault, and a way out;
the model is left exactly as it was."""

import pytest
import torch
from tiny_models import gpt2, llama
from torch import nn

from flashbone import BoneConfig, BoneConfigError, BoneError, BoneLayer, BoneShapeError, TargetError, get_bone_model
from flashbone.ops import set_backend

LINEAR_NAMES = r"\['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'lm_head'\]"


def _state(model):
    return [(n, type(m)) for n, m in model.named_modules()], {
        n: (p.requires_grad, p.detach().clone()) for n, p in model.named_parameters()
    }


@pytest.mark.parametrize(
    "config,error,message",
    [
        # r larger than a layer's input: the module, its shape, and the largest r that fits
        (
            dict(r=48, target_modules=["q_proj"]),
            BoneShapeError,
            r"model\.layers\.0\.self_attn\.q_proj: r=48 is larger than in_features=32 \(weight shape "
            r"\(32, 32\)\); use r <= 32",
        ),
        # a block variant whose r does not divide a GQA k_proj (16, 32): nearby r that divide both
        (
            dict(variant="bat-row", r=32),
            BoneShapeError,
            r"k_proj: bat-row needs r to divide both in_features=32 and out_features=16 \(weight shape "
            r"\(16, 32\)\), but r=32 does not; r values near 32 that divide both: \[2, 4, 8, 16\]",
        ),
        (
            dict(variant="bone-ab", r=24, target_modules=["gate_proj"]),
            BoneShapeError,
            r"gate_proj: bone-ab needs r to divide.*out_features=64.*r=24.*\[4, 8, 16, 32\]",
        ),
        (dict(variant="bat-hadamard", r=5), BoneShapeError, r"q_proj: bat-hadamard.*r=5.*\[1, 2, 4, 8\]"),
        # bone-mini: mini_r must divide out (k_proj has 16)
        (
            dict(variant="bone-mini", r=8, mini_r=32),
            BoneShapeError,
            r"k_proj: bone-mini needs mini_r to divide out_features=16, but mini_r=32 does not; "
            r"mini_r values near it that divide 16: \[2, 4, 8, 16\]",
        ),
        # names that match nothing: the linear layers that do exist
        (
            dict(r=8, target_modules=["query", "value"]),
            TargetError,
            r"target_modules=\['query', 'value'\] matched no module of LlamaForCausalLM; its linear "
            r"layers are named " + LINEAR_NAMES,
        ),
        (
            dict(r=8, target_modules=["q_proj"], layers_to_transform=[5]),
            TargetError,
            r"layers_to_transform=\[5\] matched no module",
        ),
        # a module of a type that cannot be adapted
        (
            dict(r=8, target_modules=["embed_tokens"]),
            TargetError,
            r"target module 'model\.embed_tokens' is a Embedding, which cannot be adapted.*e\.g\. \['q_proj'",
        ),
        (
            dict(r=8, modules_to_save=["classifier"]),
            TargetError,
            r"modules_to_save \['classifier'\] match no module of LlamaForCausalLM",
        ),
    ],
)
def test_bad_targets_and_shapes(config, error, message):
    model = llama()
    before = _state(model)
    with pytest.raises(error, match=message) as info:
        get_bone_model(model, BoneConfig(**config))
    assert isinstance(info.value, BoneError) and isinstance(info.value, ValueError)
    after = _state(model)
    assert after[0] == before[0]
    for n, (grad, value) in before[1].items():
        assert after[1][n][0] == grad and torch.equal(after[1][n][1], value)


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(r=0), r"r must be a positive integer, got 0"),
        (dict(r=-4), r"r must be a positive integer, got -4"),
        (dict(r=8.0), r"r must be a positive integer, got 8\.0"),
        (
            dict(variant="lora"),
            r"unknown variant 'lora'; choose one of bone, bone-mini, bat, bat-row, "
            r"bat-hadamard, bone-ab",
        ),
        (dict(variant="bone-mini", r=8), r"bone-mini' needs mini_r"),
        (dict(variant="bat", dropout=0.1), r"dropout is defined only for the additive variants"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
        (dict(init="kaiming"), r"init must be one of \('zeros', 'random'\)"),
        (dict(adapter_dtype="int8"), r"adapter_dtype must be one of"),
    ],
)
def test_bad_config_values(kw, message):
    with pytest.raises(BoneConfigError, match=message):
        BoneConfig(**kw)


def test_other_misuse_is_named():
    with pytest.raises(BoneConfigError, match=r"unknown BoneConfig field\(s\) \['rank'\]; known fields"):
        BoneConfig.from_dict({"rank": 8})
    with pytest.raises(TargetError, match=r"cannot adapt a Conv2d: only nn\.Linear and transformers' Conv1D"):
        BoneLayer(nn.Conv2d(3, 3, 1))
    with pytest.raises(BoneConfigError, match=r"unknown backend 'cuda'"):
        set_backend("cuda")
    bm = get_bone_model(gpt2(), BoneConfig(variant="bat", r=8))
    with pytest.raises(BoneConfigError, match=r"adapter name 'a\.b' is invalid"):
        bm.add_adapter("a.b", BoneConfig(r=8))
    with pytest.raises(BoneConfigError, match=r"adapter 'default' already exists"):
        bm.add_adapter("default", BoneConfig(r=8))
    with pytest.raises(BoneConfigError, match=r"no adapter named 'x'; adapters: \['default'\]"):
        bm.set_adapter("x")
    with pytest.raises(BoneConfigError, match=r"no adapter named 'x'"):
        bm.merge_adapter(["x"])
    with pytest.raises(
        BoneConfigError,
        match=r"only bone and bone-mini are exactly LoRA; adapter "
        r"'default' is 'bat'\. Merge it instead",
    ):
        bm.export_lora("unused")
    with pytest.raises(TargetError, match=r"linear layers are named \['c_attn', 'c_proj', 'c_fc', 'lm_head'\]"):
        bm.add_adapter("other", BoneConfig(r=8, target_modules=["nothing"]))
