"""`flashbone train --val-split / --val-data / --val-every`: validation loss during training, in
metrics.jsonl, the progress bar, TensorBoard and `flashbone plot`."""

import json

import pytest
import torch

from cli_helpers import flashbone, one_line_error, train, write_jsonl


def _metrics(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


def _loss_by_hand(model, rows, pad_id) -> float:
    """The mean response-token loss of ``rows``, one row at a time (no batching, no padding)."""
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ids, n_prompt in zip(rows["input_ids"], rows["n_prompt"]):
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, :-1]
            target = x[0, 1:].clone()
            target[: n_prompt - 1] = -100
            total += float(torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum"))
            count += int((target != -100).sum())
    return total / count


@pytest.mark.parametrize("packing", [False, True])  # True: padding-free rows (varlen attention) on this base
def test_val_split_loss_is_the_held_out_rows_loss(tmp_path, capsys, packing):
    from flashbone import data, load_adapter, validation
    from flashbone.loading import load_model, load_tokenizer

    out = tmp_path / "run"
    rc, stdout, err = train(
        capsys, out, "--val-split", "0.25", "--val-every", "1", "--progress", "--packing" if packing else "--no-packing"
    )
    assert rc == 0, err
    assert "validation 2 rows (--val-split 0.25 of --data), loss after every 1 steps" in stdout
    assert "val_loss=" in err  # the progress bar
    recs = _metrics(out)
    assert [r["step"] for r in recs] == [1, 2] and all("val_loss" in r for r in recs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_loss"] == pytest.approx(recs[-1]["val_loss"], abs=1e-6)
    assert summary["train_rows"] == 6  # 8 rows, 2 held out
    # the last validation loss is the saved model's loss on exactly the held-out rows
    tok = load_tokenizer(None)
    rows, _ = data.tokenize_rows(
        data.load_rows("tiny-math", max_samples=8), tok, data.get_template("alpaca"), "query", "response", 512
    )
    kept, held = validation.split_rows(rows, 0.25, seed=0)
    assert len(held) == 2 and len(kept) == 6
    assert not {tuple(x) for x in held["input_ids"]} & {tuple(x) for x in kept["input_ids"]}
    model = load_adapter(load_model(None), out / "adapter")
    assert recs[-1]["val_loss"] == pytest.approx(_loss_by_hand(model, held, tok.pad_token_id), rel=1e-4)


def test_val_data_resume_and_reports(tmp_path, capsys):
    val = write_jsonl(
        tmp_path / "val.jsonl", [{"query": f"What is {i} + {i}?", "response": str(2 * i)} for i in range(5)]
    )
    whole = tmp_path / "whole"
    rc, _, err = train(capsys, whole, "--val-data", val, "--val-every", "1")
    assert rc == 0, err
    parts = tmp_path / "parts"
    rc, _, err = train(capsys, parts, "--val-data", val, "--val-every", "1", "--save-every", "1", "--stop-after", "1")
    assert rc == 0, err
    rc, _, err = flashbone(capsys, "train", "--out", parts, "--resume", "--no-progress")
    assert rc == 0, err
    a, b = _metrics(whole), _metrics(parts)
    assert [r["step"] for r in b] == [1, 2]
    for x, y in zip(a, b):  # the resumed run validates the same rows at the same steps
        assert y["val_loss"] == pytest.approx(x["val_loss"], rel=1e-5)
    tb = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = tb.EventAccumulator(str(whole / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/loss")] == [1, 2]


def test_plot_draws_the_validation_curve(tmp_path, capsys, monkeypatch):
    from matplotlib.axes import Axes

    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(
        run / "metrics.jsonl",
        [
            {"step": s, "loss": 3.0 - 0.1 * s, **({"val_loss": 3.1 - 0.1 * s} if s % 5 == 0 else {})}
            for s in range(1, 21)
        ],
    )
    drawn = []
    real = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: drawn.append((a, k)) or real(self, *a, **k))
    rc, _, err = flashbone(capsys, "plot", run, "--out", tmp_path / "loss.png")
    assert rc == 0, err
    val = [(a, k) for a, k in drawn if k.get("label", "").endswith(", validation")]
    assert len(val) == 1 and list(val[0][0][0]) == [5, 10, 15, 20] and val[0][1]["linestyle"] == "--"


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--val-split", "0.1", "--val-data", "x.jsonl"], ["--val-split", "--val-data", "one of them"]),
        (["--val-every", "2"], ["--val-every", "--val-split"]),
        (["--val-split", "1.5"], ["--val-split", "fraction"]),
        (["--val-split", "8"], ["--val-split 8", "at least one row"]),
        (["--val-every", "0", "--val-split", "0.5"], ["--val-every", "positive"]),
    ],
)
def test_bad_validation_flags(tmp_path, capsys, extra, words):
    rc, _, err = train(capsys, tmp_path / "run", *extra)
    one_line_error(rc, err, *words)
    assert not (tmp_path / "run").exists()


def test_classification_refuses_val_flags(tmp_path, capsys):
    rc, _, err = flashbone(
        capsys,
        "train",
        "--task",
        "classification",
        "--model",
        "m",
        "--data",
        "glue/sst2",
        "--val-split",
        "0.1",
        "--out",
        tmp_path / "c",
    )
    one_line_error(rc, err, "--val-split", "classification")
