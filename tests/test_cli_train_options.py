"""`flashbone train` flags for BoneConfig fields, --init-adapter and --trust-remote-code."""

import json

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import flashbone, one_line_error, train


def _adapter(out):
    folder = out / "adapter"
    return json.loads((folder / "adapter_config.json").read_text()), load_file(folder / "adapter_model.safetensors")


def test_bone_config_flags_reach_the_adapter(tmp_path, capsys):
    out = tmp_path / "a"
    rc, _, err = train(
        capsys,
        out,
        "--method",
        "bone",
        "--r",
        "16",
        "--dropout",
        "0.1",
        "--exclude",
        "down_proj",
        "--layers-to-transform",
        "0",
        "--modules-to-save",
        "norm",
        "--targets",
        "q,v,down",
    )
    assert rc == 0, err
    cfg, tensors = _adapter(out)
    assert cfg["miss_dropout"] == 0.1 and cfg["modules_to_save"] == ["norm"]
    assert cfg["target_modules"] == ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    assert "base_model.model.model.norm.weight" in tensors


def test_init_adapter_continues_from_a_folder(tmp_path, capsys):
    first = tmp_path / "first"
    rc, _, err = train(capsys, first, "--method", "bat", "--r", "16")
    assert rc == 0, err
    _, start = _adapter(first)
    second = tmp_path / "second"
    # same r repeated is fine; lr ~0 keeps the tensors where the folder had them
    rc, stdout, err = train(capsys, second, "--init-adapter", first / "adapter", "--r", "16", "--lr", "1e-12")
    assert rc == 0, err
    assert "method     bat r=16" in stdout
    cfg, end = _adapter(second)
    assert (cfg["peft_type"], cfg["init_weights"], cfg["r"]) == ("MISS", "bat", 16)
    assert start.keys() == end.keys()
    for k in start:
        torch.testing.assert_close(end[k], start[k], rtol=0, atol=1e-6)
        assert start[k].abs().sum() > 0  # the first run trained: the test means something


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--method", "bone"], ["bat adapter with r=16", "--method bone contradicts"]),
        (["--r", "32"], ["--r 32 contradicts"]),
        (["--targets", "q"], ["leave --targets out"]),
        (["--dropout", "0.1"], ["leave --dropout out"]),
    ],
)
def test_init_adapter_contradictions_are_one_error(tmp_path, capsys, extra, words):
    from flashbone import BoneConfig, get_bone_model
    from flashbone.loading import load_model

    get_bone_model(load_model(None), BoneConfig(variant="bat", r=16)).save_adapter(tmp_path / "init")
    rc, _, err = train(capsys, tmp_path / "run", "--init-adapter", tmp_path / "init", *extra)
    one_line_error(rc, err, *words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--method", "lora", "--dropout", "0.1"], ["--dropout", "Bone/Bat"]),
        (["--layers-to-transform", "a,b"], ["--layers-to-transform", "integers"]),
        (["--dropout", "1.5"], ["--dropout", "[0, 1)"]),
        (["--init-adapter", "no/such/folder"], ["--init-adapter", "no/such/folder"]),
        (["--method", "bat", "--dropout", "0.1"], ["--dropout", "additive variants"]),
        (["--adapter-dtype", "int8"], ["--adapter-dtype", "int8"]),
        (["--method", "full", "--modules-to-save", "norm"], ["--modules-to-save", "full"]),
    ],
)
def test_bad_option_values(tmp_path, capsys, extra, words):
    rc, _, err = train(capsys, tmp_path / "run", *extra)
    one_line_error(rc, err, *words)


def test_trust_remote_code_reaches_transformers(tmp_path, capsys, monkeypatch):
    from flashbone import loading

    seen = []
    real_model, real_tok = loading.load_model, loading.load_tokenizer
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: seen.append(k) or real_model(*a, **k))
    monkeypatch.setattr(loading, "load_tokenizer", lambda *a, **k: seen.append(k) or real_tok(*a, **k))
    rc, _, err = train(capsys, tmp_path / "run", "--trust-remote-code", "--max-steps", "1")
    assert rc == 0, err
    assert seen and all(k.get("trust_remote_code") is True for k in seen)


def test_modules_to_save_with_a_peft_method(tmp_path, capsys):
    out = tmp_path / "lora"
    rc, _, err = train(capsys, out, "--method", "lora", "--r", "4", "--modules-to-save", "norm")
    assert rc == 0, err
    cfg, tensors = _adapter(out)
    assert cfg["peft_type"] == "LORA" and cfg["modules_to_save"] == ["norm"]
    assert "base_model.model.model.norm.weight" in tensors  # PEFT saves the trained copy under the plain name


def test_warmup_steps_and_ratio(tmp_path, capsys):
    rc, stdout, err = train(capsys, tmp_path / "a", "--warmup-steps", "2", "--max-steps", "3")
    assert rc == 0, err
    assert "warmup 2 steps" in stdout
    lrs = [json.loads(x)["lr"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.0, 1e-3, 2e-3])  # linear rise to the tiny recipe's 2e-3, then the cosine
    rc, _, err = train(capsys, tmp_path / "b", "--warmup-steps", "1", "--warmup-ratio", "0.1")
    one_line_error(rc, err, "--warmup-steps", "--warmup-ratio")
    from flashbone.commands._train_options import warmup_steps

    from flashbone.commands._train_state import TrainOptions

    assert warmup_steps(TrainOptions(warmup_ratio=0.1), 25) == 3 and warmup_steps(TrainOptions(), 25) == 0


def test_one_warmup_meaning_for_both_tasks(tmp_path, capsys):
    from flashbone.classification import ClassifierSettings, warmup_of

    s = ClassifierSettings(
        lr=1e-3,
        batch_size=4,
        grad_accum=1,
        epochs=1,
        max_steps=None,
        warmup_ratio=0.06,
        weight_decay=0,
        max_grad_norm=1,
        seed=0,
    )
    assert warmup_of(s, 25) == 2  # ceil(0.06 x 25), as --warmup-ratio does for causal-lm and transformers does
    s.warmup_steps = 5
    assert warmup_of(s, 25) == 5
    rc, _, err = flashbone(
        capsys,
        "train",
        "--task",
        "classification",
        "--model",
        "m",
        "--data",
        "glue/sst2",
        "--warmup-steps",
        "3",
        "--warmup-ratio",
        "0.1",
        "--out",
        tmp_path / "c",
    )
    one_line_error(rc, err, "--warmup-steps", "--warmup-ratio")


def test_lr_for_gives_a_module_its_own_learning_rate(tmp_path, capsys):
    from flashbone.training import param_groups

    params = {"a.norm.weight": torch.nn.Parameter(torch.ones(2)), "a.q.B": torch.nn.Parameter(torch.ones(2))}
    groups = param_groups(params, 1e-3, {"norm": 1e-2})
    assert [(g["lr"], len(g["params"])) for g in groups] == [(1e-3, 1), (1e-2, 1)]
    out = tmp_path / "a"
    rc, _, err = train(capsys, out, "--modules-to-save", "norm", "--lr-for", "norm=0.5", "--max-steps", "1")
    assert rc == 0, err
    _, tensors = _adapter(out)
    from flashbone.loading import load_model

    before = load_model(None).model.norm.weight
    # AdamW's first step moves every weight by about lr: 0.5 here, 2e-3 (the recipe's) for the adapter
    assert (tensors["base_model.model.model.norm.weight"] - before).abs().max() > 0.4
    rc, _, err = train(capsys, tmp_path / "b", "--lr-for", "nothing_here=1e-3")
    one_line_error(rc, err, "--lr-for nothing_here", "no trainable parameter")
    rc, _, err = train(capsys, tmp_path / "c", "--lr-for", "norm")
    one_line_error(rc, err, "--lr-for", "NAME=LR")


def test_report_to_wandb_offline_and_none(tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "w"
    rc, _, err = train(capsys, out, "--report-to", "wandb")
    assert rc == 0, err
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and (out / "wandb" / "run_id").read_text().strip() in runs[0].name
    assert b"train/loss" in next(runs[0].glob("run-*.wandb")).read_bytes()  # the offline run's log
    assert not (out / "tensorboard").exists()
    rc, _, err = train(capsys, tmp_path / "n", "--report-to", "none")
    assert rc == 0, err
    assert not (tmp_path / "n" / "tensorboard").exists() and not (tmp_path / "n" / "wandb").exists()
    rc, _, err = train(capsys, tmp_path / "x", "--report-to", "mlflow")
    one_line_error(rc, err, "--report-to 'mlflow'")


@pytest.mark.parametrize("legacy", [False, True])
def test_init_adapter_from_a_peft_miss_or_legacy_bone_folder(tmp_path, capsys, legacy):
    from test_cli_merge import _peft_miss_folder

    _peft_miss_folder(tmp_path / "peft", legacy)  # PEFT's own MiSS folder (or PEFT < 0.19's BONE)
    start = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    out = tmp_path / "run"
    rc, stdout, err = train(capsys, out, "--init-adapter", tmp_path / "peft", "--lr", "1e-12")
    assert rc == 0, err
    assert "method     bone r=16 on" in stdout
    cfg, end = _adapter(out)
    assert (cfg["peft_type"], cfg["r"]) == ("MISS", 16)
    assert len(end) == len(start) == 12  # 4 layers x q, v, down
    for k, t in start.items():
        torch.testing.assert_close(end[k.replace("bone_block", "miss_block")], t, rtol=0, atol=1e-6)


def test_train_options_have_a_field_for_every_flag():
    import argparse

    from flashbone.commands._train_args import add_arguments
    from flashbone.commands._train_state import TrainOptions

    p = argparse.ArgumentParser()
    p.add_argument("--config")
    add_arguments(p)
    v = TrainOptions.from_namespace(p.parse_args(["--r", "8", "--val-split", "0.1"]))
    assert (v.r, v.val_split, v.method) == (8, 0.1, None)
    with pytest.raises(TypeError, match=r"no field for the flag\(s\) \['new_flag'\]"):
        TrainOptions.from_namespace(argparse.Namespace(**vars(p.parse_args([])), new_flag=1))
