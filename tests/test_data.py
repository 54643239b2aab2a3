"""Data loading, templates, response-only labels and truncation."""

import json

import pytest
import torch

from flashbone import data


class CharTokenizer:
    """A tiny stand-in tokenizer: one id per character, <bos>=1 first."""

    bos_token_id, pad_token_id = 1, 0

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [([1] if add_special_tokens else []) + [ord(c) % 250 + 2 for c in t] for t in texts]}


def test_paper_template():
    t = data.get_template(None)
    assert t.prompt_text("What is 2+2?") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nWhat is 2+2?\n\n### Response:"
    )
    assert t.target_text("4") == "4\n<|EOT|>"
    assert t.stop == ["<|EOT|>"]
    assert data.get_template("Q: {query}\\nA:").prompt_text("x") == "Q: x\nA:"
    with pytest.raises(data.DataError, match="query"):
        data.get_template("no placeholder")


def test_truncation_never_drops_the_response():
    ids = list(range(100))  # prompt 80 tokens, response 20
    out, n = data.truncate(ids, 80, 50, keep_first=True)
    assert len(out) == 50 and out[0] == 0 and out[n:] == list(range(80, 100)) and n == 30
    out, n = data.truncate(ids, 10, 50, keep_first=True)  # response 90 > half: cut on the right
    assert len(out) == 50 and n == 10 and out[n:] == list(range(10, 50))
    out, n = data.truncate(ids, 99, 8, keep_first=True)
    assert len(out) == 8 and len(out) - n >= 1
    assert data.truncate(ids, 10, 100, keep_first=True) == (ids, 10)


def test_labels_cover_only_the_response(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"question": "q" * 5, "answer": "abc #### 3"}, {"question": "x", "answer": "y"}])
    q, r = data.detect_fields(ds.column_names, None, None)
    assert (q, r) == ("question", "answer")
    tok = CharTokenizer()
    rows, n_cut = data.tokenize_rows(ds, tok, data.get_template("plain"), q, r, max_length=64)
    assert n_cut == 0
    batch = data.collate(rows.to_list(), pad_id=0)
    first = rows[0]
    assert first["n_prompt"] == 1 + len("qqqqq\n")
    labels = batch["labels"][0]
    assert (labels[: first["n_prompt"]] == -100).all()
    assert labels[first["n_prompt"] : len(first["input_ids"])].tolist() == first["input_ids"][first["n_prompt"] :]
    assert (batch["labels"][1][len(rows[1]["input_ids"]) :] == -100).all()
    assert batch["attention_mask"].sum().item() == sum(len(x) for x in rows["input_ids"])


def test_load_files_and_errors(tmp_path):
    rows = [{"query": f"q{i}", "response": f"r{i}"} for i in range(5)]
    jl = tmp_path / "d.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(data.load_rows(str(jl))) == 5
    js = tmp_path / "d.json"
    js.write_text(json.dumps(rows))
    assert data.load_rows(str(js), max_samples=3)["query"] == ["q0", "q1", "q2"]
    import datasets

    pq = tmp_path / "d.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(pq))
    assert len(data.load_rows(str(pq))) == 5
    assert len(data.load_rows("tiny-math", max_samples=7)) == 7
    assert len(data.load_rows("tiny-math:test", max_samples=4)) == 4
    with pytest.raises(data.DataError, match="no such file"):
        data.load_rows(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(data.DataError, match="empty"):
        data.load_rows(str(tmp_path / "empty.jsonl"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(data.DataError, match="line 1 is not valid JSON"):
        data.load_rows(str(tmp_path / "bad.jsonl"))
    with pytest.raises(data.DataError, match="unknown file type"):
        (tmp_path / "d.txt").write_text("x")
        data.load_rows(str(tmp_path / "d.txt"))
    with pytest.raises(data.DataError, match="its fields are"):
        data.detect_fields(["query", "response"], "prompt", None)
    with pytest.raises(data.DataError, match="--query-field"):
        data.detect_fields(["text"], None, None)


def test_order_and_sharding_are_functions_of_seed_and_epoch():
    a = data.epoch_order(10, seed=1, epoch=0)
    assert a == data.epoch_order(10, seed=1, epoch=0) and sorted(a) == list(range(10))
    assert a != data.epoch_order(10, seed=1, epoch=1)
    mbs = data.micro_batches(a, 3)
    assert [len(m) for m in mbs] == [3, 3, 3, 1]
    r0, r1 = data.micro_batches(a, 3, 0, 2), data.micro_batches(a, 3, 1, 2)
    assert r0 + r1 != mbs and sorted(sum(r0 + r1, [])) == list(range(10))
    assert torch.tensor(data.steps_per_epoch(10, 3, 2)) == 2


def test_cut_after_code_drops_the_explanation_after_the_last_code_block():
    from flashbone.data import cut_after_code

    assert cut_after_code("Here:\n```python\nf()\n```\nThis works because f is pure.") == "Here:\n```python\nf()\n```"
    two = "a\n```\nx\n```\nthen\n```py\ny\n```\nwhy it works\n```\nan unclosed block"
    assert cut_after_code(two) == "a\n```\nx\n```\nthen\n```py\ny\n```"
    assert cut_after_code("no code at all") == "no code at all"
    assert cut_after_code("```\nonly an opening fence") == "```\nonly an opening fence"


def test_train_cut_after_code_trains_on_the_code_without_its_explanation():
    import datasets

    from flashbone.commands._train_state import TrainOptions
    from flashbone.commands._train_steps import _tokenize
    from flashbone.data import get_template
    from flashbone.loading import load_tokenizer

    tok = load_tokenizer(None)
    ds = datasets.Dataset.from_dict({"query": ["add one"], "answer": ["sum:\n```\n1 + 1\n```\nzebra zebra zebra"]})
    for cut, has_explanation in ((True, False), (None, True)):
        v = TrainOptions(cut_after_code=cut, max_length=512)
        rows, _ = _tokenize(ds, v, tok, get_template("alpaca"), "--data", "x.jsonl")
        text = tok.decode(rows[0]["input_ids"][rows[0]["n_prompt"] :])
        assert ("1 + 1" in text) and (("zebra" in text) == has_explanation)
