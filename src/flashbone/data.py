"""Instruction data: load, format with a template, tokenize with loss on the response only.

source (tiny-math | file.jsonl/.json/.parquet/.csv | hub dataset)  --datasets-->  rows
row {query, response}  --template-->  prompt = "Below is an instruction ... ### Response:"
                                       target = "{response}\\n<|EOT|>"
tokenize(prompt), tokenize(prompt + target)   (as PiSSA/MetaMath do; the prompt's tokens
                                               are the first n_prompt tokens of the whole)
labels = -100 on the prompt, the target's ids on the response          (loss on response only)
too long: drop prompt tokens from the left first (keeping <bos>), the response is cut on the
          right only when it alone exceeds max_length - max_length//2: never dropped whole.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from .batching import IGNORE
from .errors import BoneError

PAPER_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{query}\n\n### Response:"
)
PAPER_TARGET = "{response}\n<|EOT|>"
EOT = "<|EOT|>"
# (query, response) field names recognised without flags: MetaMathQA, GSM8K, Alpaca-like, MATH
KNOWN_FIELDS = [
    ("query", "response"),
    ("question", "answer"),
    ("instruction", "output"),
    ("problem", "solution"),
    ("query", "answer"),
]  # last: CodeFeedback-Filtered-Instruction
FILE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
BUILTIN_DATA = "tiny-math"
# what a Hub dataset name looks like: "gsm8k", "openai/gsm8k", "meta-math/MetaMathQA"
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?")


class DataError(BoneError):
    """A data source that cannot be read or lacks the fields needed."""


@dataclass(frozen=True)
class Template:
    """A prompt format with ``{query}`` and a target format with ``{response}``."""

    name: str
    prompt: str
    target: str

    def prompt_text(self, query: str) -> str:
        return self.prompt.replace("{query}", str(query))

    def target_text(self, response: str) -> str:
        return self.target.replace("{response}", str(response))

    @property
    def stop(self) -> list[str]:
        """Strings that end a generation: the target's literal text after ``{response}``."""
        tail = self.target.split("{response}", 1)[-1].strip()
        return [tail] if tail else []


TEMPLATES = {
    "alpaca": Template("alpaca", PAPER_PROMPT, PAPER_TARGET),  # the papers' (PiSSA/MetaMath) format
    "plain": Template("plain", "{query}\n", "{response}"),
}


def get_template(spec: str | None) -> Template:
    """A template by name (``alpaca`` = the papers', ``plain``) or a prompt string holding
    ``{query}`` (the target is then the papers' ``{response}\\n<|EOT|>``)."""
    spec = spec or "alpaca"
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    if "{query}" not in spec:
        raise DataError(f"--template {spec!r}: use a name ({', '.join(TEMPLATES)}) or a prompt that contains {{query}}")
    # only \n, \t and \\ typed on a command line are unescaped; other text (non-ASCII too) is kept
    prompt = re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], spec)
    return Template("custom", prompt, PAPER_TARGET)


# -- loading ------------------------------------------------------------------------------------
def load_rows(
    source: str,
    split: str = "train",
    subset: str | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    tinymath_train_size: int = 4000,
):
    """A :class:`datasets.Dataset` from the built-in ``tiny-math`` (``tiny-math:test`` for the
    held-out split), a local file, or a Hugging Face Hub dataset name."""
    import datasets

    datasets.disable_progress_bars()
    if source == BUILTIN_DATA or source.startswith(BUILTIN_DATA + ":"):
        from . import tinymath

        part = source.partition(":")[2] or split
        if part not in tinymath.SPLITS:
            raise DataError(f"--data {source}: tiny-math splits are {', '.join(tinymath.SPLITS)}")
        n = max_samples or (tinymath_train_size if part == "train" else 200)
        rows = tinymath.generate(part, n, seed=seed if part == "train" else None)
        return datasets.Dataset.from_list(rows)
    path = Path(source).expanduser()
    if path.exists() or not HUB_NAME.fullmatch(source) or path.suffix.lower() in FILE_KINDS:
        ds = _load_file(path)  # a local path wins whenever it exists
    else:
        ds = _load_hub(source, subset, split)
    if len(ds) == 0:
        raise DataError(f"--data {source}: holds no rows")
    if max_samples and max_samples < len(ds):
        ds = ds.select(range(max_samples))
    return ds


def _load_hub(name: str, subset: str | None, split: str):
    """A Hugging Face Hub dataset (``org/name`` or ``name``); offline is said plainly."""
    import datasets

    try:
        return datasets.load_dataset(name, subset, split=split)
    except Exception as e:  # offline, unknown name, bad split...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = isinstance(e, (ConnectionError, TimeoutError)) or any(
            w in msg.lower() for w in ("offline", "connect", "reach")
        )
        env = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
        why = (
            f"the Hugging Face Hub cannot be reached{env}: run once with network access to cache "
            "it, or pass a local .jsonl/.json/.parquet/.csv file"
            if offline
            else f"it could not be loaded from the Hugging Face Hub ({type(e).__name__}: {msg})"
        )
        raise DataError(f"--data {name!r} is not a local file and {why}") from None


def _check_text(path: Path, kind: str) -> None:
    """Refuse bytes that are not UTF-8 and, for JSON Lines, a line that is not JSON, naming the
    line (1-based, as an editor shows it); a file cut mid-row ends in such a line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"--data {path}: line {n} is not UTF-8 text (byte {raw[e.start]:#04x} at column "
                    f"{e.start + 1}); save the file as UTF-8"
                ) from None
            if kind == "jsonl" and line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    cut = " (the file may be cut short)" if not raw.endswith(b"\n") else ""
                    raise DataError(
                        f"--data {path}: line {n} is not valid JSON ({e.msg}, column {e.colno})"
                        f"{cut}; fix or remove that line"
                    ) from None


def _load_file(path: Path):
    import datasets

    if not path.exists():
        raise DataError(f"--data {path}: no such file")
    if path.is_dir():
        raise DataError(f"--data {path}: is a folder; pass a .jsonl, .json, .parquet or .csv file")
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"--data {path}: unknown file type {path.suffix!r}; use one of {', '.join(FILE_KINDS)}")
    if path.stat().st_size == 0 or (kind != "parquet" and not path.read_bytes()[:4096].strip()):
        raise DataError(f"--data {path}: the file is empty")
    if kind != "parquet":
        _check_text(path, "jsonl" if path.suffix.lower() == ".jsonl" else kind)
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # our one-line error says it all
    try:
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        cause = e.__cause__ or e.__context__
        detail = f"{msg}" + (f"; {type(cause).__name__}: {str(cause).splitlines()[0]}" if cause and str(cause) else "")
        raise DataError(f"--data {path}: could not be read as {kind} ({type(e).__name__}: {detail})") from None
    finally:
        datasets.logging.set_verbosity(level)


def detect_fields(
    columns: Sequence[str],
    query_field: str | None,
    response_field: str | None,
    source: str = "data",
    need_response: bool = True,
) -> tuple[str, str | None]:
    """The (query, response) column names: the flags, else a known pair (MetaMathQA, GSM8K...)."""
    cols = list(columns)
    if query_field is None or (need_response and response_field is None):
        for q, r in KNOWN_FIELDS:
            if q in cols and (r in cols or not need_response):
                query_field = query_field or q
                response_field = response_field or (r if r in cols else None)
                break
    for flag, f in (("--query-field", query_field), ("--response-field", response_field)):
        if f is None and (flag == "--query-field" or need_response):
            raise DataError(
                f"{source}: cannot tell which field holds the {flag[2:-6]}; it has fields "
                f"{cols}; pass {flag} (known pairs: {KNOWN_FIELDS})"
            )
        if f is not None and f not in cols:
            raise DataError(f"{source}: has no field {f!r} (given by {flag}); its fields are {cols}")
    return query_field, response_field


# -- tokenization -------------------------------------------------------------------------------
def truncate(ids: list[int], n_prompt: int, max_length: int, keep_first: bool) -> tuple[list[int], int]:
    """Fit ``ids`` (prompt then response) into ``max_length`` without dropping the response.

    The prompt loses tokens from its left (after ``<bos>`` when ``keep_first``); the response is
    cut on the right only when it alone needs more than ``max_length - max_length // 2``."""
    if len(ids) <= max_length:
        return ids, n_prompt
    prompt, resp = ids[:n_prompt], ids[n_prompt:]
    keep_resp = min(len(resp), max(max_length - len(prompt), max_length - max_length // 2))
    keep_prompt = max_length - keep_resp
    head = prompt[:1] if (keep_first and prompt and keep_prompt > 0) else []
    tail = prompt[len(prompt) - (keep_prompt - len(head)) :] if keep_prompt - len(head) > 0 else []
    prompt = head + tail
    return prompt + resp[:keep_resp], len(prompt)


_FENCE = re.compile(r"^[ \t]*```", re.MULTILINE)


def cut_after_code(text: str) -> str:
    """``text`` up to the end of its last fenced code block: the explanation after the code
    goes (the papers' CodeFeedback preprocessing). Text with no complete block is kept whole.

        "Here:\n```python\nf()\n```\nThis works because..."  ->  "Here:\n```python\nf()\n```"
    """
    fences = list(_FENCE.finditer(text))
    if len(fences) < 2:
        return text
    last = fences[len(fences) - 1 - (len(fences) % 2)]  # an odd count: the last fence opens an unclosed block
    end = text.find("\n", last.end())
    return text if end < 0 else text[:end]


def tokenize_rows(
    ds, tokenizer, template: Template, query_field: str, response_field: str, max_length: int, source: str = "data"
):
    """Add ``input_ids`` and ``n_prompt`` to every row; returns (dataset, n_truncated)."""
    if max_length < 2:
        raise DataError(f"--max-length must be at least 2, got {max_length}")
    keep_first = tokenizer.bos_token_id is not None

    def fn(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        prompts = [template.prompt_text(q) for q in batch[query_field]]
        fulls = [p + template.target_text(r) for p, r in zip(prompts, batch[response_field])]
        p_ids = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        f_ids = tokenizer(fulls, add_special_tokens=True)["input_ids"]
        out_ids, out_np, cut = [], [], []
        for p, f in zip(p_ids, f_ids):
            ids, n = truncate(f, len(p), max_length, keep_first)
            out_ids.append(ids)
            out_np.append(n)
            cut.append(len(f) > max_length)
        return {"input_ids": out_ids, "n_prompt": out_np, "truncated": cut}

    for i, (q, r) in enumerate(zip(ds[query_field], ds[response_field]), 1):
        for field_name, value in ((query_field, q), (response_field, r)):
            if value is None or not str(value).strip():
                what = "null" if value is None else "empty"
                raise DataError(
                    f"{source}: row {i} (from 1, as a .jsonl file's lines): field {field_name!r} "
                    f"is {what}; fill it in or remove the row"
                )
    out = ds.map(fn, batched=True, batch_size=1000, remove_columns=ds.column_names)
    n_cut = int(sum(out["truncated"]))
    out = out.remove_columns(["truncated"]).filter(lambda r: len(r["input_ids"]) > r["n_prompt"])
    if len(out) == 0:
        raise DataError("no row has any response tokens after tokenization; check --response-field")
    return out, n_cut


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; labels are -100 on prompt and padding (a row's own ``labels``,
    as conversations have, are used as they are)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        t = torch.tensor(r["input_ids"], dtype=torch.long)
        ids[i, : len(t)] = t
        mask[i, : len(t)] = 1
        if r.get("labels") is not None:  # conversations: -100 outside the assistant's turns
            labels[i, : len(t)] = torch.tensor(r["labels"], dtype=torch.long)
        else:
            labels[i, r["n_prompt"] : len(t)] = t[r["n_prompt"] :]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled row order of one epoch; depends only on (seed, epoch), so a resumed run
    sees the same order."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def micro_batches(order: list[int], batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Consecutive micro-batches of ``order``; with ``world > 1`` rank ``r`` takes every
    ``world``-th one (global micro-batch ``k*world + r``), so the global batch is unchanged."""
    mbs = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return mbs[rank::world]


def steps_per_epoch(n_rows: int, batch_size: int, grad_accum: int, world: int = 1) -> int:
    return max(1, math.ceil(math.ceil(n_rows / batch_size) / (grad_accum * world)))


__all__ = [
    "PAPER_PROMPT",
    "PAPER_TARGET",
    "EOT",
    "Template",
    "TEMPLATES",
    "get_template",
    "load_rows",
    "detect_fields",
    "tokenize_rows",
    "truncate",
    "collate",
    "epoch_order",
    "micro_batches",
    "steps_per_epoch",
    "DataError",
    "BUILTIN_DATA",
]
