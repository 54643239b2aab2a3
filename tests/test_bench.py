"""`flashbone bench` on the CPU with a tiny shape: it runs end to end and writes its table and JSON.

No timing assertions: only that every method ran, ratios are relative to the floor's own
row, and bad input gives a one-line error.
"""

import argparse
import json

import pytest

from flashbone.commands import bench
from flashbone.cli import main

TINY = [
    "--device",
    "cpu",
    "--layers",
    "1",
    "--hidden",
    "64",
    "--intermediate",
    "128",
    "--heads",
    "2",
    "--vocab",
    "64",
    "--batch",
    "1",
    "--seq",
    "16",
    "--r",
    "16",
    "--steps",
    "1",
    "--warmup",
    "0",
]


def test_bench_runs_every_kind_of_method_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    methods = "floor,bone,bat,bat-row@torch,peft-lora,peft-miss,peft-bat-bf16,full"
    assert main(["bench", *TINY, "--methods", methods, "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert list(rows) == methods.split(",")
    assert all("error" not in r and r["loss_finite"] for r in rows.values()), rows
    assert rows["floor"]["time_ratio"] == 1.0 and rows["floor"]["trainable"] == 0
    assert rows["bone"]["trainable"] == rows["peft-miss"]["trainable"] > 0
    assert rows["full"]["trainable"] > rows["bone"]["trainable"]
    assert data["env"]["torch"] and "bench" in data["env"]["command"]
    table = capsys.readouterr().out
    assert "x floor" in table and "peft-lora" in table


def test_bench_kernels_mode_checks_every_variant(tmp_path):
    out = tmp_path / "k.json"
    assert main(["bench", *TINY, "--kernels", "--variants", "bone,bat,bone-ab", "--json", str(out)]) == 0
    layer = json.loads(out.read_text())["layer"]
    assert set(layer) == {"frozen", "full", "bone", "bat", "bone-ab"}
    for m in ("bone", "bat", "bone-ab"):
        for row in layer[m]["rows"]:
            assert max(row["err_y"], row["err_dx"], row["err_dparams"]) < 1e-5, (m, row)
    assert layer["frozen"]["x_frozen"] == 1.0


def test_matched_lora_rank_for_llama2_7b_width():
    a = argparse.Namespace(lora_r=None, hidden=4096, heads=32, kv_heads=32, intermediate=11008, r=64)
    assert bench.matched_lora_r(a) == 35  # 2,733,... LoRA params/layer vs bone's 2,719,744


@pytest.mark.parametrize(
    "bad, words",
    [
        (["--methods", "floor,nope"], "unknown method 'nope'"),
        (["--hidden", "65"], "--hidden 65 must be a multiple of --heads"),
        (["--steps", "0"], "--steps must be positive"),
    ],
)
def test_bench_bad_input_is_one_line(capsys, bad, words):
    assert main(["bench", *TINY, *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
