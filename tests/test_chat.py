"""Conversations: chat templates, loss exactly on the assistant's turns (token level), the
CodeFeedback/WizardLM layouts, and a CLI run whose first logged loss is the masked loss."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from cli_helpers import flashbone, write_jsonl

from flashbone import chat, data
from flashbone.loading import load_model, load_tokenizer

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "It is 5."},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "It is 8."},
]


@pytest.fixture()
def tok():
    return copy.deepcopy(load_tokenizer(None))


def labelled_runs(row: dict, tok) -> list[str]:
    """The decoded text of each maximal run of tokens that carry a label."""
    runs, cur = [], []
    for t, y in zip(row["input_ids"], row["labels"]):
        if y != data.IGNORE:
            assert y == t
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    runs += [cur] if cur else []
    return [tok.decode(r) for r in runs]


def test_default_template_masks_exactly_the_assistant_turns(tok):
    assert not chat.ensure_template(tok)  # the tiny base's tokenizer has no template of its own
    row = chat.tokenize_conversation(tok, TURNS, max_length=512)
    assert labelled_runs(row, tok) == ["It is 5.\n<|EOT|>", "It is 8.\n<|EOT|>"]
    text = tok.decode(row["input_ids"][1:])
    assert text == (
        "Be brief.\n\n### Instruction:\nWhat is 2 + 3?\n\n### Response:It is 5.\n<|EOT|>"
        "\n\n### Instruction:\nAnd 4 + 4?\n\n### Response:It is 8.\n<|EOT|>"
    )
    assert row["input_ids"][0] == tok.bos_token_id and row["labels"][0] == data.IGNORE
    unlabelled = [t for t, y in zip(row["input_ids"], row["labels"]) if y == data.IGNORE]
    assert "What is 2 + 3?" in tok.decode(unlabelled) and "It is" not in tok.decode(unlabelled)


def test_tokenizer_template_is_used_and_masked(tok):
    tok.chat_template = CHATML
    assert chat.ensure_template(tok)
    row = chat.tokenize_conversation(tok, TURNS, max_length=512)
    assert labelled_runs(row, tok) == ["It is 5.<|im_end|>\n", "It is 8.<|im_end|>\n"]
    assert tok.decode(row["input_ids"][1:]).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user")


def test_one_turn_default_equals_the_papers_format(tok):
    """A one-turn conversation under the default template is the papers' prompt + target."""
    q, r = "Tom has 3 apples and buys 4. How many?", "3 + 4 = 7\nThe answer is: 7"
    chat.ensure_template(tok)
    conv = chat.tokenize_conversation(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": r}], 512)
    import datasets

    rows, _ = data.tokenize_rows(
        datasets.Dataset.from_list([{"query": q, "response": r}]),
        tok,
        data.get_template("alpaca"),
        "query",
        "response",
        512,
    )
    assert conv["input_ids"] == rows[0]["input_ids"]
    batch = data.collate([conv], pad_id=tok.pad_token_id)["labels"][0].tolist()
    assert batch == data.collate([rows[0]], pad_id=tok.pad_token_id)["labels"][0].tolist()


def test_sharegpt_layout_and_errors(tok):
    share = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "What is 2 + 3?"},
        {"from": "gpt", "value": "It is 5."},
        {"from": "human", "value": "And 4 + 4?"},
        {"from": "gpt", "value": "It is 8."},
    ]
    assert chat.normalise(share) == TURNS
    assert chat.conversation_field(["idx", "conversations"]) == "conversations"
    assert chat.conversation_field(["id", "messages"]) == "messages"
    assert chat.conversation_field(["query", "answer"]) is None
    with pytest.raises(data.DataError, match="no assistant turn"):
        chat.normalise([{"role": "user", "content": "hi"}])
    with pytest.raises(data.DataError, match="roles are"):
        chat.normalise([{"role": "robot", "content": "hi"}])
    chat.ensure_template(tok)
    cut = chat.tokenize_conversation(tok, TURNS, max_length=12)  # cut on the right
    assert len(cut["input_ids"]) == 12 and cut["truncated"]


def test_codefeedback_and_wizardlm_layouts():
    # m-a-p/CodeFeedback-Filtered-Instruction: query/answer; WizardLM_evol_instruct_70k: instruction/output
    assert data.detect_fields(["query", "answer", "resource", "lang"], None, None) == ("query", "answer")
    assert data.detect_fields(["instruction", "output"], None, None) == ("instruction", "output")


def test_cli_trains_on_assistant_tokens_only(tmp_path, capsys):
    """The first logged loss (before any update; bone starts equal to the base) is the mean
    cross-entropy over the assistant tokens alone."""
    rows = [
        {
            "conversations": [
                {"from": "human", "value": f"What is {a} + {b}?"},
                {"from": "gpt", "value": f"It is {a + b}."},
                {"from": "human", "value": "Twice that?"},
                {"from": "gpt", "value": f"It is {2 * (a + b)}."},
            ]
        }
        for a, b in [(2, 3), (4, 1), (7, 5)]
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    rc, out, err = flashbone(
        capsys,
        "train",
        "--data",
        path,
        "--batch-size",
        "3",
        "--max-steps",
        "1",
        "--eval-task",
        "none",
        "--no-progress",
        "--precision",
        "fp32",  # on a GPU too: the reference below is float32
        "--out",
        tmp_path / "run",
    )
    assert rc == 0, err
    assert "conversations -> assistant turns, the default chat template" in out
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    tok = load_tokenizer(None)
    chat.ensure_template(tok)
    batch = data.collate(
        [chat.tokenize_conversation(tok, chat.normalise(r["conversations"]), 512) for r in rows], tok.pad_token_id
    )
    with torch.no_grad():
        logits = load_model(None)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    want = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100
    )
    assert logged == pytest.approx(float(want), rel=1e-4)
