"""RWKV6 (flash-linear-attention's module tree): targets by the papers' names, train, save, load,
merge, the CLI, and the papers' parameter counts.

On CPU the model is tests/rwkv6_reference.py (fla's kernels need a GPU); where fla imports, the
parameter counts are checked on fla's own RWKV6ForCausalLM too.
"""

import copy
import json

import pytest
import rwkv6_reference as ref
import torch
from cli_helpers import flashbone, write_jsonl
from transformers import AutoModelForCausalLM

from flashbone import BoneConfig, BoneLayer, get_bone_model, load_adapter, loading, rwkv6
from flashbone.baselines import parse_targets
from flashbone.errors import TargetError
from flashbone.loading import ModelLoadError

ref.register()  # model_type rwkv6 -> the reference, unless fla registered its own (GPU machines)

EIGHT = [
    "attn.r_proj.linear",
    "attn.k_proj.linear",
    "attn.v_proj.linear",
    "attn.g_proj.linear",
    "attn.o_proj",
    "ffn.key.linear",
    "ffn.value",
    "ffn.receptance.linear",
]


def _leaf_names(bm):
    return sorted({n.split(".", 3)[3] for n, _ in bm.bone_layers()})  # after "model.layers.N."


def test_paper_names_map_to_fla_modules():
    m = ref.tiny()
    assert parse_targets(None, m) == EIGHT  # RWKV-PEFT's parts {"att", "ffn"}: all eight
    assert (
        parse_targets("att.receptance,att.key,att.value,att.gate,att.output,ffn.key,ffn.value,ffn.receptance", m)
        == EIGHT
    )
    assert parse_targets("key,value", m) == ["attn.k_proj.linear", "ffn.key.linear", "attn.v_proj.linear", "ffn.value"]
    assert parse_targets("gate,output", m) == ["attn.g_proj.linear", "attn.o_proj"]
    bm = get_bone_model(m, BoneConfig(variant="bone", r=8, target_modules=parse_targets(None, m)))
    assert _leaf_names(bm) == sorted(EIGHT) and len(list(bm.bone_layers())) == 16


def test_weight_read_directly_is_never_a_target():
    # fla uses x_proj[2].weight without calling the layer: an adapter there would do nothing
    bm = get_bone_model(ref.tiny(), BoneConfig(variant="bone", r=4, target_modules="all-linear"))
    names = [n for n, _ in bm.bone_layers()]
    assert not any(n.endswith("x_proj.2") for n in names) and any(n.endswith("x_proj.0.linear") for n in names)
    with pytest.raises(TargetError, match="reads its weight directly"):
        get_bone_model(ref.tiny(), BoneConfig(variant="bone", r=4, target_modules=["attn.x_proj.2"]))


@pytest.mark.parametrize(
    "kw",
    [dict(variant="bat-row", r=8), dict(variant="bone", r=8), dict(variant="bat", r=8)],
    ids=lambda kw: kw["variant"],
)
def test_inject_train_save_load_merge(kw, tmp_path):
    torch.manual_seed(0)
    model = ref.tiny()
    base = copy.deepcopy(model)
    x = torch.randint(3, 64, (4, 12))
    bm = get_bone_model(
        model,
        BoneConfig(
            target_modules=parse_targets(
                "att.receptance,att.key,att.value,att.gate,att.output,ffn.key,ffn.value,ffn.receptance", model
            ),
            **kw,
        ),
    )
    before = bm(x, labels=x).loss.item()
    opt = torch.optim.AdamW([p for p in bm.parameters() if p.requires_grad], lr=3e-2)
    bm.train()
    for _ in range(8):
        opt.zero_grad()
        bm(x, labels=x).loss.backward()
        opt.step()
    bm.eval()
    after = bm(x, labels=x).loss.item()
    assert after < before - 0.1, (before, after)
    y = bm(x).logits
    bm.save_adapter(tmp_path)
    loaded = load_adapter(base, tmp_path)
    torch.testing.assert_close(loaded(x).logits, y, rtol=1e-6, atol=1e-6)
    merged = loaded.merge_and_unload()
    assert not any(isinstance(m, BoneLayer) for m in merged.modules())
    torch.testing.assert_close(merged(x).logits, y, rtol=1e-4, atol=1e-4)


# -- the papers' parameter counts (Tables 1, 4-7) on meta-device models of the RWKV6 checkpoints' shapes
def _model_classes():
    classes = [pytest.param((ref.RefRWKV6Config, ref.RefRWKV6ForCausalLM), id="reference")]
    try:
        from fla.models import RWKV6Config, RWKV6ForCausalLM

        classes.append(pytest.param((RWKV6Config, RWKV6ForCausalLM), id="fla"))
    except ImportError:
        pass
    return classes


def _meta(classes, size):
    config_cls, model_cls = classes
    with torch.device("meta"):
        return model_cls(config_cls(**rwkv6.paper_config(size)))


@pytest.mark.parametrize("classes", _model_classes())
@pytest.mark.parametrize(
    "size,variant,expected",
    [
        ("1.6B", "bone", 33_030_144),  # paper: 33.0M
        ("3B", "bone", 55_050_240),  # paper: 55.1M
        ("7B", "bone", 88_080_384),  # paper: 88.1M
        ("3B", "bat", 55_050_240),  # paper (Table 5): 55.1M
        ("3B", "bat-row", 55_050_240),  # paper (Table 5): 55.1M; RWKV6 is symmetric: sum(in) = sum(out)
    ],
)
def test_paper_counts(classes, size, variant, expected):
    m = _meta(classes, size)
    bm = get_bone_model(m, BoneConfig(variant=variant, r=64, target_modules=rwkv6.default_targets()))
    assert bm.trainable_report().adapter == expected


@pytest.mark.parametrize("size,expected", [("1.6B", 33_030_144), ("3B", 55_050_240), ("7B", 88_080_384)])
def test_lora_r32_matches_the_papers_count(size, expected):
    # the papers' LoRA/PiSSA rows have Bone's count: LoRA r=32 has r*(in+out) = 64*out per square layer
    peft = pytest.importorskip("peft")
    pm = peft.get_peft_model(
        _meta(_model_classes()[0].values[0], size),
        peft.LoraConfig(r=32, lora_alpha=64, target_modules=rwkv6.default_targets()),
    )
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == expected


# -- loading and the CLI
def _tiny_folder(tmp_path):
    tok = loading.load_tokenizer(None)
    m = ref.tiny(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id
    )
    folder = tmp_path / "rwkv6-tiny"
    m.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cli_trains_and_merges_an_rwkv6_folder(tmp_path, capsys):
    folder = _tiny_folder(tmp_path)
    data = write_jsonl(tmp_path / "d.jsonl", [{"query": f"{i} plus {i}?", "response": str(2 * i)} for i in range(8)])
    out = tmp_path / "run"
    rc, stdout, err = flashbone(
        capsys,
        "train",
        "--model",
        folder,
        "--data",
        data,
        "--method",
        "bat-row",
        "--r",
        "8",
        "--lr",
        "1e-2",
        "--batch-size",
        "4",
        "--grad-accum",
        "1",
        "--max-steps",
        "3",
        "--eval-task",
        "none",
        "--no-progress",
        "--out",
        out,
    )
    assert rc == 0, err
    assert "method     bat-row r=8 on " + ",".join(EIGHT) in stdout
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(v > 0 for v in losses)
    rc, _, err = flashbone(capsys, "merge", "--base", folder, "--adapter", out / "adapter", "--out", tmp_path / "m")
    assert rc == 0, err
    # where fla is installed its Triton kernels need CUDA tensors (on an H200 this test failed on
    # CPU tensors); the CPU reference runs anywhere. Triton's float32 dots may use TF32.
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tol = 2e-3 if dev == "cuda" else 1e-4
    x = torch.randint(3, 100, (2, 9), device=dev)
    adapted = load_adapter(AutoModelForCausalLM.from_pretrained(folder), out / "adapter").to(dev)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "m").to(dev)
    torch.testing.assert_close(merged(x).logits, adapted(x).logits, rtol=tol, atol=tol)


def test_rwkv6_without_fla_names_the_install(tmp_path, monkeypatch):
    folder = _tiny_folder(tmp_path)
    monkeypatch.setattr(loading, "_known_to_transformers", lambda t: False)
    monkeypatch.setattr(rwkv6, "register", lambda: False)
    with pytest.raises(ModelLoadError, match=r"flashbone\[rwkv\]"):
        loading.load_model(str(folder))


@pytest.mark.parametrize(
    "recipe", sorted(__import__("pathlib").Path(__file__).parents[1].glob("recipes/rwkv6-*.yaml")), ids=lambda p: p.name
)
def test_rwkv6_recipes_are_valid_train_configs(recipe):
    import argparse

    from flashbone.cli import apply_config_file
    from flashbone.commands.train import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    apply_config_file(p, str(recipe))
    args = p.parse_args([])
    assert args.model.startswith("fla-hub/rwkv6-") and args.method in ("bone", "bat", "bat-row") and args.r == 64
    assert (args.lr, args.batch_size * args.grad_accum, args.max_length) == (2e-5, 64, 512)
