"""The CLI's file-handling defects of issue 18, one test each: one error line and exit 2, nothing
written, hub names, templates, resume of a finished run, zero counts, GSM8K's answer format."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import TINY, flashbone, one_line_error, train, tree_digest, write_jsonl
from flashbone import cli, data


def _rows(n=8):
    return [{"query": f"What is {i} + 1?", "response": f"{i} + 1 = {i + 1}. The answer is: {i + 1}"} for i in range(n)]


def test_no_arguments_prints_help_and_fails(capsys):
    rc = cli.main([])
    out, err = capsys.readouterr()
    assert rc == 2 and "usage: flashbone" in err and "train" in err


@pytest.mark.parametrize(
    "module, argv, extra",
    [
        ("datasets", ["train"], "train"),
        ("peft", ["train", "--method", "lora", "--r", "8"], "peft"),
        ("matplotlib", ["plot"], "train"),
    ],
)
def test_missing_extra_names_it(module, argv, extra, tmp_path, capsys, monkeypatch):
    if argv[0] == "plot":
        rc, _, err = train(capsys, tmp_path / "run")
        assert rc == 0, err
        argv = argv + [str(tmp_path / "run"), "--out", str(tmp_path / "p.png")]
    else:
        argv = argv + [*TINY, "--out", str(tmp_path / "new")]
    before = tree_digest(tmp_path)
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if not installed
    rc, _, err = flashbone(capsys, *argv)
    one_line_error(rc, err, f'pip install "flashbone[{extra}]"', repr(module))
    assert tree_digest(tmp_path) == before  # no --out folder, no figure, no temporary file


def test_bad_data_files_are_one_line_and_leave_nothing(tmp_path, capsys):
    lines = [json.dumps(r) for r in _rows(4)]
    cases = {
        "latin1.jsonl": ("\n".join(lines[:1]) + "\n").encode()
        + '{"query": "Größe?", "response": "1"}\n'.encode("latin-1"),
        "broken.jsonl": ("\n".join(lines[:2] + ['{"query": "a", "response": ', lines[3]]) + "\n").encode(),
        "cut.jsonl": ("\n".join(lines) + "\n").encode()[:-9],
        "null.jsonl": ("\n".join(lines[:1] + ['{"query": "a", "response": null}']) + "\n").encode(),
        "blank.jsonl": ("\n".join(lines[:2] + ['{"query": "a", "response": "  "}']) + "\n").encode(),
    }
    words = {
        "latin1.jsonl": ["line 2", "UTF-8"],
        "broken.jsonl": ["line 3", "not valid JSON"],
        "cut.jsonl": ["line 4", "cut short"],
        "null.jsonl": ["row 2", "'response'", "null"],
        "blank.jsonl": ["row 3", "'response'", "empty"],
    }
    for name, raw in cases.items():
        (tmp_path / name).write_bytes(raw)
    before = tree_digest(tmp_path)
    for name in cases:
        rc, _, err = train(capsys, tmp_path / f"out-{name}", "--data", tmp_path / name)
        one_line_error(rc, err, name, *words[name])
    assert tree_digest(tmp_path) == before


def test_bad_config_values_are_one_line_and_no_progress_is_accepted(tmp_path, capsys):
    for body, words in [
        ({"lr": "fast"}, ["'lr'", "float"]),
        ({"method": {"name": "bone"}}, ["'method'", "one value"]),
        ({"precision": "fp8"}, ["'precision'", "bf16"]),
        ({"no-progress": "yes"}, ["true or false"]),
    ]:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(json.dumps(body))
        rc, _, err = flashbone(capsys, "train", "--config", cfg, "--out", tmp_path / "x")
        one_line_error(rc, err, *words)
    assert not (tmp_path / "x").exists()
    cfg.write_text("no-progress: true\nmax-steps: 1\nmax-samples: 4\nbatch-size: 4\neval-task: none\n")
    rc, _, err = flashbone(capsys, "train", "--config", cfg, "--out", tmp_path / "ok")
    assert rc == 0, err
    assert "train:" not in err  # no progress bar


def test_template_keeps_non_ascii_text():
    t = data.get_template("Größe, 長さ: {query}\\nAntwort:")
    assert t.prompt == "Größe, 長さ: {query}\nAntwort:"
    assert t.prompt_text("x") == "Größe, 長さ: x\nAntwort:"


def test_hub_names_with_a_slash_reach_the_hub(tmp_path, monkeypatch):
    import datasets

    calls, real = [], datasets.load_dataset

    def fake_load_dataset(name, subset=None, split=None, **kw):
        if name in ("json", "csv", "parquet"):  # a local file, read as before
            return real(name, subset, split=split, **kw)
        calls.append((name, subset, split))
        return datasets.Dataset.from_list([{"question": "1+1?", "answer": "#### 2"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)
    assert len(data.load_rows("meta-math/MetaMathQA")) == 1
    data.load_rows("openai/gsm8k", split="test", subset="main")
    assert calls == [("meta-math/MetaMathQA", None, "train"), ("openai/gsm8k", "main", "test")]
    Path("openai").mkdir()
    write_jsonl(Path("openai/gsm8k.jsonl"), [{"question": "q", "answer": "a"}])
    assert data.load_rows("openai/gsm8k.jsonl")[0]["question"] == "q"  # a local file wins
    assert len(calls) == 2
    with pytest.raises(data.DataError, match="no such file"):
        data.load_rows("./openai/missing.jsonl")

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(data.DataError, match="Hub cannot be reached"):
        data.load_rows("openai/gsm8k", subset="main")


def test_hub_dataset_offline_is_one_line(tmp_path, capsys):
    rc, _, err = flashbone(
        capsys,
        "eval",
        "--task",
        "gsm8k",
        "--data",
        "openai/gsm8k",
        "--data-subset",
        "main",
        "--out",
        tmp_path / "e.jsonl",
    )
    one_line_error(rc, err, "'openai/gsm8k'", "Hub cannot be reached")
    assert not (tmp_path / "e.jsonl").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", *TINY[:4], "--max-steps", "0"], ["--max-steps", "positive"]),
        (["train", *TINY[:4], "--max-samples", "0"], ["--max-samples", "positive"]),
        (["eval", "--max-samples", "0"], ["--max-samples", "positive"]),
        (["train", *TINY, "--lora-alpha", "32"], ["--lora-alpha", "bone"]),
    ],
)
def test_zero_counts_and_misplaced_flags_are_refused(argv, words, tmp_path, capsys):
    rc, _, err = flashbone(capsys, *argv, "--out", tmp_path / "x")
    one_line_error(rc, err, *words)
    assert not (tmp_path / "x").exists()


def test_max_length_that_cuts_most_rows_warns(tmp_path, capsys):
    rc, _, err = train(capsys, tmp_path / "run", "--max-length", "8")
    assert rc == 0, err
    assert "warning: 8 of 8 rows cut to --max-length 8" in err


def test_resume_of_a_finished_run_changes_nothing_and_can_extend_it(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "--max-steps",
        "3",
        "--save-every",
        "1",
        "--keep-checkpoints",
        "1",
        "--eval-task",
        "tiny-math",
        "--eval-samples",
        "4",
        "--max-new-tokens",
        "4",
    ]
    rc, _, err = train(capsys, out, *args)
    assert rc == 0, err
    before = tree_digest(out)
    rc, stdout, err = flashbone(capsys, "train", "--out", out, "--resume")
    assert rc == 0, err
    assert "is finished (step 3 of 3" in stdout and "--max-steps" in stdout
    assert tree_digest(out) == before
    rc, stdout, err = flashbone(capsys, "train", "--out", out, "--resume", "--max-steps", "5")
    assert rc == 0, err
    assert "resume     from step-00000003: step 3 of 5 done" in stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 5 and s["final_loss"] is not None
    assert s["wall_seconds"] >= s["train_seconds"]
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5]
    assert metrics[3]["lr"] > 0  # the extended schedule: not the finished run's final lr of 0


def test_wall_time_counts_the_resumed_part(tmp_path, capsys):
    out = tmp_path / "run"
    rc, stdout, err = train(capsys, out, "--max-steps", "4", "--save-every", "2", "--stop-after", "2")
    assert rc == 0, err
    rc, stdout, err = flashbone(capsys, "train", "--out", out, "--resume")
    assert rc == 0, err
    assert "resume     from step-00000002: step 2 of 4 done" in stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["wall_seconds"] >= s["train_seconds"] and s["final_loss"] is not None


def test_gsm8k_answer_format_and_printed_settings(tmp_path, capsys):
    from flashbone import scoring

    assert scoring.extract_number("3 + 4 = 7\n#### 7") == 7.0
    assert scoring.extract_number("#### 5\nThe answer is: 6") == 6.0  # the protocol's marker first
    rc, _, err = train(capsys, tmp_path / "run")
    assert rc == 0, err
    rc, _, err = flashbone(capsys, "merge", "--adapter", tmp_path / "run" / "adapter", "--out", tmp_path / "merged")
    assert rc == 0, err
    gens = {}
    for name, flags in (
        ("adapter", ["--adapter", tmp_path / "run" / "adapter"]),
        ("merged", ["--model", tmp_path / "merged"]),
    ):
        rc, stdout, err = flashbone(
            capsys, "eval", *flags, "--max-samples", "3", "--no-progress", "--out", tmp_path / f"{name}.jsonl"
        )
        assert rc == 0, err
        assert "generation greedy, max 80 new tokens, batch 100, template alpaca" in stdout, stdout
        gens[name] = [json.loads(x)["generation"] for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert "tiny base's architecture" in stdout
    assert gens["adapter"] == gens["merged"]


def test_readme_test_command_prints_its_count(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert True\n")
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(root / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_one.py"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 passed" in res.stdout, res.stdout + res.stderr
