"""Sequence classification: a tiny RoBERTa on generated sentence pairs, trained by the CLI,
saved in PEFT's format, loaded by PEFT with equal logits, merged; metrics by hand."""

from __future__ import annotations

import json
import random
import shutil

import datasets
import pytest
import torch
from cli_helpers import flashbone, write_jsonl
from safetensors.torch import load_file

from flashbone import classification as cls
from flashbone.loading import builtin_model_path, load_tokenizer

GOOD, BAD = ["good", "nice", "happy"], ["bad", "sad", "ugly"]
ANIMALS = ["cat", "dog", "bird", "fish"]


def pair_rows(n: int, seed: int) -> list[dict]:
    """(sentence1, sentence2, label): label 1 when the second sentence says something good."""
    rng = random.Random(seed)
    return [
        {
            "sentence1": f"the {rng.choice(ANIMALS)} sat",
            "sentence2": f"it was {rng.choice(GOOD if i % 2 else BAD)}",
            "label": i % 2,
        }
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory):
    """A RoBERTa-shaped classifier folder with the built-in byte-level tokenizer (no downloads)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    folder = tmp_path_factory.mktemp("roberta")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(builtin_model_path() / f, folder / f)
    torch.manual_seed(0)
    # initializer_range 0.2: at the usual 0.02 a random 2-layer body passes almost nothing of the
    # words to the <s> token the head reads (its state varies by ~1e-3 between rows)
    cfg = RobertaConfig(
        vocab_size=len(load_tokenizer(None)),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=80,
        type_vocab_size=1,
        initializer_range=0.2,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=0,
        num_labels=2,
    )
    RobertaForSequenceClassification(cfg).save_pretrained(folder)
    return folder


def test_metrics_against_hand_computed_values():
    # tp=3 fp=1 fn=1 tn=1: accuracy 4/6, F1 = 2*.75*.75/1.5 = .75, MCC = (3*1-1*1)/sqrt(4*4*2*2) = .25
    m = cls.metrics([1, 0, 1, 1, 0, 1], [1, 0, 0, 1, 1, 1], num_labels=2)
    assert m.accuracy == pytest.approx(4 / 6) and m.f1 == pytest.approx(0.75) and m.mcc == pytest.approx(0.25)
    # 3 classes: per-class F1 = 1 (class 0), 2/3 (class 1: tp 1 fp 0 fn 1), 2/3 (class 2: tp 1 fp 1 fn 0)
    m3 = cls.metrics([0, 1, 1, 2], [0, 1, 2, 2], num_labels=3)
    assert m3.accuracy == pytest.approx(0.75) and m3.f1 == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert m.lines().splitlines() == ["accuracy: 0.6667", "f1: 0.7500", "mcc: 0.2500"]


def test_glue_names_and_fields():
    s = cls.resolve_source("glue/mnli")
    assert (s.data, s.subset, s.train_split, s.dev_split) == ("nyu-mll/glue", "mnli", "train", "validation_matched")
    assert cls.resolve_source("GLUE/sst2").glue.metric == "accuracy"
    assert cls.resolve_source("glue/cola").glue.metric == "mcc"
    with pytest.raises(cls.DataError, match="unknown GLUE task"):
        cls.resolve_source("glue/squad")
    f = cls.detect_fields(["idx", "premise", "hypothesis", "label"], None, None, None)
    assert (f.text, f.pair, f.label) == ("premise", "hypothesis", "label")
    f = cls.detect_fields(["sentence", "label", "idx"], None, None, None, cls.GLUE_TASKS["sst2"])
    assert (f.text, f.pair) == ("sentence", None)
    with pytest.raises(cls.DataError, match="--text-field"):
        cls.detect_fields(["a", "b"], None, None, None)
    with pytest.raises(cls.DataError, match="no field 'y'"):
        cls.detect_fields(["sentence", "label"], None, None, "y")


def test_train_save_load_in_peft_and_merge(tmp_path, capsys, tiny_roberta):
    from peft import PeftModel

    from flashbone import baselines

    train = write_jsonl(tmp_path / "train.jsonl", pair_rows(128, seed=1))
    dev = write_jsonl(tmp_path / "dev.jsonl", pair_rows(48, seed=2))
    out = tmp_path / "run"
    rc, stdout, err = flashbone(
        capsys,
        "train",
        "--task",
        "classification",
        "--model",
        tiny_roberta,
        "--data",
        train,
        "--eval-data",
        dev,
        "--method",
        "bone",
        "--r",
        "8",
        "--lr",
        "1e-2",
        "--epochs",
        "5",
        "--batch-size",
        "16",
        "--out",
        out,
        "--no-progress",
    )
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    before, after = summary["metrics_before"], summary["metrics_after"]
    assert after["accuracy"] >= 0.75 and after["accuracy"] > before["accuracy"] + 0.15, (before, after)  # chance: 0.5
    assert f"accuracy: {after['accuracy']:.4f}" in stdout and "mcc: " in stdout and "f1: " in stdout
    # PEFT's format: task_type SEQ_CLS, the head under PEFT's key names
    adapter = out / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (
        config["task_type"] == "SEQ_CLS"
        and config["peft_type"] == "MISS"
        and config["modules_to_save"] == ["classifier"]
    )
    keys = set(load_file(adapter / "adapter_model.safetensors"))
    assert {"base_model.model.classifier.dense.weight", "base_model.model.classifier.out_proj.weight"} <= keys
    assert cls.num_labels_of_adapter(adapter) == 2
    # PEFT loads it onto a fresh base (whose head is re-initialised at random) with our logits
    rows = cls.tokenize(
        datasets.Dataset.from_list(pair_rows(16, seed=3)),
        load_tokenizer(str(tiny_roberta)),
        cls.Fields("sentence1", "sentence2", "label"),
        64,
    )
    batch = cls.collate(rows, pad_id=1)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    torch.manual_seed(123)
    ours = baselines.attach_adapter(cls.load_classifier(str(tiny_roberta), 2), adapter).eval()
    torch.manual_seed(456)
    theirs = PeftModel.from_pretrained(cls.load_classifier(str(tiny_roberta), 2), str(adapter)).eval()
    with torch.no_grad():
        want = ours(**inputs).logits
        torch.testing.assert_close(theirs(**inputs).logits, want, rtol=1e-5, atol=1e-5)
        merged = baselines.merge_into_base(ours)
        assert not any("miss" in n or "bone" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(**inputs).logits, want, rtol=1e-4, atol=1e-5)
    # flashbone eval --task classification gives the training run's dev metrics again
    rc, stdout, err = flashbone(
        capsys,
        "eval",
        "--task",
        "classification",
        "--model",
        tiny_roberta,
        "--adapter",
        adapter,
        "--data",
        dev,
        "--out",
        tmp_path / "ev.jsonl",
        "--no-progress",
    )
    assert rc == 0, err
    assert f"accuracy: {after['accuracy']:.4f}\nf1: {after['f1']:.4f}\nmcc: {after['mcc']:.4f}" in stdout
    recs = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert len(recs) == 48 and sum(r["correct"] for r in recs) == round(after["accuracy"] * 48)


def test_lora_head_in_peft_format(tmp_path, capsys, tiny_roberta):
    train = write_jsonl(tmp_path / "train.jsonl", pair_rows(32, seed=1))
    rc, _, err = flashbone(
        capsys,
        "train",
        "--task",
        "classification",
        "--model",
        tiny_roberta,
        "--data",
        train,
        "--method",
        "lora",
        "--max-steps",
        "2",
        "--out",
        tmp_path / "run",
        "--no-progress",
    )
    assert rc == 0, err
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["r"] == 8 and config["target_modules"] is not None
    keys = set(load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    assert "base_model.model.classifier.out_proj.weight" in keys


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--data", "x.jsonl"], "needs --model"),
        (["--model", "m", "--data", "glue/squad"], "unknown GLUE task"),
        (["--model", "m", "--data", "x.jsonl", "--resume"], "--resume is not supported"),
    ],
)
def test_classification_errors(capsys, tmp_path, argv, message, tiny_roberta):
    argv = [a if a != "m" else str(tiny_roberta) for a in argv]
    rc, _, err = flashbone(capsys, "train", "--task", "classification", "--out", tmp_path / "o", *argv)
    assert rc == 2 and message in err and "Traceback" not in err


def test_string_labels_are_refused(tmp_path, capsys, tiny_roberta):
    data = write_jsonl(tmp_path / "d.jsonl", [{"sentence": "a", "label": "pos"}, {"sentence": "b", "label": "neg"}])
    rc, _, err = flashbone(
        capsys, "train", "--task", "classification", "--model", tiny_roberta, "--data", data, "--out", tmp_path / "o"
    )
    assert rc == 2 and "labels must be integers" in err
