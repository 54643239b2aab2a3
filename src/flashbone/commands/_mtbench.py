"""``flashbone eval --task mt-bench``: two-turn answers in FastChat's format, judged when an endpoint is given.

questions (--data, FastChat's question.jsonl) -> answers (the chat template, FastChat's temperature per
category or --sampling greedy; or --samples)
-> OUT/model_answer/<model-id>.jsonl -> with --judge-url/--judge-model: FastChat's single-grading
prompts -> OUT/model_judgment/<judge>_single.jsonl -> score: mean rating
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from ..errors import CLIError

DEFAULTS = {"max_new_tokens": 1024, "batch_size": 16}  # FastChat's max_new_token 1024
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


def _model_id(args: argparse.Namespace) -> str:
    from ..loading import BUILTIN_MODEL

    name = args.model_id or (
        Path(args.adapter).resolve().parent.name if args.adapter else (args.model or BUILTIN_MODEL)
    )
    return re.sub(r"[^\w.\-]+", "_", str(name)).strip("_") or "model"


def _generate_answers(args: argparse.Namespace, questions: list[dict], model_id: str) -> list[dict]:
    """Turn by turn, every question's conversation so far through the chat template, at its
    category's temperature (``--sampling``)."""

    import torch

    from .. import chat, loading, mtbench
    from ..generation import generate

    device = loading.pick_device(args.device)
    bf16 = loading.use_bf16(args.precision, device)
    tok = loading.load_tokenizer(args.model)
    own = chat.ensure_template(tok)
    stops = [s for s in _END_OF_TURN if s in tok.chat_template] if own else list(chat.DEFAULT_STOP)
    from .evaluate import load_eval_model

    model = load_eval_model(args, bf16, device)
    convs: list[list[dict]] = [[] for _ in questions]
    answers: list[list[str]] = [[] for _ in questions]
    temps = [mtbench.answer_temperature(q, args.sampling or "fastchat") for q in questions]
    for turn in range(max(len(q["turns"]) for q in questions)):
        todo = [i for i, q in enumerate(questions) if turn < len(q["turns"])]
        for i in todo:
            convs[i].append({"role": "user", "content": questions[i]["turns"][turn]})
        for temp in sorted({temps[i] for i in todo}):  # one batch run per temperature, seeded: runs repeat
            group = [i for i in todo if temps[i] == temp]
            torch.manual_seed(args.seed if args.seed is not None else 0)
            outs = generate(
                model,
                tok,
                [chat.prompt_text(tok, convs[i]) for i in group],
                max_new_tokens=args.max_new_tokens or DEFAULTS["max_new_tokens"],
                batch_size=args.batch_size or DEFAULTS["batch_size"],
                stops=stops,
                bf16=bf16,
                progress=args.progress,
                desc=f"mt-bench turn {turn + 1}" + (f", temperature {temp}" if temp else ""),
                temperature=temp,
            )
            for i, text in zip(group, outs):
                text = text.strip()
                convs[i].append({"role": "assistant", "content": text})
                answers[i].append(text)
    return [mtbench.answer_record(q["question_id"], model_id, a) for q, a in zip(questions, answers)]


def run(args: argparse.Namespace) -> int:
    from .. import mtbench

    t0 = time.time()
    if not args.data:
        raise CLIError("--task mt-bench needs --data question.jsonl (FastChat's data/mt_bench/question.jsonl)")
    if not args.out:
        raise CLIError("--task mt-bench needs --out DIR (answers and judgments are written there, FastChat's layout)")
    if bool(args.judge_url) != bool(args.judge_model):
        raise CLIError("--judge-url and --judge-model go together (an OpenAI-compatible endpoint and its model name)")
    questions = mtbench.read_questions(args.data)
    if args.max_samples:
        questions = questions[: args.max_samples]
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out}: is a file; mt-bench writes a folder")
    model_id = _model_id(args)
    if args.samples:
        if args.model or args.adapter:
            raise CLIError("--samples reads given answers; leave out --model and --adapter")
        answers = mtbench.read_answers(args.samples, questions)
        model_id = args.model_id or answers[0].get("model_id") or model_id
    else:
        answers = _generate_answers(args, questions, model_id)
        path = out / "model_answer" / f"{model_id}.jsonl"
        mtbench.write_jsonl(path, answers)
        print(f"answers: {len(answers)} questions x {max(len(q['turns']) for q in questions)} turns in {path}")
    if not args.judge_url:
        print(
            "judge: not run; MT-Bench scores need a judge model behind an OpenAI-compatible endpoint: pass "
            "--judge-url URL --judge-model NAME (the key is read from OPENAI_API_KEY)"
        )
        return 0
    judgments = mtbench.judge_all(questions, answers, args.judge_url, args.judge_model, model_id)
    judge_name = re.sub(r"[^\w.\-]+", "_", args.judge_model)
    path = out / "model_judgment" / f"{judge_name}_single.jsonl"
    mtbench.write_jsonl(path, judgments)
    s = mtbench.scores(judgments)

    def fmt(x):
        return "n/a" if x is None else f"{x:.4f}"

    print(f"score: {fmt(s.overall)}")
    print(f"turn 1 score: {fmt(s.turn1)} (the Bone paper reports this one); turn 2 score: {fmt(s.turn2)}")
    print(
        f"mt-bench: {s.rated} judgments rated, {s.unrated} without a rating; judge {args.judge_model} at "
        f"{args.judge_url}; {time.time() - t0:.0f}s; judgments in {path}"
    )
    return 0


__all__ = ["run"]
