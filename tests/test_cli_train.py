"""`flashbone train` end to end on the built-in tiny base, for every method."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cli_helpers import flashbone, train
from flashbone.baselines import methods
from flashbone.training import latest_checkpoint


@pytest.mark.parametrize("method", methods())
def test_every_method_trains_and_saves(method, tmp_path, capsys):
    out = tmp_path / method
    rc, stdout, err = train(capsys, out, "--method", method, "--r", "16")
    assert rc == 0, err
    assert f"method     {method}" in stdout
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["loss"] > 0 and m["tokens_per_s"] > 0 and "lr" in m and "grad_norm" in m for m in metrics)
    assert metrics[0]["lr"] == pytest.approx(2e-3)  # the tiny recipe's lr, cosine from there
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "tensorboard").is_dir()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and summary["trainable_params"] > 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == method and cfg["r"] == 16 and cfg["lr"] == pytest.approx(2e-3)
    if method == "full":
        assert (out / "model" / "config.json").is_file() and (out / "model" / "tokenizer.json").is_file()
    else:
        adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
        expected = {"bone": "MISS", "bone-mini": "MISS", "bat": "MISS"}.get(method)
        expected = expected or ("LORA" if method in ("lora", "pissa", "olora", "dora") else "FLASHBONE")
        assert adapter["peft_type"] == expected
        if method in ("pissa", "olora"):  # converted to plain LoRA for the original base: rank 2r
            assert adapter["r"] == 32 and not (out / ".initial_adapter").exists()
    assert not list(out.glob(".*.tmp"))


def test_defaults_are_the_builtin_demo(tmp_path, capsys, monkeypatch):
    """No flags: tiny base, tiny-math, bone, the tiny recipe, evaluation before and after."""
    import argparse

    from flashbone.commands import train as train_cmd

    p = argparse.ArgumentParser()
    train_cmd.add_arguments(p)
    v = train_cmd._resolve(p.parse_args([]))
    assert (v.model, v.data, v.method, v.recipe) == ("flashbone-tiny", "tiny-math", "bone", "tiny")
    assert v.eval_task == "tiny-math" and v.eval_data == "tiny-math:test"
    assert v.lr == train_cmd.TINY_RECIPE["lr"] and v.max_length == 512
    paper = train_cmd._resolve(p.parse_args(["--model", "some/model", "--data", "x.jsonl"]))
    assert (paper.lr, paper.r, paper.batch_size * paper.grad_accum) == (2e-5, 64, 64)
    assert paper.eval_task == "none" and paper.recipe == "paper"
    assert train_cmd._resolve(p.parse_args(["--model", "m/m", "--method", "lora"])).r == 36


@pytest.mark.slow
def test_finetuning_raises_heldout_accuracy(tmp_path, capsys):
    """A short version of the default run: 40 steps must lift held-out accuracy clearly (on the
    current base these settings gave 0% -> 16% on 50 problems; the full 200-step run gives 97.5%)."""
    out = tmp_path / "demo"
    rc, stdout, err = flashbone(
        capsys, "train", "--max-samples", "640", "--lr", "4e-3", "--eval-samples", "50", "--out", out, "--no-progress"
    )
    assert rc == 0, err
    s = json.loads((out / "summary.json").read_text())
    assert s["accuracy_before"] is not None and s["accuracy_after"] >= s["accuracy_before"] + 0.1, s
    assert "held-out accuracy" in stdout
    rows = [json.loads(x) for x in (out / "eval_after.jsonl").read_text().splitlines()]
    assert len(rows) == 50 and {"prompt", "generation", "extracted", "gold", "correct"} <= set(rows[0])
    # `flashbone eval` on the saved adapter scores the same held-out rows the same way
    rc, stdout, err = flashbone(
        capsys,
        "eval",
        "--adapter",
        out / "adapter",
        "--max-samples",
        "50",
        "--out",
        tmp_path / "e.jsonl",
        "--no-progress",
    )
    assert rc == 0, err
    assert f"({sum(r['correct'] for r in rows)}/50)" in stdout


@pytest.mark.parametrize("method", ["bone", "bat", "lora"])
def test_resume_reaches_the_uninterrupted_adapter(method, tmp_path, capsys):
    args = ["--method", method, "--r", "16", "--max-samples", "24", "--grad-accum", "2", "--max-steps", "5"]
    rc, _, err = train(capsys, tmp_path / "a", *args)
    assert rc == 0, err
    rc, stdout, err = train(capsys, tmp_path / "b", *args, "--save-every", "2", "--stop-after", "3")
    assert rc == 0 and "stopped after step 3 of 5" in stdout, err
    assert not (tmp_path / "b" / "adapter").exists()
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step-00000003"
    rc, _, err = flashbone(capsys, "train", "--out", tmp_path / "b", "--resume", "--no-progress")
    assert rc == 0, err
    a = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-7)
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, abs=1e-6) and len(lb) == 5


def test_resume_ignores_half_written_checkpoints_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = train(capsys, out, "--max-steps", "4", "--save-every", "2", "--stop-after", "2")
    assert rc == 0, err
    ck = out / "checkpoints"
    broken = ck / ".tmp-step-00000003-999"  # what a kill in the middle of a save leaves
    broken.mkdir()
    (broken / "trainable.safetensors").write_bytes(b"partial")
    incomplete = ck / "step-00000004"  # a complete-looking name without its files
    incomplete.mkdir()
    assert latest_checkpoint(ck).name == "step-00000002"
    rc, _, err = flashbone(capsys, "train", "--out", out, "--resume", "--lr", "0.1", "--no-progress")
    assert rc == 2 and "lr" in err and "Traceback" not in err
    rc, _, err = flashbone(capsys, "train", "--out", out, "--resume", "--no-progress")
    assert rc == 0, err
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4


def test_refuses_non_empty_out_and_gradient_checkpointing_runs(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = train(capsys, out)
    assert rc == 2 and "not empty" in err and (out / "keep.txt").exists()
    rc, _, err = train(capsys, tmp_path / "gc", "--gradient-checkpointing", "--targets", "q,v")
    assert rc == 0, err
    cfg = json.loads((tmp_path / "gc" / "adapter" / "adapter_config.json").read_text())
    assert all(t.endswith(("q_proj", "v_proj")) for t in cfg["target_modules"])


def test_user_data_file_and_config_yaml(tmp_path, capsys):
    from cli_helpers import write_jsonl

    data = write_jsonl(
        tmp_path / "gsm.jsonl",
        [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(8)],
    )
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"data": str(data), "method": "bone-mini", "r": 16, "mini-r": 8, "max_length": 24}))
    rc, stdout, err = flashbone(
        capsys,
        "train",
        "--config",
        conf,
        "--batch-size",
        "4",
        "--max-steps",
        "1",
        "--out",
        tmp_path / "u",
        "--no-progress",
    )
    assert rc == 0, err
    assert "fields question -> answer" in stdout and "cut to --max-length 24" in stdout
    saved = yaml.safe_load((tmp_path / "u" / "config.yaml").read_text())
    assert saved["mini-r"] == 8 and saved["max-length"] == 24 and saved["batch-size"] == 4
