"""Trainable parameter counts of full-size models equal the papers' (REFERENCE.md).

The models are built on the meta device from their configs: no weights, no memory.
"""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from flashbone import BoneConfig, get_bone_model

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def llama2_7b():
    cfg = LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    )
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


def mistral_7b():
    cfg = MistralConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
    )
    with torch.device("meta"):
        return MistralForCausalLM(cfg)


def adapter_count(model, **kw):
    bm = get_bone_model(model, BoneConfig(target_modules=PROJ, **kw))
    report = bm.trainable_report()
    assert report.modules_to_save == 0
    return report.adapter


@pytest.mark.parametrize(
    "make,kw,expected",
    [
        (llama2_7b, dict(variant="bone", r=64), 87_031_808),
        (llama2_7b, dict(variant="bat", r=64), 87_031_808),
        (llama2_7b, dict(variant="bat-row", r=64), 72_876_032),
        (mistral_7b, dict(variant="bone", r=64), 88_080_384),
    ],
)
def test_exact_counts(make, kw, expected):
    assert adapter_count(make(), **kw) == expected


@pytest.mark.parametrize("r,millions", [(16, 21.7), (32, 43.5), (128, 174.0)])
def test_bone_counts_scale_with_r_as_in_the_paper(r, millions):
    count = adapter_count(llama2_7b(), variant="bone", r=r)
    assert count == 87_031_808 * r // 64  # bone has r * sum(out_features) parameters
    assert math.floor(count / 1e5) / 10 == millions  # the paper truncates to 0.1M


def test_lora_r36_baseline_count_via_peft():
    peft = pytest.importorskip("peft")
    pm = peft.get_peft_model(llama2_7b(), peft.LoraConfig(r=36, lora_alpha=72, target_modules=PROJ))
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    assert trainable == 89_948_160
