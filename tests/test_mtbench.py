"""MT-Bench: answers in FastChat's format, FastChat's judge prompts sent to a stub
OpenAI-compatible server on 127.0.0.1 (started here), ratings parsed, scores printed."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cli_helpers import flashbone, write_jsonl

from flashbone import mtbench

QUESTIONS = [
    {"question_id": 81, "category": "writing", "turns": ["Write a haiku about rain.", "Now make it about snow."]},
    {"question_id": 111, "category": "math", "turns": ["What is 3 + 4?", "And times 2?"], "reference": ["7", "14"]},
]


class Judge:
    """A stub judge: rates first turns 8, second turns 6, counts what it was sent."""

    def __init__(self):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                judge.requests.append(body)
                judge.headers.append(dict(self.headers))
                second = "second" in body["messages"][0]["content"]
                reply = {
                    "choices": [
                        {"message": {"role": "assistant", "content": f"Fine. Rating: [[{6 if second else 8}]]"}}
                    ]
                }
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def judge():
    j = Judge()
    yield j
    j.close()


def test_parse_rating_and_scores():
    assert mtbench.parse_rating("good. Rating: [[7.5]]") == 7.5
    assert mtbench.parse_rating("Rating: [8] overall [[9]]") == 9.0  # [[x]] first, as FastChat
    assert mtbench.parse_rating("Rating: [8]") == 8.0
    assert mtbench.parse_rating("no rating") == -1
    s = mtbench.scores([{"score": 8.0, "turn": 1}, {"score": -1, "turn": 1}, {"score": 5.0, "turn": 2}])
    assert (s.overall, s.turn1, s.turn2, s.rated, s.unrated) == (6.5, 8.0, 5.0, 2, 1)


def test_judge_prompts_follow_fastchat():
    answer = mtbench.answer_record(111, "m", ["It is 7.", "It is 14."])
    reqs = mtbench.judge_requests(QUESTIONS[1], answer)
    assert [r.prompt_name for r in reqs] == ["single-math-v1", "single-math-v1-multi-turn"]
    assert "[The Start of Reference Answer]\n7\n[The End of Reference Answer]" in reqs[0].user
    assert "### Reference answer:\n14" in reqs[1].user and "### Assistant A:\nIt is 14." in reqs[1].user
    reqs = mtbench.judge_requests(QUESTIONS[0], mtbench.answer_record(81, "m", ["a", "b"]))
    assert [r.prompt_name for r in reqs] == ["single-v1", "single-v1-multi-turn"]
    assert reqs[0].system == "You are a helpful assistant." and reqs[0].user.endswith(
        "[The Start of Assistant's Answer]\na\n[The End of Assistant's Answer]"
    )


def test_generate_answers_and_judge(tmp_path, capsys, judge, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    questions = write_jsonl(tmp_path / "question.jsonl", QUESTIONS)
    out = tmp_path / "mt"
    rc, stdout, err = flashbone(
        capsys,
        "eval",
        "--task",
        "mt-bench",
        "--data",
        questions,
        "--out",
        out,
        "--max-new-tokens",
        "8",
        "--judge-url",
        judge.url,
        "--judge-model",
        "gpt-4o",
        "--model-id",
        "tiny-bone",
        "--no-progress",
    )
    assert rc == 0, err
    answers = [json.loads(x) for x in (out / "model_answer" / "tiny-bone.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [81, 111]
    for a in answers:  # FastChat's answer format
        assert set(a) == {"question_id", "answer_id", "model_id", "choices", "tstamp"} and a["model_id"] == "tiny-bone"
        assert len(a["choices"][0]["turns"]) == 2 and all(isinstance(t, str) for t in a["choices"][0]["turns"])
    assert len(judge.requests) == 4  # two questions x two turns, no more
    assert {r["model"] for r in judge.requests} == {"gpt-4o"} and {r["temperature"] for r in judge.requests} == {0}
    assert all(h["Authorization"] == "Bearer sk-test" for h in judge.headers)
    judgments = [json.loads(x) for x in (out / "model_judgment" / "gpt-4o_single.jsonl").read_text().splitlines()]
    assert [(j["question_id"], j["turn"], j["score"]) for j in judgments] == [
        (81, 1, 8.0),
        (81, 2, 6.0),
        (111, 1, 8.0),
        (111, 2, 6.0),
    ]
    assert judgments[2]["judge"] == ["gpt-4o", "single-math-v1"]
    assert "score: 7.0000" in stdout and "turn 1 score: 8.0000" in stdout


def test_offline_and_given_answers(tmp_path, capsys, judge):
    questions = write_jsonl(tmp_path / "question.jsonl", QUESTIONS)
    answers = write_jsonl(
        tmp_path / "answers.jsonl", [mtbench.answer_record(q["question_id"], "given", ["x", "y"]) for q in QUESTIONS]
    )
    rc, stdout, err = flashbone(
        capsys, "eval", "--task", "mt-bench", "--data", questions, "--samples", answers, "--out", tmp_path / "mt"
    )
    assert rc == 0, err
    assert "judge: not run" in stdout and "--judge-url URL --judge-model NAME" in stdout and judge.requests == []
    rc, stdout, err = flashbone(
        capsys,
        "eval",
        "--task",
        "mt-bench",
        "--data",
        questions,
        "--samples",
        answers,
        "--out",
        tmp_path / "mt",
        "--judge-url",
        judge.url,
        "--judge-model",
        "j",
    )
    assert rc == 0 and "score: 7.0000" in stdout and len(judge.requests) == 4
    rc, _, err = flashbone(
        capsys,
        "eval",
        "--task",
        "mt-bench",
        "--data",
        questions,
        "--samples",
        answers,
        "--out",
        tmp_path / "mt",
        "--judge-url",
        judge.url.replace("/v1", "/nope"),
        "--judge-model",
        "j",
    )
    assert rc == 2 and "HTTP 404" in err and "Traceback" not in err and len(judge.requests) == 4
    rc, _, err = flashbone(
        capsys, "eval", "--task", "mt-bench", "--data", questions, "--out", tmp_path / "mt", "--judge-url", judge.url
    )
    assert rc == 2 and "go together" in err


def test_answers_sample_at_fastchats_temperature_per_category_and_repeat_with_the_seed(tmp_path, capsys):
    assert [mtbench.answer_temperature(q, "fastchat") for q in QUESTIONS] == [0.7, 0.0]
    assert mtbench.answer_temperature({"category": "stem"}, "fastchat") == 0.1
    assert mtbench.answer_temperature({"category": "new"}, "fastchat") == 0.7
    assert mtbench.answer_temperature(QUESTIONS[0], "greedy") == 0.0
    questions = write_jsonl(tmp_path / "question.jsonl", QUESTIONS[:1])

    def answer(name, *extra):
        out = tmp_path / name
        rc, _, err = flashbone(
            capsys,
            "eval",
            "--task",
            "mt-bench",
            "--data",
            questions,
            "--out",
            out,
            "--max-new-tokens",
            "12",
            "--model-id",
            "m",
            "--no-progress",
            *extra,
        )
        assert rc == 0, err
        return json.loads((out / "model_answer" / "m.jsonl").read_text())["choices"][0]["turns"]

    sampled = answer("a", "--seed", "3")
    assert sampled == answer("b", "--seed", "3")  # sampled, seeded: the run repeats
    assert sampled != answer("c", "--seed", "4")  # and it is sampled: another seed, other answers
    assert answer("g1", "--sampling", "greedy") == answer("g2", "--sampling", "greedy")
