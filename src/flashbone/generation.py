"""Batched greedy generation and scoring of a whole evaluation set.

rows --template--> prompts --sort by length, left-pad, batch--> model.generate (greedy,
stop at "<|EOT|>" or eos) --decode new tokens, cut at stop--> generations
--scoring.score(task)--> {prompt, generation, extracted, gold, correct}
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import scoring
from .data import DataError, Template


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    stops: list[str],
    bf16: bool = False,
    progress: bool = True,
    desc: str = "generate",
    temperature: float = 0.0,
) -> list[str]:
    """Completions of ``prompts`` (in their order), each cut at the first stop string: greedy,
    or sampled at ``temperature`` when it is above 0 (seed the RNG first to repeat a run)."""
    from transformers import GenerationConfig

    if batch_size < 1 or max_new_tokens < 1:
        raise DataError(f"--batch-size and --max-new-tokens must be positive, got {batch_size}, {max_new_tokens}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    gen_cfg = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        **({"temperature": temperature, "top_p": 1.0, "top_k": 0} if temperature > 0 else {}),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos,
        bos_token_id=tokenizer.bos_token_id,
        stop_strings=[s for s in stops if s] or None,
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths together
    out: list[str] = [""] * len(prompts)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    try:
        bar = tqdm(total=len(prompts), desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            enc = tokenizer([prompts[j] for j in idx], return_tensors="pt", padding=True).to(device)
            with amp:
                ids = model.generate(**enc, generation_config=gen_cfg, tokenizer=tokenizer)
            texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for j, t in zip(idx, texts):
                out[j] = scoring.cut_at_stop(t, stops)
            bar.update(len(idx))
        bar.close()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def gold_of(row: dict, task: str, answer_field: str | None) -> object:
    """The reference answer of one row: a float for gsm8k/tiny-math, a string for math."""
    value = row.get(answer_field) if answer_field else None
    if value is None:
        for f in ("answer", "response", "output", "solution"):
            if row.get(f) is not None:
                value = row[f]
                break
    if task == "math":
        return scoring.math_gold(value, row.get("solution"))
    return scoring.gsm8k_gold(value) if value is not None else None


def evaluate(
    model,
    tokenizer,
    rows: list[dict],
    *,
    task: str,
    template: Template,
    query_field: str,
    answer_field: str | None = None,
    max_new_tokens: int = 512,
    batch_size: int = 16,
    bf16: bool = False,
    progress: bool = True,
    desc: str = "eval",
    scorer: str = "protocol",
) -> tuple[float, list[dict]]:
    """Accuracy on ``rows`` and one record per row (prompt, generation, extracted, gold, correct);
    ``scorer``: ``protocol`` (the papers' scripts) or ``math-verify`` (see :mod:`flashbone.scoring`)."""
    scoring.check_scorer(scorer)
    if task not in scoring.TASKS:
        raise DataError(f"--task {task!r} is unknown; choose one of {', '.join(scoring.TASKS)}")
    golds = [gold_of(r, task, answer_field) for r in rows]
    missing = [i for i, g in enumerate(golds) if g is None]
    if missing:
        raise DataError(
            f"row {missing[0]}: no reference answer for task {task} (fields {sorted(rows[missing[0]])}); "
            "pass --answer-field"
        )
    prompts = [template.prompt_text(r[query_field]) for r in rows]
    gens = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        stops=template.stop,
        bf16=bf16,
        progress=progress,
        desc=desc,
    )
    records = []
    for p, g, gold in zip(prompts, gens, golds):
        pred, ok = scoring.score(task, g, gold, scorer)
        records.append({"prompt": p, "generation": g, "extracted": pred, "gold": gold, "correct": bool(ok)})
    acc = sum(r["correct"] for r in records) / max(len(records), 1)
    return acc, records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


__all__ = ["generate", "evaluate", "gold_of", "write_jsonl"]
