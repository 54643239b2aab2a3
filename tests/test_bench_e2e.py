"""`flashbone bench --e2e` on the CPU, tiny shape, 2 steps: both loops train on the same rows.

No timing assertions: every method runs, the table and JSON are written, ratios point at
the Trainer counterpart, and the loops' mean losses agree (same model, rows and order).
"""

import json

from flashbone.cli import main

TINY = [
    "--e2e",
    "--device",
    "cpu",
    "--layers",
    "1",
    "--hidden",
    "32",
    "--intermediate",
    "64",
    "--heads",
    "4",
    "--kv-heads",
    "2",
    "--vocab",
    "64",
    "--r",
    "8",
    "--batch",
    "2",
    "--grad-accum",
    "2",
    "--min-len",
    "6",
    "--max-len",
    "20",
    "--steps",
    "1",
    "--warmup",
    "1",
]


def test_e2e_runs_both_loops_on_the_same_rows(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    methods = "bone,bone@plain,bone@packed,full,hf-miss,hf-full"
    assert main(["bench", *TINY, "--methods", methods, "--micro-batch-tokens", "64", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == methods.split(",")
    assert all("error" not in r and r["tokens_per_s"] > 0 for r in rows.values()), rows
    assert rows["bone"]["vs"] == "hf-miss" and rows["full"]["vs"] == "hf-full"
    assert rows["bone"]["trainable"] == rows["hf-miss"]["trainable"] > 0
    for m in ("bone", "bone@plain", "bone@packed"):  # fp32: the same two steps as PEFT's MiSS
        assert abs(rows[m]["mean_loss"] - rows["hf-miss"]["mean_loss"]) < 1e-4, (m, rows)
    assert abs(rows["full"]["mean_loss"] - rows["hf-full"]["mean_loss"]) < 1e-4
    assert data["env"]["torch"] and data["args"]["micro_batch_tokens"] == 64
    assert "hf-miss" in capsys.readouterr().out


def test_e2e_bad_input_is_one_line(capsys):
    assert main(["bench", *TINY, "--methods", "bone@fast"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown method 'bone@fast'" in err and len(err.splitlines()) == 1


def test_e2e_on_a_quantised_base(tmp_path, capsys):
    """--quantize 4bit: both loops train the same 4-bit base (ours as flashbone train --quantize
    prepares it, the Trainer's through peft.prepare_model_for_kbit_training) to the same losses;
    full fine-tuning is refused with one line."""
    import pytest

    pytest.importorskip("bitsandbytes")
    out = tmp_path / "q.json"
    argv = ["bench", *TINY, "--quantize", "4bit", "--gradient-checkpointing", "--json", str(out)]
    assert main([*argv, "--methods", "bone,hf-miss"]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert all("error" not in r for r in rows.values()), rows
    assert rows["bone"]["vs"] == "hf-miss" and rows["bone"]["trainable"] == rows["hf-miss"]["trainable"]
    assert abs(rows["bone"]["mean_loss"] - rows["hf-miss"]["mean_loss"]) < 1e-4, rows
    assert "4bit base" in capsys.readouterr().out
    assert main([*argv, "--methods", "bone,full"]) == 2
    err = capsys.readouterr().err
    assert "full fine-tuning cannot train a quantised base" in err and "Traceback" not in err
