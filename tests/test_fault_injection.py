"""Faults in the middle of writing: kill -9 at several points of a checkpoint save, an adapter
write and a merged-model write (a subprocess SIGKILLs itself there, see fault_driver.py); a full
disk and a read-only target (a writer raising ENOSPC / EROFS); a data file cut mid-row. After
each: the user's files are byte-identical, and the newest complete checkpoint resumes to exactly
the uninterrupted run's adapter."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_helpers import flashbone, one_line_error, tree_digest, write_jsonl
from flashbone import outputs
from flashbone.training import latest_checkpoint

DRIVER = Path(__file__).with_name("fault_driver.py")
# 4 steps of 4 rows, a checkpoint after every step (the last 2 kept)
RUN = [
    "--max-samples",
    "16",
    "--batch-size",
    "4",
    "--max-steps",
    "4",
    "--save-every",
    "1",
    "--eval-task",
    "none",
    "--no-progress",
    "--method",
    "bat",
    "--r",
    "16",
]


def _user_files(root: Path) -> Path:
    root.mkdir()
    (root / "notes.txt").write_text("my notes\n")
    write_jsonl(
        root / "data.jsonl", [{"query": f"What is {i} + 2?", "response": f"The answer is: {i + 2}"} for i in range(16)]
    )
    return root


def _with_fault(spec: dict, *argv) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    )
    return subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(spec), *map(str, argv)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _adapter(run: Path) -> dict:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run's adapter, on the same data and settings."""
    root = tmp_path_factory.mktemp("ref")
    user = _user_files(root / "user")
    rc = __import__("flashbone.cli", fromlist=["main"]).main(
        ["train", *RUN, "--data", str(user / "data.jsonl"), "--out", str(root / "run")]
    )
    assert rc == 0
    return _adapter(root / "run")


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# (writer, which call, how it dies): a kill in the middle of checkpoint 3's tensors, of its
# optimizer state, just after its files were written but before its rename, and mid-adapter
KILLS = {
    "checkpoint-tensors": {"target": "flashbone.checkpoints:save_file", "call": 3, "action": "kill"},
    "checkpoint-optimizer": {"target": "torch:save", "call": 3, "action": "kill"},
    "checkpoint-rename": {"target": "os:rename", "call": 3, "action": "before", "match": ".tmp-step-"},
    "adapter": {"target": "flashbone.adapter_files:save_file", "call": 1, "action": "kill"},
}


@pytest.mark.parametrize("point", list(KILLS))
def test_kill_during_training_writes_then_resume_exactly(point, reference, tmp_path, capsys):
    user = _user_files(tmp_path / "user")
    old = tmp_path / "run"  # a finished run that the new one is to replace (--overwrite)
    rc, _, err = flashbone(capsys, "train", *RUN, "--max-steps", "1", "--data", user / "data.jsonl", "--out", old)
    assert rc == 0, err
    before = tree_digest(tmp_path)
    res = _with_fault(KILLS[point], "train", *RUN, "--data", user / "data.jsonl", "--out", old, "--overwrite")
    assert res.returncode == -signal.SIGKILL, res.stderr
    partial = outputs.partial_of(old)
    assert {k: v for k, v in tree_digest(tmp_path).items() if not k.startswith(partial.name)} == before
    newest = latest_checkpoint(partial / "checkpoints")
    assert newest is not None
    expected = {"adapter": "step-00000004"}.get(point, "step-00000002")
    assert newest.name == expected
    rc, stdout, err = flashbone(capsys, "train", "--out", old, "--resume")
    assert rc == 0, err
    assert f"resume     from {expected}" in stdout
    _same(_adapter(old), reference)
    assert tree_digest(user) == {k.removeprefix("user/"): v for k, v in before.items() if k.startswith("user/")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "user"]


def test_kill_while_swapping_a_run_into_place_keeps_the_old_one(tmp_path, capsys):
    user = _user_files(tmp_path / "user")
    old = tmp_path / "run"
    rc, _, err = flashbone(capsys, "train", *RUN, "--max-steps", "1", "--data", user / "data.jsonl", "--out", old)
    assert rc == 0, err
    before = tree_digest(tmp_path)
    spec = {"target": "os:rename", "call": 1, "action": "after", "match": ".flashbone-old-"}
    res = _with_fault(spec, "train", *RUN, "--data", user / "data.jsonl", "--out", old, "--overwrite")
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not old.exists()  # killed between the two renames: the old run is set aside
    rc, _, err = flashbone(capsys, "train", *RUN, "--max-steps", "1", "--data", user / "data.jsonl", "--out", old)
    one_line_error(rc, err, "interrupted run")  # the old run is back in place; the new one waits for --resume
    assert {k: v for k, v in tree_digest(tmp_path).items() if ".flashbone-partial" not in k} == before


@pytest.mark.parametrize("call", [1, 2])
def test_kill_during_a_merge_leaves_the_previous_merge(call, tmp_path, capsys):
    user = _user_files(tmp_path / "user")
    rc, _, err = flashbone(
        capsys, "train", *RUN, "--max-steps", "1", "--data", user / "data.jsonl", "--out", tmp_path / "run"
    )
    assert rc == 0, err
    rc, _, err = flashbone(capsys, "merge", "--adapter", tmp_path / "run" / "adapter", "--out", tmp_path / "m")
    assert rc == 0, err
    before = tree_digest(tmp_path)
    # call 1: the weights file half-written; call 2: everything written, killed before the swap's first
    # rename (old folder aside; a kill between the two renames is repaired by the next call, tested above)
    spec = (
        {"target": "transformers.modeling_utils:safe_save_file", "call": 1, "action": "kill"}
        if call == 1
        else {"target": "os:rename", "call": 1, "action": "before", "match": ".m.flashbone-old"}
    )
    res = _with_fault(spec, "merge", "--adapter", tmp_path / "run" / "adapter", "--out", tmp_path / "m", "--overwrite")
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert {k: v for k, v in tree_digest(tmp_path).items() if ".m.flashbone-" not in k} == before
    rc, _, err = flashbone(
        capsys, "merge", "--adapter", tmp_path / "run" / "adapter", "--out", tmp_path / "m", "--overwrite"
    )
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "run", "user"]


@pytest.mark.parametrize("fault", ["enospc", "erofs"])
def test_full_disk_or_read_only_target_mid_run(fault, reference, tmp_path, capsys, monkeypatch):
    import fault_driver

    user = _user_files(tmp_path / "user")
    old = tmp_path / "run"
    rc, _, err = flashbone(capsys, "train", *RUN, "--max-steps", "1", "--data", user / "data.jsonl", "--out", old)
    assert rc == 0, err
    before = tree_digest(tmp_path)
    # the adapter cannot be written: nothing of the new run replaces the old one
    fault_driver.install(
        {"target": "flashbone.adapter_files:save_file", "call": 1, "action": fault}, monkeypatch.setattr
    )
    rc, _, err = flashbone(capsys, "train", *RUN, "--data", user / "data.jsonl", "--out", old, "--overwrite")
    one_line_error(rc, err, "cannot write", os.strerror(28 if fault == "enospc" else 30))
    monkeypatch.undo()
    assert {k: v for k, v in tree_digest(tmp_path).items() if ".flashbone-partial" not in k} == before
    # the partial run kept its checkpoints: resuming completes it exactly
    rc, _, err = flashbone(capsys, "train", "--out", old, "--resume")
    assert rc == 0, err
    _same(_adapter(old), reference)


def test_full_disk_before_the_first_checkpoint_leaves_nothing(tmp_path, capsys, monkeypatch):
    import fault_driver

    user = _user_files(tmp_path / "user")
    before = tree_digest(tmp_path)
    fault_driver.install(
        {"target": "flashbone.checkpoints:save_file", "call": 1, "action": "enospc"}, monkeypatch.setattr
    )
    rc, _, err = flashbone(capsys, "train", *RUN, "--data", user / "data.jsonl", "--out", tmp_path / "new")
    one_line_error(rc, err, "No space left on device")
    monkeypatch.undo()
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("cut", [0.3, 0.5, 0.97])
def test_data_file_cut_mid_row(cut, tmp_path, capsys):
    user = _user_files(tmp_path / "user")
    raw = (user / "data.jsonl").read_bytes()
    (user / "data.jsonl").write_bytes(raw[: int(len(raw) * cut)])
    before = tree_digest(tmp_path)
    rc, _, err = flashbone(capsys, "train", *RUN, "--data", user / "data.jsonl", "--out", tmp_path / "run")
    one_line_error(rc, err, "data.jsonl", "not valid JSON", "cut short")
    assert tree_digest(tmp_path) == before
