"""`flashbone eval` (generation, extraction, per-example JSONL) and `flashbone plot`."""

import json

from cli_helpers import flashbone, train, write_jsonl


def test_eval_gsm8k_and_math_files(tmp_path, capsys):
    rc, _, err = train(capsys, tmp_path / "run")
    assert rc == 0, err
    gsm = write_jsonl(
        tmp_path / "gsm.jsonl",
        [
            {
                "question": "Tom has 3 apples and buys 4 more. How many apples does Tom have?",
                "answer": "3 + 4 = <<3+4=7>>7\n#### 7",
            },
            {"question": "Mia has 1,200 stamps and gives 200 away. How many are left?", "answer": "#### 1,000"},
        ],
    )
    out = tmp_path / "res.jsonl"
    rc, stdout, err = flashbone(
        capsys,
        "eval",
        "--adapter",
        tmp_path / "run" / "adapter",
        "--data",
        gsm,
        "--task",
        "gsm8k",
        "--max-new-tokens",
        "40",
        "--out",
        out,
        "--no-progress",
    )
    assert rc == 0, err
    assert "gsm8k accuracy:" in stdout
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["gold"] for r in recs] == [7.0, 1000.0]
    assert all(set(r) == {"prompt", "generation", "extracted", "gold", "correct"} for r in recs)
    assert recs[0]["prompt"].endswith("### Response:") and "Tom has 3 apples" in recs[0]["prompt"]
    math = write_jsonl(
        tmp_path / "math.jsonl", [{"problem": "What is $1/2 + 0$?", "solution": "It is $\\boxed{\\frac12}$."}]
    )
    rc, stdout, err = flashbone(
        capsys,
        "eval",
        "--data",
        math,
        "--task",
        "math",
        "--max-new-tokens",
        "8",
        "--out",
        tmp_path / "m.jsonl",
        "--no-progress",
    )
    assert rc == 0, err
    assert json.loads((tmp_path / "m.jsonl").read_text())["gold"] == "\\frac12"


def test_eval_default_is_tiny_math_heldout(tmp_path, capsys):
    rc, stdout, err = flashbone(capsys, "eval", "--max-samples", "5", "--out", tmp_path / "e.jsonl", "--no-progress")
    assert rc == 0, err
    assert "tiny-math accuracy: 0.00% (0/5)" in stdout  # the base has never seen the instruction format
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 5


def test_plot_several_runs(tmp_path, capsys):
    for m in ("bone", "lora"):
        rc, _, err = train(capsys, tmp_path / m, "--method", m, "--r", "16", "--max-steps", "3")
        assert rc == 0, err
    rc, stdout, err = flashbone(
        capsys, "plot", tmp_path / "bone", tmp_path / "lora", "--out", tmp_path / "p.png", "--inset-steps", "1"
    )
    assert rc == 0, err
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    from flashbone.plotting import run_label

    assert run_label(tmp_path / "bone") == "bone r=16 (180.2K trainable)"
    assert run_label(tmp_path / "lora").startswith("lora r=16 (")


def test_eval_merged_and_unmerged_generate_the_same(tmp_path, capsys):
    rc, _, err = train(capsys, tmp_path / "run", "--method", "bat", "--lr", "1e-2")
    assert rc == 0, err
    gens = {}
    for flag in ("--merge", "--no-merge"):
        out = tmp_path / f"e{flag}.jsonl"
        rc, _, err = flashbone(
            capsys,
            "eval",
            "--adapter",
            tmp_path / "run" / "adapter",
            flag,
            "--max-samples",
            "4",
            "--max-new-tokens",
            "24",
            "--out",
            out,
            "--no-progress",
        )
        assert rc == 0, err
        gens[flag] = [json.loads(x)["generation"] for x in out.read_text().splitlines()]
    assert gens["--merge"] == gens["--no-merge"] and len(gens["--merge"]) == 4
