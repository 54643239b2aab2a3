"""Answer extraction and scoring: the papers' protocol (PiSSA's / MetaMath's scripts), or math-verify.

    generation --cut at stop strings--> text --split on "The answer is: ", take the last part-->
      gsm8k, tiny-math:  the regex's first number there, rounded to an integer, compared with
                         ``==`` to the reference's number (after "####", commas dropped);
                         without that marker, the number after the generation's last "####"
      math:              the answer text up to ".\\n" without a final ".", compared with the
                         reference's answer after both go through Hendrycks' strip_string

Scorers (``flashbone eval --scorer``):

``protocol`` (default) reproduces PiSSA's ``inference/acc_gsm8k.py`` / ``acc_math.py`` (which copy
MetaMath's ``eval_gsm8k.py`` / ``eval_math.py``) rule for rule, quirks included, so that numbers
compare with the papers'. Consequences a user may not expect, all the scripts' own:

- GSM8K: the regex ``[\\-+]?\\d*[\\.,/]?\\d+`` takes ONE separator, so ``1,000,000`` reads as 1000 and
  ``$1,000.50`` as 1000; ``\\frac{1}{2}`` reads as 1 (the first number); the prediction is rounded
  (``round``: 2.5 -> 2, 3.6 -> 4); ``3/0`` reads as 3. Comparison is exact: 1000001 != 1000000.
- MATH: Hendrycks' ``strip_string`` in its order: ``\\$`` is removed but a bare ``$`` is not;
  units are cut only after ``\\text{ `` WITH the space; the ``x = `` rule drops the left side only
  when it is at most 2 characters before spaces are removed (``x = 3`` -> ``3``, ``ab = 3`` kept);
  ``\\sqrt2`` -> ``\\sqrt{2}`` but ``\\sqrt 2`` -> ``\\sqrt{ }2`` (then ``\\sqrt{}2``); any error
  inside (e.g. ``\\sqrt`` at the very end, two ``\\text{ ``) falls back to raw string equality.

Deliberate differences, each documented here:

- PiSSA's ``acc_math.py`` (which we follow) removes ``\\%`` but not a bare ``%`` (its second
  replace is the same ``\\%``) and lets ``a/b`` with non-integers fall back to raw equality;
  Hendrycks' current repository removes ``%`` and keeps ``a/b``. We follow PiSSA's, the papers'.
- The MATH reference is ``last_boxed`` of the solution as in MetaMath's ``remove_boxed``; we also
  read ``\\boxed 5`` (no braces), which MetaMath turns into no reference (never correct).
- MetaMath/PiSSA never score a row without a reference; we refuse such data up front.

``math-verify`` keeps the same extraction (the text after "The answer is: ") but judges
equivalence with Hugging Face's math-verify (``0.75`` = ``\\frac34``, ``\\sqrt8`` = ``2\\sqrt2``);
its numbers are NOT comparable with the papers' tables.
"""

from __future__ import annotations

import re
import unicodedata
from fractions import Fraction

from .errors import BoneError

ANSWER_SPLIT = "The answer is: "
GSM8K_SPLIT = "####"
TASKS = ("gsm8k", "math", "tiny-math")
SCORERS = ("protocol", "math-verify")
_NUMBER = re.compile(r"[\-+]?\d*[\.,/]?\d+")  # PiSSA's regex (MetaMath's plus "/")


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


# -- GSM8K (PiSSA inference/acc_gsm8k.py) ---------------------------------------------------------
def _is_number(s: str) -> bool:
    """The scripts' ``is_number``: float() parses it, or it is one numeric unicode character."""
    try:
        float(s)
        return True
    except ValueError:
        pass
    try:
        unicodedata.numeric(s)
        return True
    except (TypeError, ValueError):
        return False


def parse_number(text: str) -> int | None:
    """The protocol's number in ``text``: the regex's first match, fractions evaluated, rounded.
    ``42 apples`` -> 42, ``3/4`` -> 1, ``3/0`` -> 3, ``1,000,000`` -> 1000, ``2.5`` -> 2."""
    m = _NUMBER.search(text.strip())
    if m is None:
        return None
    s = m.group()
    if "/" in s:
        num, den = s.split("/")
        if not (_is_number(den) and _is_number(num)):
            return None
        if den == "0":
            return round(float(num.replace(",", "")))
        frac = Fraction(s.replace(",", ""))
        return round(frac.numerator / frac.denominator)
    value = float(s.replace(",", ""))
    return None if value == float("inf") else round(value)


def extract_number(generation: str) -> int | None:
    """GSM8K / tiny-math prediction: the number after the last ``"The answer is: "``; a
    generation without that marker is read after its last ``####`` (GSM8K's own answer format,
    which a model fine-tuned on GSM8K's answers writes; the scripts would score it wrong)."""
    ans = answer_text(generation)
    if ans is None and GSM8K_SPLIT in generation:
        ans = generation.rsplit(GSM8K_SPLIT, 1)[-1]
    return None if ans is None else parse_number(ans)


def gsm8k_gold(answer) -> float | None:
    """The reference number: after ``####`` with commas dropped (MetaMath's
    ``int(answer.split('#### ')[1].replace(',', ''))``), a bare number (PiSSA's files), or the
    number after ``The answer is: `` (MetaMathQA-style references, tiny-math)."""
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return float(answer)
    s = str(answer)
    if "####" in s:
        s = s.split("####")[-1]
    elif ANSWER_SPLIT in s:
        n = extract_number(s)
        return None if n is None else float(n)
    try:
        return float(s.strip().replace(",", ""))
    except ValueError:
        return None


def numbers_equal(pred: float | None, gold: float | None) -> bool:
    """``float(pred) == float(gold)``: exact, as the scripts compare."""
    return pred is not None and gold is not None and float(pred) == float(gold)


# -- MATH (Hendrycks' strip_string, as PiSSA's inference/acc_math.py has it) ---------------------
def last_boxed(s: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (else the last ``\\fbox{...}``) in ``s``, as
    MetaMath's ``last_boxed_only_string`` + ``remove_boxed``; also ``\\boxed 5``."""
    i = s.rfind("\\boxed")
    if i < 0:
        i = s.rfind("\\fbox")
        if i < 0:
            return None
    rest = s[i:]
    if rest.startswith("\\boxed "):
        return rest[len("\\boxed ") :].split("$")[0].strip()
    depth = 0
    for k, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "}" and depth == 0:
            whole = rest[: k + 1]
            left = "\\boxed{"
            return whole[len(left) : -1] if whole.startswith(left) else None
    return None


def math_answer(generation: str) -> str | None:
    """MATH prediction: the text after the last ``"The answer is: "``, up to ``".\\n"``,
    stripped, without one final period (MetaMath's ``process_results``)."""
    ans = answer_text(generation)
    if ans is None:
        return None
    ans = ans.split(".\n")[0].strip()
    return (ans.removesuffix(".")).strip()


def _remove_right_units(s: str) -> str:
    # the original asserts a single "\text{ " (units); two raise, and is_equiv falls back
    if "\\text{ " not in s:
        return s
    parts = s.split("\\text{ ")
    if len(parts) != 2:
        raise ValueError("more than one '\\text{ '")
    return parts[0]


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``: the ONE character after ``\\sqrt`` is braced, whatever it is
    (a space too); ``\\sqrt`` at the end raises (IndexError, as in the original)."""
    parts = s.split("\\sqrt")
    out = parts[0]
    for p in parts[1:]:
        out += "\\sqrt" + p if p[0] == "{" else "\\sqrt{" + p[0] + "}" + p[1:]
    return out


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}``; one character left
    after ``\\frac``: the string is returned unchanged; none: IndexError (as the original)."""
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        out += "\\frac"
        if p[0] == "{":
            out += p
            continue
        if len(p) < 2:
            return s
        a, b, tail = p[0], p[1], p[2:]
        out += "{" + a + "}" + (b + tail if b == "{" else "{" + b + "}" + tail)
    return out


def _fix_a_slash_b(s: str) -> str:
    """``3/4`` -> ``\\frac{3}{4}`` for integers written plainly; other ``a/b`` raise ValueError
    (PiSSA catches only AssertionError: is_equiv then compares the raw strings)."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = int(parts[0]), int(parts[1])
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def strip_string(s: str) -> str:
    """Hendrycks' ``strip_string``, rule by rule in its order (may raise: see :func:`math_equal`)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")  # a bare "$" stays
    s = _remove_right_units(s)
    s = s.replace("\\%", "")  # a bare "%" stays (PiSSA's second replace is "\%" again)
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    halves = s.split("=")
    if len(halves) == 2 and len(halves[0]) <= 2:  # "k = 3" -> " 3"; spaces still counted
        s = halves[1]
    if "\\sqrt" in s:
        s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def normalize_math(s: str) -> str:
    """Alias of :func:`strip_string` (the canonical form two answers are compared in)."""
    return strip_string(s)


def math_equal(pred: str | None, gold: str | None) -> bool:
    """Hendrycks' ``is_equiv``: equal after :func:`strip_string`; raw equality if it raises."""
    if pred is None or gold is None:
        return False
    try:
        return strip_string(pred) == strip_string(gold)
    except Exception:  # the original's bare except: a malformed string compares raw
        return pred == gold


def math_gold(row_answer: str | None, solution: str | None = None) -> str | None:
    """The reference answer of a MATH row: its ``answer`` field, else its solution's last box."""
    if row_answer is not None and str(row_answer).strip():
        s = str(row_answer)
        return math_answer(s) if ANSWER_SPLIT in s else (last_boxed(s) or s.strip())
    return last_boxed(solution) if solution else None


# -- math-verify ------------------------------------------------------------------------------
def check_scorer(scorer: str) -> None:
    """Fail early (before any generation) on an unknown scorer or a missing math-verify."""
    if scorer not in SCORERS:
        raise BoneError(f"--scorer {scorer!r} is unknown; choose one of {', '.join(SCORERS)}")
    if scorer == "math-verify":
        try:
            import math_verify  # noqa: F401
        except ImportError:
            raise BoneError(
                '--scorer math-verify needs the math-verify package: pip install "flashbone[math]"'
            ) from None


def verify_equal(pred: str | None, gold, latex: bool = True) -> bool:
    """math-verify's judgement of ``pred`` against ``gold``: read as one LaTeX expression
    (``latex``: MATH answers, ``\\frac34``, ``\\sqrt8``), else as text whose number is taken
    (GSM8K: ``72 apples`` -> 72, ``1,000,000`` -> 1000000)."""
    if pred is None or gold is None:
        return False
    try:
        from math_verify import parse, verify
    except ImportError:
        raise BoneError('--scorer math-verify needs the math-verify package: pip install "flashbone[math]"') from None

    def read(x) -> list:
        s = str(x).strip()
        return (parse("$" + s.strip("$") + "$") if latex else []) or parse(s)

    g, p = read(gold), read(pred)
    return bool(g) and bool(p) and bool(verify(g, p))


def score(task: str, generation: str, gold, scorer: str = "protocol") -> tuple[object, bool]:
    """``(extracted, correct)`` of one generation for ``task`` under ``scorer``."""
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; choose one of {SCORERS}")
    if task == "math":
        pred = math_answer(generation)
        return pred, (math_equal(pred, gold) if scorer == "protocol" else verify_equal(pred, gold))
    if task in ("gsm8k", "tiny-math"):
        if scorer == "protocol":
            pred = extract_number(generation)
            return pred, numbers_equal(pred, gold)
        text = math_answer(generation)  # up to ".\\n", no final period
        num = None if gold is None else (int(gold) if float(gold).is_integer() else gold)
        return text, verify_equal(text, num, latex=False)
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


__all__ = [
    "ANSWER_SPLIT",
    "SCORERS",
    "TASKS",
    "answer_text",
    "check_scorer",
    "cut_at_stop",
    "extract_number",
    "gsm8k_gold",
    "last_boxed",
    "math_answer",
    "math_equal",
    "math_gold",
    "normalize_math",
    "numbers_equal",
    "parse_number",
    "score",
    "strip_string",
    "verify_equal",
]
