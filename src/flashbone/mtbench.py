"""MT-Bench, as FastChat's ``llm_judge`` runs it: two-turn answers, single-answer grading by a judge.

question.jsonl  {"question_id", "category", "turns": [q1, q2], "reference": [r1, r2] (some)}
answers         {"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns": [a1, a2]}],
                 "tstamp"}                                      (FastChat's model_answer/<id>.jsonl)
judge prompts   FastChat's single-v1 / single-math-v1 (turn 1) and their -multi-turn forms
                (turn 2); the math forms, with the reference answer, for math/reasoning/coding
request         POST <judge-url>/chat/completions {model, messages: [system, user],
                temperature 0, max_tokens 2048}, key from OPENAI_API_KEY
rating          the first "[[x]]" of the reply (else "[x]"), -1 when there is none
judgments       {"question_id", "model", "judge": [judge, prompt name], "user_prompt", "judgment",
                 "score", "turn", "tstamp"}                     (FastChat's model_judgment/<judge>_single.jsonl)
score           mean rating over rated judgments (-1 left out), per turn and both turns
"""

from __future__ import annotations

import ast
import json
import os
import re
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from .data import DataError

NEED_REF_CATS = ("math", "reasoning", "coding", "arena-hard-200")  # FastChat's
JUDGE_TEMPERATURE, JUDGE_MAX_TOKENS = 0, 2048
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")

# FastChat's judge prompts (fastchat/llm_judge/data/judge_prompts.jsonl, Apache-2.0), the single-grading four.
_RATE = (
    "After providing your explanation, you must rate the response on a scale of 1 to 10 by strictly "
    'following this format: "[[rating]]", for example: "Rating: [[5]]".'
)
_CONV = (
    "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n### Assistant A:\n"
    "{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
    "<|The End of Assistant A's Conversation with User|>"
)
JUDGE_PROMPTS = {
    "single-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response "
        "provided by an AI assistant to the user question displayed below. Your evaluation should consider factors "
        "such as the helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. Begin "
        "your evaluation by providing a short explanation. Be as objective as possible. " + _RATE + "\n\n[Question]\n"
        "{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
    },
    "single-math-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response "
        "provided by an AI assistant to the user question displayed below. Your evaluation should consider "
        "correctness and helpfulness. You will be given a reference answer and the assistant's answer. Begin your "
        "evaluation by comparing the assistant's answer with the reference answer. Identify and correct any "
        "mistakes. Be as objective as possible. " + _RATE + "\n\n[Question]\n{question}\n\n[The Start of Reference "
        "Answer]\n{ref_answer_1}\n[The End of Reference Answer]\n\n[The Start of Assistant's Answer]\n{answer}\n"
        "[The End of Assistant's Answer]",
    },
    "single-v1-multi-turn": {
        "system_prompt": "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
        "assistant to the user question displayed below. Your evaluation should consider factors such as the "
        "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response. You evaluation "
        "should focus on the assistant's answer to the second user question. Begin your evaluation by providing a "
        "short explanation. Be as objective as possible. " + _RATE + "\n\n",
        "prompt_template": _CONV,
    },
    "single-math-v1-multi-turn": {
        "system_prompt": "Please act as an impartial judge and evaluate the quality of the response provided by an AI "
        "assistant to the user question. Your evaluation should consider correctness and helpfulness. You will be "
        "given a reference answer and the assistant's answer. You evaluation should focus on the assistant's answer "
        "to the second question. Begin your evaluation by comparing the assistant's answer with the reference "
        "answer. Identify and correct any mistakes. Be as objective as possible. " + _RATE + "\n\n",
        "prompt_template": "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n"
        "{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n<|The End of "
        "Reference Answer|>\n\n\n" + _CONV,
    },
}


class JudgeError(DataError):
    """The judge endpoint could not be used."""


# -- files -------------------------------------------------------------------------------------
# FastChat's gen_model_answer.py: sampling temperature per question category (0: greedy); a
# category it does not list samples at 0.7
FASTCHAT_TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
    "arena-hard-200": 0.0,
}


def answer_temperature(question: dict, sampling: str) -> float:
    """The temperature a question is answered at: FastChat's for its category (``fastchat``), or
    0 (``greedy``: runs repeat exactly)."""
    if sampling == "greedy":
        return 0.0
    return FASTCHAT_TEMPERATURE.get(question.get("category"), 0.7)


def _jsonl(path: str | Path, what: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} {path}: no such file")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{what} {path}: line {i + 1} is not JSON ({e.msg})") from None
    if not rows:
        raise DataError(f"{what} {path}: holds no lines")
    return rows


def read_questions(path: str | Path) -> list[dict]:
    """FastChat's question.jsonl: question_id, category, turns (and reference for some)."""
    rows = _jsonl(path, "--data")
    for i, q in enumerate(rows):
        if "question_id" not in q or not isinstance(q.get("turns"), list) or not q["turns"]:
            raise DataError(
                f"--data {path}: line {i + 1} needs question_id and a list of turns (FastChat's question.jsonl)"
            )
    return rows


def read_answers(path: str | Path, questions: list[dict]) -> list[dict]:
    """FastChat answer lines (choices[0].turns); one per question asked."""
    rows = _jsonl(path, "--samples")
    by_id = {a.get("question_id"): a for a in rows}
    missing = [q["question_id"] for q in questions if q["question_id"] not in by_id]
    if missing:
        raise DataError(f"--samples {path}: no answer to question {missing[0]} (FastChat's answer format)")
    out = []
    for q in questions:
        a = by_id[q["question_id"]]
        turns = (a.get("choices") or [{}])[0].get("turns")
        if not isinstance(turns, list) or len(turns) < len(q["turns"]):
            raise DataError(f"--samples {path}: the answer to question {q['question_id']} lacks turns")
        out.append(a)
    return out


def answer_record(question_id, model_id: str, turns: list[str]) -> dict:
    """One line of FastChat's answer file."""
    return {
        "question_id": question_id,
        "answer_id": uuid.uuid4().hex[:22],
        "model_id": model_id,
        "choices": [{"index": 0, "turns": turns}],
        "tstamp": time.time(),
    }


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


# -- judging -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class JudgeRequest:
    question_id: object
    turn: int
    prompt_name: str
    system: str
    user: str


def judge_requests(question: dict, answer: dict) -> list[JudgeRequest]:
    """FastChat's single-grading prompts for turn 1 and (two-turn questions) turn 2."""
    q, a = question["turns"], answer["choices"][0]["turns"]
    ref = question.get("reference") or []
    math = question.get("category") in NEED_REF_CATS and len(ref) >= len(q)
    out = []
    name = "single-math-v1" if math else "single-v1"
    kw = {"ref_answer_1": ref[0]} if math else {}
    out.append(
        JudgeRequest(
            question["question_id"],
            1,
            name,
            JUDGE_PROMPTS[name]["system_prompt"],
            JUDGE_PROMPTS[name]["prompt_template"].format(question=q[0], answer=a[0], **kw),
        )
    )
    if len(q) > 1:
        name += "-multi-turn"
        kw = {"ref_answer_1": ref[0], "ref_answer_2": ref[1]} if math else {}
        out.append(
            JudgeRequest(
                question["question_id"],
                2,
                name,
                JUDGE_PROMPTS[name]["system_prompt"],
                JUDGE_PROMPTS[name]["prompt_template"].format(
                    question_1=q[0], question_2=q[1], answer_1=a[0], answer_2=a[1], **kw
                ),
            )
        )
    return out


def parse_rating(judgment: str) -> float:
    """FastChat's: the number in the first ``[[x]]``, else in the first ``[x]``; -1 when none."""
    m = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    return float(ast.literal_eval(m.group(1))) if m else -1.0


def chat_completions_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def ask_judge(url: str, model: str, req: JudgeRequest, *, timeout_s: float = 120.0, retries: int = 3) -> str:
    """The judge's reply to one request, from an OpenAI-compatible ``/chat/completions``."""
    body = json.dumps(
        {
            "model": model,
            "messages": [{"role": "system", "content": req.system}, {"role": "user", "content": req.user}],
            "temperature": JUDGE_TEMPERATURE,
            "max_tokens": JUDGE_MAX_TOKENS,
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    if os.environ.get("OPENAI_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
    last = ""
    for attempt in range(retries):
        request = urllib.request.Request(chat_completions_url(url), data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                reply = json.loads(resp.read().decode("utf-8"))
            return str(reply["choices"][0]["message"]["content"])
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code} {e.reason}"
            if e.code in (400, 401, 403, 404):  # will not change on a retry
                break
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        except (KeyError, IndexError, TypeError, json.JSONDecodeError) as e:
            last = f"an unexpected reply ({type(e).__name__}: {e})"
        time.sleep(min(2.0**attempt, 8.0))
    raise JudgeError(
        f"--judge-url {url}: the judge did not answer ({last}); check the URL, --judge-model {model} and OPENAI_API_KEY"
    )


def judge_all(questions: list[dict], answers: list[dict], url: str, model: str, model_id: str) -> list[dict]:
    """FastChat judgment lines for every question's turns."""
    out = []
    for q, a in zip(questions, answers):
        for req in judge_requests(q, a):
            judgment = ask_judge(url, model, req)
            out.append(
                {
                    "question_id": req.question_id,
                    "model": model_id,
                    "judge": [model, req.prompt_name],
                    "user_prompt": req.user,
                    "judgment": judgment,
                    "score": parse_rating(judgment),
                    "turn": req.turn,
                    "tstamp": time.time(),
                }
            )
    return out


@dataclass(frozen=True)
class Scores:
    overall: float | None
    turn1: float | None
    turn2: float | None
    rated: int
    unrated: int


def scores(judgments: list[dict]) -> Scores:
    """Mean rating per turn and overall, judgments without a rating (-1) left out (FastChat's show_result)."""
    rated = [j for j in judgments if j["score"] != -1]

    def avg(rows):
        return mean(j["score"] for j in rows) if rows else None

    return Scores(
        avg(rated),
        avg([j for j in rated if j["turn"] == 1]),
        avg([j for j in rated if j["turn"] == 2]),
        len(rated),
        len(judgments) - len(rated),
    )


__all__ = [
    "JUDGE_PROMPTS",
    "NEED_REF_CATS",
    "JudgeError",
    "JudgeRequest",
    "Scores",
    "answer_record",
    "ask_judge",
    "chat_completions_url",
    "judge_all",
    "judge_requests",
    "parse_rating",
    "read_answers",
    "read_questions",
    "scores",
    "write_jsonl",
]
