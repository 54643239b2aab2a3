"""End to end on tiny models of six architectures: inject, train, save, load, merge.

Each architecture takes a different variant, so every variant trains through a real model.
"""

import copy

import pytest
import torch
import tiny_models as tm

from flashbone import BoneConfig, BoneLayer, get_bone_model, load_adapter

CASES = [
    ("llama", tm.llama, dict(variant="bat", r=8)),
    ("mistral", tm.mistral, dict(variant="bone", r=12)),  # in % r != 0: padded last block
    ("qwen2", tm.qwen2, dict(variant="bat-row", r=8)),
    ("gpt2-conv1d", tm.gpt2, dict(variant="bone-ab", r=8)),
    ("roberta-cls", tm.roberta_cls, dict(variant="bone-mini", r=8, mini_r=8, modules_to_save=["classifier"])),
    ("rwkv", tm.rwkv, dict(variant="bat-hadamard", r=8)),
]


def _loss(model, x, labels):
    return model(x, labels=labels).loss


@pytest.mark.parametrize("name,make,kw", CASES, ids=[c[0] for c in CASES])
def test_inject_train_save_load_merge(name, make, kw, tmp_path):
    model = make()
    base = copy.deepcopy(model)
    x = tm.tokens(4, 12)
    labels = torch.tensor([0, 1, 2, 1]) if name == "roberta-cls" else x
    bm = get_bone_model(model, BoneConfig(**kw))
    n_layers = sum(isinstance(m, BoneLayer) for m in bm.modules())
    assert n_layers >= 8
    assert not isinstance(bm.model.get_output_embeddings() or torch.nn.Identity(), BoneLayer)

    before = _loss(bm.eval(), x, labels).item()
    opt = torch.optim.AdamW([p for p in bm.parameters() if p.requires_grad], lr=1e-2)
    bm.train()
    for _ in range(6):
        opt.zero_grad()
        _loss(bm, x, labels).backward()
        opt.step()
    bm.eval()
    after = _loss(bm, x, labels).item()
    assert after < before - 0.1, (before, after)  # with frozen or broken adapters it would not move
    y = bm(x).logits

    bm.save_adapter(tmp_path)
    loaded = load_adapter(base, tmp_path)
    torch.testing.assert_close(loaded(x).logits, y, rtol=1e-6, atol=1e-6)
    merged = loaded.merge_and_unload()
    assert not any(isinstance(m, BoneLayer) for m in merged.modules())
    torch.testing.assert_close(merged(x).logits, y, rtol=1e-4, atol=1e-4)
