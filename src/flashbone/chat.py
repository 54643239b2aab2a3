"""Conversations: multi-turn rows, formatted by a chat template, loss on the assistant's turns.

    row {"messages": [{"role", "content"}, ...]}             (OpenAI / HF layout; Code-Feedback)
    row {"conversations": [{"from", "value"}, ...]}          (ShareGPT; WizardLM evol-instruct V2)
        --normalise--> [{"role": system|user|assistant, "content"}]
        --tokenizer.apply_chat_template (its own template; else DEFAULT_CHAT_TEMPLATE)--> text
    assistant spans, in characters: [len(render(turns[:i], generation prompt)), len(render(turns[:i+1])))
        (each prefix of the conversation renders to a prefix of the whole text: checked)
    tokenize(text, offsets) --> labels = the token where its first character lies in a span, else -100
    too long: cut on the right; a row left without any assistant token is dropped

The default template (for base models whose tokenizer has none) extends the papers' instruction
format to many turns, so a one-turn conversation is exactly the papers' prompt + target:

    [system or "Below is an instruction ... request."]\\n\\n### Instruction:\\n{user}\\n\\n### Response:{assistant}\\n<|EOT|>
    \\n\\n### Instruction:\\n{user 2}\\n\\n### Response:{assistant 2}\\n<|EOT|> ...
"""

from __future__ import annotations

from typing import Any, Sequence

from .data import EOT, IGNORE, PAPER_PROMPT, DataError

CONVERSATION_FIELDS = ("messages", "conversations")
# ShareGPT speaker names -> roles
ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
}
_PREAMBLE = PAPER_PROMPT.split("\n\n### Instruction:")[0]
DEFAULT_CHAT_TEMPLATE = (  # literal text only inside {{ }}: "-" trims the template's own whitespace
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'system' -%}{{ m['content'] }}"
    "{%- elif m['role'] == 'user' -%}"
    "{%- if loop.first -%}{{ " + repr(_PREAMBLE) + " }}{%- endif -%}"
    "{{ '\\n\\n### Instruction:\\n' + m['content'] + '\\n\\n### Response:' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ m['content'] + '\\n" + EOT + "' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
DEFAULT_STOP = [EOT]


def conversation_field(columns: Sequence[str], given: str | None = None) -> str | None:
    """The column holding conversations (``--messages-field``, else ``messages``/``conversations``)."""
    if given:
        if given not in columns:
            raise DataError(f"data has no field {given!r} (--messages-field); its fields are {list(columns)}")
        return given
    return next((f for f in CONVERSATION_FIELDS if f in columns), None)


def normalise(turns: Any, row: int = 0) -> list[dict[str, str]]:
    """``[{"role", "content"}]`` from OpenAI-style or ShareGPT-style turns."""
    if not isinstance(turns, list) or not turns:
        raise DataError(f"row {row}: the conversation is not a non-empty list of turns")
    out = []
    for t in turns:
        if not isinstance(t, dict):
            raise DataError(f"row {row}: a turn is {type(t).__name__}, not a mapping")
        speaker = t.get("role", t.get("from"))
        text = t.get("content", t.get("value"))
        role = ROLES.get(str(speaker).lower())
        if role is None or text is None:
            raise DataError(
                f"row {row}: a turn has role {speaker!r} and content {str(text)[:40]!r}; "
                f"roles are {sorted(ROLES)} (role/content or from/value)"
            )
        out.append({"role": role, "content": str(text)})
    if not any(t["role"] == "assistant" for t in out):
        raise DataError(f"row {row}: the conversation has no assistant turn to learn from")
    return out


def ensure_template(tokenizer) -> bool:
    """Give ``tokenizer`` the default template when it has none; True when it had its own."""
    if getattr(tokenizer, "chat_template", None):
        return True
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return False


def render(tokenizer, turns: list[dict], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)


def prompt_text(tokenizer, turns: list[dict]) -> str:
    """The conversation so far with the generation prompt, as text to tokenize with the usual
    special tokens (a ``<bos>`` the template already wrote is not written twice)."""
    text = render(tokenizer, turns, generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and leading_special_ids(tokenizer) and text.startswith(bos):
        text = text[len(bos) :]
    return text


def assistant_spans(tokenizer, turns: list[dict], row: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation's text and the character spans of the assistant's turns
    (each with whatever the template closes the turn with, e.g. ``<|im_end|>`` or ``<|EOT|>``)."""
    text = render(tokenizer, turns)
    spans = []
    for i, t in enumerate(turns):
        if t["role"] != "assistant":
            continue
        start = render(tokenizer, turns[:i], generation_prompt=True) if i else ""
        end = render(tokenizer, turns[: i + 1])
        if not text.startswith(start) or not text.startswith(end) or len(end) < len(start):
            raise DataError(
                f"row {row}: the chat template does not render a conversation's turns as prefixes of "
                "the whole; its assistant turns cannot be located"
            )
        spans.append((len(start), len(end)))
    return text, spans


def leading_special_ids(tokenizer) -> list[int]:
    """The ids ``tokenizer(text)`` puts before the text's own (``[<bos>]`` for Llama, none for Qwen)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return list(full[:k])
    return []


def tokenize_conversation(tokenizer, turns: list[dict], max_length: int, row: int = 0) -> dict:
    """``input_ids``, ``labels`` (-100 outside assistant turns), ``n_prompt`` (first target) and
    ``truncated`` of one conversation."""
    text, spans = assistant_spans(tokenizer, turns, row)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    lead = leading_special_ids(tokenizer)
    if lead and ids[: len(lead)] != lead:  # what tokenizer(text) would put first (<bos>), unless rendered
        ids, offsets = lead + ids, [(0, 0)] * len(lead) + offsets
    labels = [tok if any(a <= s < b for a, b in spans) and e > s else IGNORE for tok, (s, e) in zip(ids, offsets)]
    cut = len(ids) > max_length
    ids, labels = ids[:max_length], labels[:max_length]
    first = next((k for k, y in enumerate(labels) if y != IGNORE), len(labels))
    return {"input_ids": ids, "labels": labels, "n_prompt": first, "truncated": cut}


def tokenize_conversations(ds, tokenizer, field: str, max_length: int):
    """Rows with ``input_ids``, ``labels``, ``n_prompt``; returns (dataset, n_truncated, own_template)."""
    import datasets

    if max_length < 2:
        raise DataError(f"--max-length must be at least 2, got {max_length}")
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("conversations need a fast tokenizer (character offsets); this model's is a slow one")
    own = ensure_template(tokenizer)
    rows = [tokenize_conversation(tokenizer, normalise(c, i), max_length, i) for i, c in enumerate(ds[field])]
    n_cut = sum(r.pop("truncated") for r in rows)
    rows = [r for r in rows if r["n_prompt"] < len(r["input_ids"])]
    if not rows:
        raise DataError("no conversation has an assistant token left within --max-length")
    return datasets.Dataset.from_list(rows), n_cut, own


__all__ = [
    "CONVERSATION_FIELDS",
    "DEFAULT_CHAT_TEMPLATE",
    "DEFAULT_STOP",
    "ROLES",
    "conversation_field",
    "normalise",
    "ensure_template",
    "leading_special_ids",
    "prompt_text",
    "render",
    "assistant_spans",
    "tokenize_conversation",
    "tokenize_conversations",
]
