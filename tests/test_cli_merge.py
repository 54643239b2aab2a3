"""`flashbone merge`: the checkpoint loads in transformers and gives the adapter's logits."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from cli_helpers import flashbone, train
from flashbone import baselines, loading


def _logits(model, tok):
    enc = tok(["Mia has 12 apples. She buys 7 more apples.", "How many?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def _check_merged(adapter, merged_dir, atol=1e-4):
    tok = loading.load_tokenizer(None)
    with torch.no_grad():
        unmerged = _logits(baselines.attach_adapter(loading.load_model(None), adapter), tok)
        base = _logits(loading.load_model(None), tok)
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir))
    assert AutoTokenizer.from_pretrained(str(merged_dir)) is not None
    got = _logits(merged, tok)
    assert (unmerged - base).abs().max() > 1e-3  # the adapter does something
    torch.testing.assert_close(got, unmerged, atol=atol, rtol=0)


@pytest.mark.parametrize("method", ["bone", "bat", "bone-ab", "pissa", "dora"])
def test_merge_matches_unmerged_adapter(method, tmp_path, capsys):
    rc, _, err = train(capsys, tmp_path / "run", "--method", method, "--r", "16")
    assert rc == 0, err
    adapter = tmp_path / "run" / "adapter"
    rc, out, err = flashbone(capsys, "merge", "--adapter", adapter, "--out", tmp_path / "m")  # base from the adapter
    assert rc == 0, err
    assert "AutoModelForCausalLM.from_pretrained" in out
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "m").iterdir()}
    _check_merged(adapter, tmp_path / "m")
    rc, _, err = flashbone(
        capsys,
        "merge",
        "--base",
        "flashbone-tiny",
        "--adapter",
        adapter,
        "--out",
        tmp_path / "m",
        "--dtype",
        "bfloat16",
    )
    assert rc == 2 and "not empty" in err
    rc, _, err = flashbone(
        capsys,
        "merge",
        "--base",
        "flashbone-tiny",
        "--adapter",
        adapter,
        "--out",
        tmp_path / "m",
        "--dtype",
        "bfloat16",
        "--overwrite",
    )
    assert rc == 0, err
    assert next(iter(load_file(str(tmp_path / "m" / "model.safetensors")).values())).dtype == torch.bfloat16
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]


def _peft_miss_folder(folder, legacy=False):
    from peft import MissConfig, get_peft_model

    torch.manual_seed(0)
    pm = get_peft_model(loading.load_model(None), MissConfig(r=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "miss_block" in n:
                p.normal_(0, 0.05)
    pm.save_pretrained(str(folder), save_embedding_layers=False)
    if legacy:  # what PEFT < 0.19 wrote for Bone
        cfg = json.loads((folder / "adapter_config.json").read_text())
        cfg["peft_type"] = "BONE"
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
        t = load_file(str(folder / "adapter_model.safetensors"))
        save_file(
            {k.replace("miss_block", "bone_block"): v for k, v in t.items()}, str(folder / "adapter_model.safetensors")
        )
    return pm


@pytest.mark.parametrize("legacy", [False, True])
def test_merge_accepts_peft_miss_and_bone_folders(legacy, tmp_path, capsys):
    pm = _peft_miss_folder(tmp_path / "miss", legacy)
    tok = loading.load_tokenizer(None)
    expected = _logits(pm, tok)
    rc, _, err = flashbone(
        capsys, "merge", "--base", "flashbone-tiny", "--adapter", tmp_path / "miss", "--out", tmp_path / "m"
    )
    assert rc == 0, err
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")), tok), expected, atol=1e-4, rtol=0
    )


def test_merge_never_leaves_a_half_written_folder(tmp_path, capsys, monkeypatch):
    rc, _, err = train(capsys, tmp_path / "run")
    assert rc == 0, err
    from transformers import PreTrainedModel

    def broken_save(self, folder, *a, **k):
        (tmp_path / "half").mkdir(exist_ok=True)
        os.makedirs(folder, exist_ok=True)
        open(f"{folder}/model.safetensors", "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        flashbone(capsys, "merge", "--adapter", tmp_path / "run" / "adapter", "--out", tmp_path / "m")
    assert (tmp_path / "half").exists()  # the failure happened mid-write
    assert not (tmp_path / "m").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")]
