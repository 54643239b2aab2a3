"""Several processes on the CPU (gloo): DDP and FSDP2 runs follow the one-process run of the same
global batch (loss, gradient norm, final adapter), through both launch paths, and resume."""

import argparse
import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from cli_helpers import flashbone
from flashbone import cli
from flashbone.commands import train as train_cmd
from flashbone.distributed import DistributedError, ProcessEnv, split_batch

# 4 steps of 4 rows x 2 micro-batches: 2 processes take one micro-batch each per step
ARGS = [
    "--max-samples",
    "32",
    "--batch-size",
    "4",
    "--grad-accum",
    "2",
    "--max-steps",
    "4",
    "--eval-task",
    "none",
    "--no-progress",
]
_reference: dict = {}


def _single(method: str, tmp_path_factory, *extra: str):
    """The one-process run that the multi-process runs must follow (computed once per method)."""
    key = (method, extra)
    if key not in _reference:
        out = tmp_path_factory.mktemp(f"single-{method}")
        assert cli.main(["train", *ARGS, "--method", method, "--out", str(out), "--overwrite", *extra]) == 0
        _reference[key] = out
    return _reference[key]


def _run(cmd: list[str]) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return p.stdout


def _metrics(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _same_run(a, b, files=("adapter/adapter_model.safetensors",)) -> None:
    """Loss and gradient-norm curves within 1e-5 relative, saved tensors within 1e-5 of their scale."""
    ma, mb = _metrics(a), _metrics(b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb]
    assert [m["loss"] for m in mb] == pytest.approx([m["loss"] for m in ma], rel=1e-5)
    assert [m["grad_norm"] for m in mb] == pytest.approx([m["grad_norm"] for m in ma], rel=1e-5)
    assert [m["tokens"] for m in mb] == [m["tokens"] for m in ma]
    for f in files:
        ta, tb = load_file(str(a / f)), load_file(str(b / f))
        assert ta.keys() == tb.keys()
        for k in ta:
            assert ta[k].shape == tb[k].shape, k
            torch.testing.assert_close(tb[k], ta[k], rtol=0, atol=1e-5 * max(1.0, float(ta[k].abs().max())))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bat", "lora"])
def test_ddp_via_nproc_follows_one_process(method, tmp_path, tmp_path_factory):
    ref = _single(method, tmp_path_factory, "--r", "16")
    out = tmp_path / "ddp"
    stdout = _run(
        [
            sys.executable,
            "-m",
            "flashbone",
            "train",
            *ARGS,
            "--method",
            method,
            "--r",
            "16",
            "--nproc",
            "2",
            "--out",
            str(out),
        ]
    )
    assert "2 processes, ddp, each batch 4 x accum 1 per step" in stdout
    assert stdout.count("saved ") == 1  # rank 0 alone prints
    _same_run(ref, out)
    s = json.loads((out / "summary.json").read_text())
    assert (s["processes"], s["strategy"]) == (2, "ddp")


@pytest.mark.slow
def test_fsdp_via_torchrun_resumes_and_follows_one_process(tmp_path, tmp_path_factory, capsys):
    ref = _single("bat", tmp_path_factory, "--r", "16")
    out = tmp_path / "fsdp"
    # torchrun's own parser takes --r for an abbreviation of its flags: --adapter-r is the same flag
    stdout = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "flashbone",
            "train",
            *ARGS,
            "--method",
            "bat",
            "--adapter-r",
            "16",
            "--strategy",
            "fsdp",
            "--save-every",
            "2",
            "--stop-after",
            "2",
            "--out",
            str(out),
        ]
    )
    assert "stopped after step 2 of 4" in stdout
    ck = out / "checkpoints" / "step-00000002"
    assert json.loads((ck / "state.json").read_text())["world"] == 2
    # full tensors, not one process's shards: the shapes of the one-process adapter's
    shapes = {k: v.shape for k, v in load_file(str(ref / "adapter" / "adapter_model.safetensors")).items()}
    saved = load_file(str(ck / "trainable.safetensors"))
    assert sorted(t.shape for t in saved.values()) == sorted(shapes.values())
    opt = torch.load(ck / "trainer.pt", weights_only=True)["optimizer"]
    assert sorted(st["exp_avg"].shape for st in opt["state"].values()) == sorted(shapes.values())
    # another number of processes is refused before anything loads
    rc, _, err = flashbone(capsys, "train", "--out", out, "--resume", "--nproc", "1")
    assert rc == 2 and "written by a run of 2 process(es)" in err and "--nproc 2" in err
    # --resume alone starts 2 processes again (config.yaml holds nproc and strategy)
    _run([sys.executable, "-m", "flashbone", "train", "--out", str(out), "--resume", "--no-progress"])
    _same_run(ref, out)
    assert yaml.safe_load((out / "config.yaml").read_text())["strategy"] == "fsdp"


@pytest.mark.slow
def test_fsdp_full_finetuning_with_sharded_evaluation(tmp_path, tmp_path_factory):
    """Full fine-tuning under FSDP2 (tied embeddings in the root unit): the saved model matches
    the one-process run; evaluation rows are split over the processes and gathered in order."""
    ev = ["--eval-task", "tiny-math", "--eval-samples", "6", "--max-new-tokens", "8", "--max-steps", "2"]
    ref = _single("full", tmp_path_factory, *ev)
    out = tmp_path / "full"
    _run(
        [
            sys.executable,
            "-m",
            "flashbone",
            "train",
            *ARGS,
            *ev,
            "--method",
            "full",
            "--nproc",
            "2",
            "--strategy",
            "fsdp",
            "--out",
            str(out),
        ]
    )
    _same_run(ref, out, files=("model/model.safetensors",))
    for name in ("eval_before.jsonl", "eval_after.jsonl"):
        a = [json.loads(x)["prompt"] for x in (ref / name).read_text().splitlines()]
        b = [json.loads(x)["prompt"] for x in (out / name).read_text().splitlines()]
        assert a == b and len(a) == 6


def test_per_process_batch_keeps_the_global_batch():
    assert split_batch(4, 16, 2) == (4, 8)  # the accumulation is divided first
    assert split_batch(16, 1, 2) == (8, 1)  # then the micro-batch
    assert split_batch(4, 2, 4) == (2, 1)
    assert split_batch(4, 16, 1) == (4, 16)
    with pytest.raises(DistributedError, match="cannot be split evenly over 3 processes"):
        split_batch(4, 16, 3)


def test_flags_refused_before_any_process_starts(tmp_path, capsys):
    rc, _, err = flashbone(capsys, "train", "--nproc", "2", "--batch-size", "3", "--out", tmp_path / "a")
    assert rc == 2 and "cannot be split evenly over 2 processes" in err
    rc, _, err = flashbone(
        capsys, "train", "--nproc", "2", "--method", "lora", "--strategy", "fsdp", "--out", tmp_path / "b"
    )
    assert rc == 2 and "use --strategy ddp" in err
    rc, _, err = flashbone(capsys, "train", "--nproc", "0", "--out", tmp_path / "c")
    assert rc == 2 and "--nproc must be a positive integer" in err
    p = argparse.ArgumentParser()
    train_cmd.add_arguments(p)
    with pytest.raises(train_cmd.CLIError, match="leave --nproc out under torchrun"):
        train_cmd._resolve(p.parse_args(["--nproc", "3"]), ProcessEnv(rank=0, world=2, local_rank=0))
    assert not any((tmp_path / d).exists() for d in "abc")


def test_processes_get_the_same_flags():
    """What the launcher hands to each process parses back to the same settings."""
    p = argparse.ArgumentParser()
    train_cmd.add_arguments(p)
    args = p.parse_args(
        [
            "--method",
            "bat",
            "--r",
            "16",
            "--lr",
            "2e-05",
            "--no-progress",
            "--resume",
            "--gradient-checkpointing",
            "--targets",
            "q,v",
            "--out",
            "runs/x",
            "--nproc",
            "2",
        ]
    )
    args.targets = ["q_proj", "v_proj"]  # as a YAML --config gives it
    again = p.parse_args(train_cmd._argv(args))
    assert vars(again) == {**vars(args), "targets": "q_proj,v_proj"}
