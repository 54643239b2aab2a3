"""Output locations (flashbone.outputs): --overwrite replaces only flashbone's own folders, never
the current folder, a parent of an input, a home folder or a file; nothing is half-written."""

from pathlib import Path

import pytest

from cli_helpers import TINY, flashbone, one_line_error, train, tree_digest, write_jsonl
from flashbone import outputs

UNWRITABLE = Path("/sys/flashbone-test/out")  # read-only for every user, root included


def _user_folder(root: Path) -> Path:
    """A folder as a user keeps it: notes, a project folder, training data."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("my notes\n")
    (root / "project").mkdir()
    (root / "project" / "main.py").write_text("print('mine')\n")
    write_jsonl(root / "mine_train.jsonl", [{"query": f"What is {i} + 1?", "response": str(i + 1)} for i in range(8)])
    return root


def test_train_out_dot_overwrite_is_refused_and_touches_nothing(tmp_path, capsys, monkeypatch):
    home = _user_folder(tmp_path / "work")
    monkeypatch.chdir(home)
    before = tree_digest(home)
    rc, _, err = flashbone(capsys, "train", *TINY, "--data", "mine_train.jsonl", "--out", ".", "--overwrite")
    one_line_error(rc, err, "--out .", "current folder")
    rc, _, err = flashbone(capsys, "train", *TINY, "--data", "mine_train.jsonl", "--out", "..", "--overwrite")
    one_line_error(rc, err, "holds the current folder")
    assert tree_digest(home) == before


def test_merge_out_dot_overwrite_is_refused(tmp_path, capsys, monkeypatch):
    rc, _, err = train(capsys, tmp_path / "run")
    assert rc == 0, err
    work = _user_folder(tmp_path / "work")
    monkeypatch.chdir(work)
    before = tree_digest(work)
    rc, _, err = flashbone(capsys, "merge", "--adapter", tmp_path / "run" / "adapter", "--out", ".", "--overwrite")
    one_line_error(rc, err, "current folder")
    assert tree_digest(work) == before


def test_overwrite_never_replaces_a_file_a_user_folder_or_an_inputs_parent(tmp_path, capsys):
    work = _user_folder(tmp_path / "work")
    before = tree_digest(tmp_path)
    rc, _, err = train(capsys, work / "notes.txt", "--overwrite")
    one_line_error(rc, err, "notes.txt", "is a file")
    rc, _, err = train(capsys, work / "project", "--overwrite")
    one_line_error(rc, err, "project", "did not write", ".flashbone-run")
    (work / "data").mkdir()
    (work / "data" / "d.jsonl").write_text((work / "mine_train.jsonl").read_text())
    outputs.mark(work / "data", "train")  # even a folder marked as flashbone's is kept when it holds the data
    before = tree_digest(tmp_path)
    rc, _, err = train(capsys, work / "data", "--data", work / "data" / "d.jsonl", "--overwrite")
    one_line_error(rc, err, "holds the input --data")
    rc, _, err = flashbone(capsys, "merge", "--adapter", work / "project", "--out", work, "--overwrite")
    one_line_error(rc, err, "holds the input --adapter")
    assert tree_digest(tmp_path) == before


def test_home_and_root_are_protected(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    outputs.mark(tmp_path / "home", "train")
    assert outputs.protected_reason(tmp_path / "home", {}) == "is a home folder"
    assert outputs.protected_reason(tmp_path, {}) == "holds a home folder"
    assert outputs.protected_reason(Path("/"), {}) == "is the filesystem root"
    with pytest.raises(outputs.OutputError, match="home folder"):
        outputs.plan_folder(tmp_path / "home", overwrite=True, inputs={})


def test_overwrite_replaces_a_finished_run_and_a_failed_one_keeps_it(tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = train(capsys, out)
    assert rc == 0, err
    assert (out / outputs.MARKER).is_file()
    rc, _, err = train(capsys, out)
    one_line_error(rc, err, "not empty", "--overwrite")
    before = tree_digest(tmp_path)
    rc, _, err = train(capsys, out, "--overwrite", "--targets", "nope_proj")  # fails after the folder checks
    one_line_error(rc, err, "nope_proj")
    assert tree_digest(tmp_path) == before  # the old run intact, no temporary folder left
    rc, _, err = train(capsys, out, "--overwrite", "--method", "bat", "--r", "16")
    assert rc == 0, err
    assert '"bat"' in (out / "summary.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_failed_runs_leave_no_out_folder(tmp_path, capsys):
    rc, _, err = train(capsys, tmp_path / "a", "--targets", "nope_proj")
    one_line_error(rc, err, "nope_proj")
    (tmp_path / "bad.jsonl").write_text('{"query": "a", "response": null}\n')
    rc, _, err = train(capsys, tmp_path / "b", "--data", tmp_path / "bad.jsonl")
    one_line_error(rc, err)
    (tmp_path / "empty_ok").mkdir()  # an empty folder the user made stays as it was
    rc, _, err = train(capsys, tmp_path / "empty_ok", "--targets", "nope_proj")
    one_line_error(rc, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "empty_ok"]
    assert not any((tmp_path / "empty_ok").iterdir())


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a read-only /sys")
def test_unwritable_out_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    rc, _, err = train(capsys, UNWRITABLE)
    one_line_error(rc, err, str(UNWRITABLE), "cannot write")
    rc, _, err = train(capsys, tmp_path / "run")
    assert rc == 0, err
    rc, _, err = flashbone(capsys, "merge", "--adapter", tmp_path / "run" / "adapter", "--out", UNWRITABLE)
    one_line_error(rc, err, "cannot write")
    rc, _, err = flashbone(capsys, "plot", tmp_path / "run", "--out", UNWRITABLE.with_suffix(".png"))
    one_line_error(rc, err, "cannot write")
    from flashbone.commands import evaluate

    def no_generation(*a, **k):
        raise AssertionError("generated before checking --out")

    monkeypatch.setattr(evaluate, "eval_rows", no_generation)
    rc, _, err = flashbone(capsys, "eval", "--max-samples", "2", "--out", UNWRITABLE.with_suffix(".jsonl"))
    one_line_error(rc, err, "cannot write")


def test_eval_out_folder_and_input_are_refused(tmp_path, capsys):
    (tmp_path / "results").mkdir()
    rc, _, err = flashbone(capsys, "eval", "--max-samples", "2", "--out", tmp_path / "results")
    one_line_error(rc, err, "is a folder", "results.jsonl")
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": "1+1?", "answer": "#### 2"}])
    rc, _, err = flashbone(capsys, "eval", "--task", "gsm8k", "--data", data, "--out", data)
    one_line_error(rc, err, "is the input --data")
    assert "#### 2" in data.read_text()


def test_write_folder_swaps_only_when_complete(tmp_path):
    final = tmp_path / "m"
    folder = outputs.plan_folder(final, overwrite=False, inputs={})
    outputs.write_folder(folder, "merge", lambda d: (d / "a.txt").write_text("one"))
    before = tree_digest(tmp_path)

    def broken(d):
        (d / "a.txt").write_text("two, half")
        raise OSError(28, "No space left on device")

    folder = outputs.plan_folder(final, overwrite=True, inputs={})
    with pytest.raises(OSError):
        outputs.write_folder(folder, "merge", broken)
    assert tree_digest(tmp_path) == before
    outputs.write_folder(folder, "merge", lambda d: (d / "b.txt").write_text("new"))
    assert sorted(p.name for p in final.iterdir()) == [outputs.MARKER, "b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_saved_files_follow_the_umask(tmp_path, capsys):
    import os
    import stat

    old = os.umask(0o022)
    try:
        rc, _, err = train(capsys, tmp_path / "run", "--save-every", "1")
        assert rc == 0, err
        rc, _, err = flashbone(capsys, "merge", "--adapter", tmp_path / "run" / "adapter", "--out", tmp_path / "m")
        assert rc == 0, err
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "adapter_model.safetensors" for p in files)
    assert any(p.name == "model.safetensors" for p in files)
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
