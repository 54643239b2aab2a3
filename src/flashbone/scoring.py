"""Answer extraction and scoring, following the MetaMath / PiSSA evaluation protocol.

    generation --cut at stop strings--> text --split on "The answer is: ", take the last part-->
      gsm8k, tiny-math:  first number there (commas dropped, \\frac{a}{b} and a/b evaluated);
                         without that marker, the first number after the last "####"
                         compared as a float with the number after "####" in the reference
      math:              the answer text, normalised like Hendrycks' strip_string, compared with
                         the reference's answer (or the last \\boxed{...} of its solution)
"""

from __future__ import annotations

import re
from fractions import Fraction

ANSWER_SPLIT = "The answer is: "
GSM8K_SPLIT = "####"
TASKS = ("gsm8k", "math", "tiny-math")
_NUMBER = re.compile(r"[\-+]?\d*[\.,/]?\d+")  # the protocol's regex (PiSSA's, with "/")
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([\-+]?[\d.]+)\s*\}\s*\{\s*([\-+]?[\d.]+)\s*\}")


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to the first of ``stops``."""
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    return text


def answer_text(generation: str) -> str | None:
    """The text after the last ``"The answer is: "``, or None when the model gave no answer."""
    parts = generation.split(ANSWER_SPLIT)
    return parts[-1] if len(parts) > 1 else None


def parse_number(text: str) -> float | None:
    """The first number of ``text``: ``$1,000.50`` -> 1000.5, ``3/4`` -> 0.75,
    ``\\frac{1}{2}`` -> 0.5, ``-3 apples`` -> -3.0; None when there is none."""
    text = _FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    while re.search(r"\d,\d{3}", text):  # thousands separators
        text = re.sub(r"(\d),(\d{3})", r"\1\2", text)
    m = _NUMBER.search(text)
    if m is None:
        return None
    s = m.group().replace(",", "")
    try:
        if "/" in s:
            num, den = s.split("/")
            return float(Fraction(num)) / float(Fraction(den)) if float(den) != 0 else None
        return float(s)
    except (ValueError, ZeroDivisionError):
        return None


def extract_number(generation: str) -> float | None:
    """GSM8K / tiny-math prediction: the number after the last ``"The answer is: "``; a
    generation without that marker is read after its last ``####`` (GSM8K's own answer format,
    which a model fine-tuned on GSM8K's answers writes)."""
    ans = answer_text(generation)
    if ans is None and GSM8K_SPLIT in generation:
        ans = generation.rsplit(GSM8K_SPLIT, 1)[-1]
    return None if ans is None else parse_number(ans)


def gsm8k_gold(answer: str) -> float | None:
    """The number after ``####`` of a GSM8K reference (or the whole string when it has none,
    or the number after ``The answer is:`` for MetaMath-style references)."""
    s = str(answer)
    if "####" in s:
        return parse_number(s.split("####")[-1])
    if ANSWER_SPLIT in s:
        return extract_number(s)
    return parse_number(s)


def numbers_equal(pred: float | None, gold: float | None) -> bool:
    if pred is None or gold is None:
        return False
    return abs(pred - gold) <= 1e-6 * max(1.0, abs(gold))


# -- MATH ---------------------------------------------------------------------------------------
def last_boxed(s: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, ``\\boxed 5``) in ``s``."""
    i = max(s.rfind("\\boxed"), s.rfind("\\fbox"))
    if i < 0:
        return None
    rest = s[i:]
    if rest.startswith("\\boxed "):
        return rest[len("\\boxed "):].split("$")[0].strip()
    j = rest.find("{")
    if j < 0:
        return None
    depth = 0
    for k in range(j, len(rest)):
        depth += {"{": 1, "}": -1}.get(rest[k], 0)
        if depth == 0:
            return rest[j + 1: k]
    return None


def math_answer(generation: str) -> str | None:
    """MATH prediction: the text after the last ``"The answer is: "``, up to ``".\\n"``,
    without a final period (as MetaMath's evaluation does)."""
    ans = answer_text(generation)
    if ans is None:
        return None
    ans = ans.split(".\n")[0].strip()
    return ans[:-1].strip() if ans.endswith(".") else ans


def _braced_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{b}`` -> ``\\frac{1}{b}``."""
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        out += "\\frac"
        if p.startswith("{") or len(p) < 2:
            out += p
            continue
        a, b, tail = p[0], p[1], p[2:]
        out += "{" + a + "}" + (b + tail if b == "{" else "{" + b + "}" + tail)
    return out


def _braced_sqrt(s: str) -> str:
    """``\\sqrt2`` -> ``\\sqrt{2}``."""
    return re.sub(r"\\sqrt\s*([^{\s\\])", r"\\sqrt{\1}", s)


def _slash_to_frac(s: str) -> str:
    """``3/4`` (integers only) -> ``\\frac{3}{4}``."""
    m = re.fullmatch(r"(-?\d+)/(-?\d+)", s)
    return f"\\frac{{{int(m.group(1))}}}{{{int(m.group(2))}}}" if m else s


def normalize_math(s: str) -> str:
    """A canonical form of a LaTeX answer, with the rules of Hendrycks et al.'s strip_string:
    no spaces, ``\\left``/``\\right``, degrees, dollars, units, ``\\!``; ``dfrac``/``tfrac`` ->
    ``frac``; ``0.5`` -> ``\\frac{1}{2}``; ``.5`` -> ``0.5``; ``x = 3`` -> ``3``; braces added
    to ``\\frac12`` and ``\\sqrt2``; ``a/b`` -> ``\\frac{a}{b}``."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    if "\\text{ " in s:  # units written as "5 \\text{ cm}"
        s = s.split("\\text{ ")[0]
    s = re.sub(r"\\text\{\s*[a-zA-Z ]*\}\s*$", "", s) if re.search(r"\d", s) else s
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    if s.count("=") == 1 and len(s.split("=")[0].strip()) <= 2:
        s = s.split("=")[1]
    s = _braced_sqrt(s)
    s = s.replace(" ", "")
    s = _braced_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _slash_to_frac(s)


def math_equal(pred: str | None, gold: str | None) -> bool:
    """Equal after :func:`normalize_math` (raw equality if normalising fails)."""
    if pred is None or gold is None:
        return False
    try:
        return normalize_math(pred) == normalize_math(gold)
    except Exception:  # a malformed string: fall back to the raw text
        return pred == gold


def math_gold(row_answer: str | None, solution: str | None = None) -> str | None:
    """The reference answer of a MATH row: its ``answer`` field, else its solution's last box."""
    if row_answer is not None and str(row_answer).strip():
        s = str(row_answer)
        return math_answer(s) if ANSWER_SPLIT in s else (last_boxed(s) or s.strip())
    return last_boxed(solution) if solution else None


def score(task: str, generation: str, gold) -> tuple[object, bool]:
    """``(extracted, correct)`` of one generation for ``task``."""
    if task == "math":
        pred = math_answer(generation)
        return pred, math_equal(pred, gold)
    if task in ("gsm8k", "tiny-math"):
        pred = extract_number(generation)
        return pred, numbers_equal(pred, gold)
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


__all__ = ["TASKS", "ANSWER_SPLIT", "cut_at_stop", "answer_text", "parse_number", "extract_number",
           "gsm8k_gold", "numbers_equal", "last_boxed", "math_answer", "normalize_math", "math_equal",
           "math_gold", "score"]
