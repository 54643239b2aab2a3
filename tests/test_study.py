"""`flashbone study`: a two-cell grid on the built-in tiny base, its report, and resume."""

import json

import pytest
from cli_helpers import flashbone

from flashbone.commands._study_plan import Cell, load_config


def _config(tmp_path, lrs="[2e-3]", extra=""):
    path = tmp_path / "study.yaml"
    path.write_text(f"""
out: {tmp_path / "study"}
train: {{max-samples: 8, max-steps: 2, batch-size: 4}}
seeds: [0]
eval: {{test: [tiny-math:test], samples: 2, max-new-tokens: 8, batch-size: 2}}
methods:
  - {{method: bone, r: 16, lr: {lrs}}}
{extra}""")
    return path


def test_two_cell_grid_reports_and_resumes(tmp_path, capsys):
    cfg = _config(tmp_path, lrs="[1e-3, 2e-3]")
    rc, out, err = flashbone(capsys, "study", cfg, "--no-progress")
    assert rc == 0, err + out
    assert "sweep: 2 cells, 0 already finished, 2 to run" in out
    study = tmp_path / "study"
    for lr in (1e-3, 2e-3):
        s = json.loads((study / "cells" / Cell("bone", 16, lr, 0).id / "summary.json").read_text())
        assert s["steps"] == 2 and s["trainable_params"] == 180224 and set(s["accuracy"]) == {"valid", "test"}
        assert s["loss_first100"] > 0 and s["tokens_per_s"] > 0
    res = json.loads((study / "results.json").read_text())
    # picked on the validation split (ties: the lower final loss), never on a test split
    best = max(res["lr_sweep"], key=lambda r: (r["accuracy"]["valid"][0], -r["loss_final"][0]))
    assert res["picked_lr"]["bone"] == best["lr"]
    assert len(res["main"]) == 1 and res["main"][0]["lr"] == res["picked_lr"]["bone"]
    assert "| bone | 16 | 180,224 |" in (study / "results.md").read_text()
    assert (study / "loss.png").stat().st_size > 1000
    # resume: finished cells are not rerun; an unfinished one (no summary.json) is
    (study / "cells" / Cell("bone", 16, 2e-3, 0).id / "summary.json").unlink()
    rc, out, err = flashbone(capsys, "study", cfg, "--no-progress")
    assert rc == 0, err
    assert "sweep: 2 cells, 1 already finished, 1 to run" in out


@pytest.mark.parametrize(
    "extra, message",
    [
        ("  - {method: bone, r: 8, lr: 1e-3}", "listed twice"),
        ("  - {method: nope, lr: 1e-3}", "needs method"),
        ("  - {method: lora, r: 4, lr: fast}", "lr must be a positive number"),
        ("bogus: 1", "unknown key"),
    ],
)
def test_bad_config_is_one_line(tmp_path, capsys, extra, message):
    rc, _, err = flashbone(capsys, "study", _config(tmp_path, extra=extra))
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "study").exists()


def test_rank_sweep_plan_uses_the_picked_lr(tmp_path):
    from flashbone.commands._study_plan import plan_ranks, plan_seeds

    cfg = load_config(str(_config(tmp_path, extra="rank_sweep:\n  - {method: bone, r: [8, 16, 32]}")))
    cfg.seeds = [0, 1]
    cells = plan_seeds(cfg, {"bone": 2e-3}) + plan_ranks(cfg, {"bone": 2e-3})
    assert {c.id for c in cells} == {
        "bone-r16-lr0.002-s1",
        "bone-r8-lr0.002-s0",
        "bone-r8-lr0.002-s1",
        "bone-r32-lr0.002-s0",
        "bone-r32-lr0.002-s1",
    }
    assert Cell.from_id("bat-row-r32-lr1e-05-s2") == Cell("bat-row", 32, 1e-5, 2)
