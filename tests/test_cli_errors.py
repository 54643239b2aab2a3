"""Bad input: one clear line on stderr, exit status 2, no traceback, nothing half-done."""

import json

import pytest

from cli_helpers import TINY, flashbone, train, write_jsonl


def _one_line_error(rc, err, *words):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("flashbone ")
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_bad_training_data(tmp_path, capsys):
    rc, _, err = train(capsys, tmp_path / "a", "--data", tmp_path / "missing.jsonl")
    _one_line_error(rc, err, "missing.jsonl", "no such file")
    (tmp_path / "empty.jsonl").write_text("\n")
    rc, _, err = train(capsys, tmp_path / "b", "--data", tmp_path / "empty.jsonl")
    _one_line_error(rc, err, "empty")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "a", "label": 1}])
    rc, _, err = train(capsys, tmp_path / "c", "--data", odd)
    _one_line_error(rc, err, "--query-field", "text")
    good = write_jsonl(tmp_path / "good.jsonl", [{"query": "a", "response": "b"}])
    rc, _, err = train(capsys, tmp_path / "d", "--data", good, "--response-field", "answer")
    _one_line_error(rc, err, "'answer'", "--response-field")
    (tmp_path / "broken.jsonl").write_text('{"query": "a", "response": \n')
    rc, _, err = train(capsys, tmp_path / "e", "--data", tmp_path / "broken.jsonl")
    _one_line_error(rc, err, "broken.jsonl", "line 1 is not valid JSON")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--method", "qlora"], ["qlora", "bone, bone-mini"]),
        (["--r", "0"], ["--r", "positive"]),
        (["--r", "-4", "--method", "lora"], ["--r", "positive"]),
        (["--method", "bat", "--r", "7"], ["7"]),
        (["--method", "lora", "--r", "4096"], ["--r 4096"]),
        (["--targets", "nope_proj"], ["nope_proj", "q_proj"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--template", "no placeholder"], ["{query}"]),
        (["--max-memory", "0"], ["--max-memory", "positive"]),
        (["--max-memory", "8", "--nproc", "2"], ["--max-memory", "one process"]),
        (["--liger", "on", "--device", "cpu"], ["--liger on", "CUDA"]),
        (["--cuda-graphs", "--device", "cpu"], ["--cuda-graphs", "CUDA device"]),
    ],
)
def test_bad_method_settings(args, words, tmp_path, capsys):
    rc, _, err = train(capsys, tmp_path / "x", *args)
    _one_line_error(rc, err, *words)


def test_unknown_model(tmp_path, capsys):
    rc, _, err = train(capsys, tmp_path / "a", "--model", tmp_path / "no_such_model")
    _one_line_error(rc, err, "no_such_model", "no such folder")
    (tmp_path / "not_a_model").mkdir()
    rc, _, err = train(capsys, tmp_path / "b", "--model", tmp_path / "not_a_model")
    _one_line_error(rc, err, "config.json")
    rc, _, err = flashbone(capsys, "eval", "--model", "./nowhere/model", "--max-samples", "1")
    _one_line_error(rc, err, "nowhere")


def test_corrupt_or_wrong_adapter(tmp_path, capsys):
    rc, _, err = train(capsys, tmp_path / "run")
    assert rc == 0, err
    adapter = tmp_path / "run" / "adapter"
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00garbage")
    rc, _, err = flashbone(capsys, "eval", "--adapter", adapter, "--max-samples", "1")
    _one_line_error(rc, err, "adapter_model.safetensors", "corrupt")
    rc, _, err = flashbone(capsys, "merge", "--base", "flashbone-tiny", "--adapter", adapter, "--out", tmp_path / "m")
    _one_line_error(rc, err, "corrupt")
    assert not (tmp_path / "m").exists()
    (adapter / "adapter_config.json").write_text("{broken")
    rc, _, err = flashbone(capsys, "merge", "--adapter", adapter, "--out", tmp_path / "m")
    _one_line_error(rc, err, "adapter_config.json")
    rc, _, err = flashbone(capsys, "eval", "--adapter", tmp_path / "missing_adapter")
    _one_line_error(rc, err, "missing_adapter")
    rc, _, err = flashbone(capsys, "merge", "--adapter", tmp_path / "run", "--out", tmp_path / "m")
    _one_line_error(rc, err, "adapter_config.json")


def test_other_bad_inputs(tmp_path, capsys):
    rc, _, err = flashbone(capsys, "eval", "--task", "gsm8k")
    _one_line_error(rc, err, "--data")
    noref = write_jsonl(tmp_path / "noref.jsonl", [{"question": "1+1?"}])
    rc, _, err = flashbone(capsys, "eval", "--task", "gsm8k", "--data", noref, "--max-new-tokens", "2")
    _one_line_error(rc, err, "--answer-field")
    rc, _, err = flashbone(capsys, "plot", tmp_path / "not_a_run", "--out", tmp_path / "p.png")
    _one_line_error(rc, err, "metrics.jsonl")
    rc, _, err = flashbone(capsys, "train", "--resume", "--out", tmp_path / "fresh", *TINY[:-1])
    _one_line_error(rc, err, "--resume")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"learning-rate": 1}))
    rc, _, err = flashbone(capsys, "train", "--config", cfg)
    _one_line_error(rc, err, "learning-rate", "known keys")


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["train", "--adapter", "some/dir"], "--adapter"),  # was read as --adapter-r: "invalid int"
        (["train", "--adapter", "16"], "--adapter"),  # was silently r = 16
        (["train", "--resum"], "--resum"),
        (["eval", "--adapt", "x"], "--adapt"),
    ],
)
def test_flags_are_never_abbreviated(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        flashbone(capsys, *argv, "--out", tmp_path / "never")
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"unrecognized arguments: {flag}" in err
    assert not (tmp_path / "never").exists()
